# vcpkg overlay port for fwd, built from the fwd checkout that holds this port:
#   vcpkg install fwd --overlay-ports=<fwd>/packaging/vcpkg
# fwd is header-only: its install is the headers, the CMake package and fwd.pc.
set(VCPKG_BUILD_TYPE release)
get_filename_component(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)

vcpkg_cmake_configure(
  SOURCE_PATH "${SOURCE_PATH}"
  OPTIONS
    -DFWD_INSTALL=ON
    -DFWD_TESTS=OFF
    -DFWD_EXAMPLES=OFF
    -DFWD_BENCH=OFF
    -DFWD_FUZZ=OFF
)
vcpkg_cmake_install()
vcpkg_cmake_config_fixup(PACKAGE_NAME fwd CONFIG_PATH share/cmake/fwd)
vcpkg_fixup_pkgconfig()

file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
if(EXISTS "${SOURCE_PATH}/LICENSE")
  vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
else()
  file(WRITE "${CURRENT_PACKAGES_DIR}/share/${PORT}/copyright" "See fwd's source repository.\n")
endif()
