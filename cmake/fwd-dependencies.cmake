# Finds fwd's dependencies. Used by fwd's own build and, installed, by fwdConfig.cmake,
# so that a consumer resolves them exactly as fwd's build did.
include(CMakeFindDependencyMacro)

set(THREADS_PREFER_PTHREAD_FLAG ON)
find_dependency(Threads)
find_dependency(Boost 1.81 CONFIG COMPONENTS serialization)
find_dependency(SQLite3)
find_dependency(fmt)
find_dependency(OpenSSL)

# c-ares: Conan and vcpkg provide a CMake package with c-ares::cares; Debian ships only
# pkg-config's libcares. Either way fwd links c-ares::cares.
if(NOT TARGET c-ares::cares)
  find_package(c-ares CONFIG QUIET)
  if(NOT TARGET c-ares::cares)
    find_package(PkgConfig QUIET)
    if(PkgConfig_FOUND)
      pkg_check_modules(FWD_CARES QUIET IMPORTED_TARGET GLOBAL libcares)
    endif()
    if(TARGET PkgConfig::FWD_CARES)
      add_library(c-ares::cares ALIAS PkgConfig::FWD_CARES)
    else()
      set(_fwd_msg "fwd needs c-ares: install libc-ares-dev (Debian), or let Conan/vcpkg provide c-ares")
      if(CMAKE_FIND_PACKAGE_NAME)
        set(${CMAKE_FIND_PACKAGE_NAME}_FOUND FALSE)
        set(${CMAKE_FIND_PACKAGE_NAME}_NOT_FOUND_MESSAGE "${_fwd_msg}")
        return()
      endif()
      message(FATAL_ERROR "${_fwd_msg}")
    endif()
  endif()
endif()
