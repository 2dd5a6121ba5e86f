# Installs what a program that embeds geopipe links, and a CMake package so
# that its project says find_package(geopipe) (docs/cpp-api.md, "Embedding
# geopipe in your project"):
#   include/geopipe/*.h                    the public API (and version.h)
#   lib/libgeopipe_*.a                     geopipe::runtime, geopipe::config and
#                                          the static modules they link
#   lib/geopipe/libgeopipe_sentencepiece.so  the SentencePiece plugin
#   lib/cmake/geopipe/                     geopipe-config.cmake, its version
#                                          file and the exported targets
# Only include/geopipe/ is installed: nothing under src/ is public, so a
# public header that reached into src/ would fail the consumer's build
# (tests/install checks this with a project outside the tree).
include(CMakePackageConfigHelpers)

# Every module geopipe::config and geopipe::runtime link, public or not:
# their archives are static, so a consumer links the whole closure.
set(_geopipe_export_targets
  geopipe_headers geopipe_common geopipe_security geopipe_tokenizer geopipe_data
  geopipe_formats geopipe_compression geopipe_config geopipe_runtime_frames)
if(GEOPIPE_WITH_TORCH)
  list(APPEND _geopipe_export_targets
    geopipe_scheduler geopipe_transport geopipe_pipeline geopipe_model geopipe_runtime)
endif()
foreach(_t ${_geopipe_export_targets})
  string(REGEX REPLACE "^geopipe_" "" _name ${_t})
  set_target_properties(${_t} PROPERTIES EXPORT_NAME ${_name})
endforeach()
set_target_properties(geopipe_sentencepiece PROPERTIES EXPORT_NAME sentencepiece)

set(GEOPIPE_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/geopipe)
install(TARGETS ${_geopipe_export_targets}
  EXPORT geopipeTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
# The plugin geopipe_tokenizer dlopens (src/tokenizer/sentencepiece_loader.cc
# looks next to the executable, in the build tree, then here).
install(TARGETS geopipe_sentencepiece
  EXPORT geopipeTargets
  LIBRARY DESTINATION ${GEOPIPE_INSTALL_PLUGINDIR})

install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/geopipe
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.h")
install(FILES ${PROJECT_BINARY_DIR}/include/geopipe/version.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/geopipe)

install(EXPORT geopipeTargets
  NAMESPACE geopipe::
  FILE geopipe-targets.cmake
  DESTINATION ${GEOPIPE_INSTALL_CMAKEDIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/geopipe-config.cmake.in
  ${PROJECT_BINARY_DIR}/geopipe-config.cmake
  INSTALL_DESTINATION ${GEOPIPE_INSTALL_CMAKEDIR})
# 0.x: a minor version may change the API, so only the same minor matches.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/geopipe-config-version.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/geopipe-config.cmake
  ${PROJECT_BINARY_DIR}/geopipe-config-version.cmake
  DESTINATION ${GEOPIPE_INSTALL_CMAKEDIR})
