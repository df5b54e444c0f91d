include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(FWD_CMAKE_DIR "${CMAKE_INSTALL_DATADIR}/cmake/fwd" CACHE STRING "Where fwd's CMake package files go")

install(DIRECTORY include/ DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}" COMPONENT fwd_Development)
install(TARGETS fwd EXPORT fwdTargets)
install(EXPORT fwdTargets NAMESPACE fwd:: DESTINATION "${FWD_CMAKE_DIR}" COMPONENT fwd_Development)

configure_package_config_file(cmake/fwdConfig.cmake.in "${PROJECT_BINARY_DIR}/fwdConfig.cmake"
  INSTALL_DESTINATION "${FWD_CMAKE_DIR}")
write_basic_package_version_file("${PROJECT_BINARY_DIR}/fwdConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion ARCH_INDEPENDENT)
install(FILES
  "${PROJECT_BINARY_DIR}/fwdConfig.cmake"
  "${PROJECT_BINARY_DIR}/fwdConfigVersion.cmake"
  cmake/fwd-dependencies.cmake
  DESTINATION "${FWD_CMAKE_DIR}" COMPONENT fwd_Development)

configure_file(cmake/fwd.pc.in "${PROJECT_BINARY_DIR}/fwd.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/fwd.pc" DESTINATION "${CMAKE_INSTALL_DATADIR}/pkgconfig"
  COMPONENT fwd_Development)
