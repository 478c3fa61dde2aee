# `cmake --install <build> --prefix P` lays out:
#   P/include/batchcam/...               the headers
#   P/lib/libbatchcam_core.a, libbatchcam.a
#   P/lib/cmake/batchcam/                batchcamConfig.cmake, its version file, the targets
#   P/bin/batchcam                       the CLI, when built
# so that find_package(batchcam) (with CMAKE_PREFIX_PATH=P) gives batchcam::core and
# batchcam::batchcam. The package finds LibTorch (find_package(Torch)) and, unless only the
# core component is asked for, the full library's dependencies.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
set(BATCHCAM_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/batchcam)

set(_batchcam_targets batchcam_core)
if(TARGET batchcam)
  list(APPEND _batchcam_targets batchcam)
endif()
install(TARGETS ${_batchcam_targets} EXPORT batchcamTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/batchcam DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET batchcam_cli)
  # The installed CLI keeps finding LibTorch where it was linked from (a wheel's torch/lib).
  set_target_properties(batchcam_cli PROPERTIES INSTALL_RPATH_USE_LINK_PATH TRUE)
  install(TARGETS batchcam_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
install(EXPORT batchcamTargets NAMESPACE batchcam:: DESTINATION ${BATCHCAM_CMAKE_DIR})

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/batchcamConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/batchcamConfig.cmake
                              INSTALL_DESTINATION ${BATCHCAM_CMAKE_DIR})
# 0.x: a new minor version may change the interface.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/batchcamConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/batchcamConfig.cmake ${PROJECT_BINARY_DIR}/batchcamConfigVersion.cmake
              ${PROJECT_SOURCE_DIR}/cmake/BatchcamTorchTarget.cmake
        DESTINATION ${BATCHCAM_CMAKE_DIR})
