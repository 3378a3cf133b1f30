# torch.distributed (c10d) backends for src/train/distributed.cpp.
#
# Gloo (CPU ranks): LibTorch carries the Gloo process group, but its header includes gloo's
# own headers, which Debian ships in libgloo-dev and PyPI's torch wheel does not ship at all.
# PAL_HAVE_GLOO is defined when ProcessGroupGloo.hpp compiles with the gloo headers found
# here (Debian's /usr/include/gloo also serves the PyPI flavour: the process group's
# members that PAL sees are pointers, and its code runs inside libtorch_cpu).
# -DPAL_GLOO=OFF turns it off.
# NCCL (CUDA ranks): a CUDA LibTorch built with it (torch_cuda defines USE_C10D_NCCL) and
# nccl.h, which the nvidia-nccl wheel installs beside torch.
include(CheckCXXSourceCompiles)
option(PAL_GLOO "Build the Gloo backend when gloo's headers are found" ON)
set(PAL_HAVE_GLOO OFF)
set(PAL_HAVE_NCCL OFF)

if(PAL_GLOO)
  find_path(PAL_GLOO_INCLUDE_DIR gloo/algorithm.h)
  if(PAL_GLOO_INCLUDE_DIR)
    set(CMAKE_REQUIRED_INCLUDES ${TORCH_INCLUDE_DIRS} ${PAL_GLOO_INCLUDE_DIR})
    set(CMAKE_REQUIRED_FLAGS "${TORCH_CXX_FLAGS}")
    # The header is empty unless USE_C10D_GLOO (PyPI's torch_cpu defines it, Debian's does not).
    set(CMAKE_REQUIRED_DEFINITIONS -DUSE_C10D_GLOO)
    set(CMAKE_REQUIRED_QUIET ON)
    set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)  # compile only; the symbols are in libtorch_cpu
    check_cxx_source_compiles([=[
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
int main() {
  auto options = c10d::ProcessGroupGloo::Options::create();
  return static_cast<int>(options->devices.size());
}]=] PAL_GLOO_HEADERS_COMPILE)
    unset(CMAKE_REQUIRED_INCLUDES)
    unset(CMAKE_REQUIRED_FLAGS)
    unset(CMAKE_REQUIRED_DEFINITIONS)
    unset(CMAKE_REQUIRED_QUIET)
    unset(CMAKE_TRY_COMPILE_TARGET_TYPE)
    if(PAL_GLOO_HEADERS_COMPILE)
      set(PAL_HAVE_GLOO ON)
    endif()
  endif()
endif()

if(TARGET torch_cuda)
  get_target_property(_pal_cuda_defs torch_cuda INTERFACE_COMPILE_DEFINITIONS)
  find_path(PAL_NCCL_HEADER_DIR nccl.h
    HINTS "${Torch_DIR}/../../../../nvidia/nccl/include" ENV CUDA_HOME PATH_SUFFIXES include)
  if(_pal_cuda_defs MATCHES "USE_C10D_NCCL" AND PAL_NCCL_HEADER_DIR)
    set(PAL_HAVE_NCCL ON)
  endif()
endif()

if(PAL_HAVE_GLOO)
  target_compile_definitions(pal PRIVATE PAL_HAVE_GLOO USE_C10D_GLOO)
  target_include_directories(pal SYSTEM PRIVATE ${PAL_GLOO_INCLUDE_DIR})
endif()
if(PAL_HAVE_NCCL)
  target_compile_definitions(pal PRIVATE PAL_HAVE_NCCL)
  target_include_directories(pal SYSTEM PRIVATE ${PAL_NCCL_HEADER_DIR})
endif()
message(STATUS "PAL: distributed backends: Gloo ${PAL_HAVE_GLOO}, NCCL ${PAL_HAVE_NCCL}")
