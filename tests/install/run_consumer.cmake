# The out-of-tree check of the installed package (cmake -P; tests/install):
# installs geopipe's build to a fresh prefix, configures the consumer project
# against that prefix alone, builds it, runs it on its job and checks what it
# prints. Any step that fails fails the test, with the step's output.
#   -DBUILD_DIR=  geopipe's build tree     -DSOURCE_DIR= tests/install/consumer
#   -DWORK_DIR=   scratch (wiped)          -DGENERATOR= -DCXX_COMPILER= -DLAUNCHER=
cmake_minimum_required(VERSION 3.25)

set(_prefix ${WORK_DIR}/prefix)
set(_build ${WORK_DIR}/consumer-build)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install test: ${what} failed (${rc}):\n${out}")
  endif()
  set(_out "${out}" PARENT_SCOPE)
endfunction()

run_step("cmake --install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${_prefix})

# Only include/geopipe/ is public: an installed header that reaches into the
# source tree would build here (the tree is still on disk) but not for a user.
file(GLOB_RECURSE _headers ${_prefix}/include/*)
foreach(_h ${_headers})
  file(STRINGS ${_h} _bad REGEX "#include [\"<](src|scheduler|compression|proto)/")
  if(_bad)
    message(FATAL_ERROR "install test: ${_h} includes a private header: ${_bad}")
  endif()
endforeach()
if(EXISTS ${_prefix}/include/src)
  message(FATAL_ERROR "install test: src/ was installed")
endif()

set(_launcher "")
if(LAUNCHER)
  set(_launcher -DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER})
endif()
run_step("configuring the consumer" ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${_build}
  -G ${GENERATOR} -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX_COMPILER} ${_launcher}
  -DCMAKE_PREFIX_PATH=${_prefix})
# The package must come from the prefix, not from a geopipe installed elsewhere.
file(STRINGS ${_build}/CMakeCache.txt _dir REGEX "^geopipe_DIR:")
if(NOT _dir STREQUAL "geopipe_DIR:PATH=${_prefix}/lib/cmake/geopipe")
  message(FATAL_ERROR "install test: geopipe found at ${_dir}, not in ${_prefix}")
endif()
run_step("building the consumer" ${CMAKE_COMMAND} --build ${_build})
run_step("running the consumer" ${_build}/geopipe_consumer ${SOURCE_DIR}/job.yaml)
message("${_out}")
foreach(_line "misspelt key refused" "job consumer-tiny-gpt, 2 stages x 1 replicas"
              "trained 3 steps, loss")
  string(FIND "${_out}" "consumer: ${_line}" _at)
  if(_at EQUAL -1)
    message(FATAL_ERROR "install test: the consumer did not print \"${_line}\"")
  endif()
endforeach()
