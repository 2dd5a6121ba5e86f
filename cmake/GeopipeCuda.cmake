# CUDA support: the GPU compression kernels (compression/cuda) and the NCCL
# transport (src/transport/nccl). GEOPIPE_WITH_CUDA:
#   AUTO (default)  build them when nvcc and NCCL (nccl.h + libnccl) are found;
#   ON              the same, but a missing piece stops the configure;
#   OFF             CPU only.
# Both compile on a machine without a GPU (CI compiles them with the CUDA
# toolkit in /usr/local/cuda); their tests skip when no device answers.
# Sets GEOPIPE_CUDA (ON/OFF) and the imported target geopipe::nccl.
set(GEOPIPE_WITH_CUDA AUTO CACHE STRING "Build the CUDA kernels and the NCCL transport: AUTO, ON or OFF")
set_property(CACHE GEOPIPE_WITH_CUDA PROPERTY STRINGS AUTO ON OFF)
set(GEOPIPE_CUDA_ROOT "/usr/local/cuda" CACHE PATH "CUDA toolkit (nvcc, cudart)")
set(GEOPIPE_NCCL_ROOT "" CACHE PATH "NCCL install (include/nccl.h, lib/libnccl.so); empty: search the CUDA toolkit and the system")
set(GEOPIPE_CUDA OFF)

if(NOT GEOPIPE_WITH_CUDA MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "GEOPIPE_WITH_CUDA must be AUTO, ON or OFF, not '${GEOPIPE_WITH_CUDA}'")
endif()

if(NOT GEOPIPE_WITH_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX} AND EXISTS "${GEOPIPE_CUDA_ROOT}/bin/nvcc")
    set(CMAKE_CUDA_COMPILER "${GEOPIPE_CUDA_ROOT}/bin/nvcc")
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  find_path(GEOPIPE_NCCL_INCLUDE_DIR nccl.h
    HINTS ${GEOPIPE_NCCL_ROOT}/include ${GEOPIPE_CUDA_ROOT}/include)
  find_library(GEOPIPE_NCCL_LIBRARY NAMES nccl libnccl.so.2
    HINTS ${GEOPIPE_NCCL_ROOT}/lib ${GEOPIPE_NCCL_ROOT}/lib64 ${GEOPIPE_CUDA_ROOT}/lib64)
  set(_missing "")
  if(NOT CMAKE_CUDA_COMPILER)
    list(APPEND _missing "nvcc (set GEOPIPE_CUDA_ROOT or CMAKE_CUDA_COMPILER)")
  endif()
  if(NOT GEOPIPE_NCCL_INCLUDE_DIR OR NOT GEOPIPE_NCCL_LIBRARY)
    list(APPEND _missing "NCCL: nccl.h and libnccl (set GEOPIPE_NCCL_ROOT)")
  endif()
  if(_missing)
    if(GEOPIPE_WITH_CUDA STREQUAL "ON")
      message(FATAL_ERROR "GEOPIPE_WITH_CUDA=ON but these are missing: ${_missing}")
    endif()
    message(STATUS "geopipe: CUDA kernels and NCCL transport not built (missing: ${_missing})")
  else()
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Ampere and Hopper; override with -DCMAKE_CUDA_ARCHITECTURES=...
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    if(CCACHE_PROGRAM)
      set(CMAKE_CUDA_COMPILER_LAUNCHER "${CCACHE_PROGRAM}")
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    add_library(geopipe::nccl UNKNOWN IMPORTED)
    set_target_properties(geopipe::nccl PROPERTIES
      IMPORTED_LOCATION "${GEOPIPE_NCCL_LIBRARY}"
      INTERFACE_INCLUDE_DIRECTORIES "${GEOPIPE_NCCL_INCLUDE_DIR}")
    set(GEOPIPE_CUDA ON)
    message(STATUS "geopipe: CUDA ${CMAKE_CUDA_COMPILER_VERSION} (archs ${CMAKE_CUDA_ARCHITECTURES}), "
                   "NCCL ${GEOPIPE_NCCL_LIBRARY}")
  endif()
endif()
