# Finds LibTorch for PAL and for projects that use PAL's CMake package.
#
# With LibTorch from a Python wheel (Torch_DIR=.../torch/share/cmake/Torch) on a machine
# that also has Debian's libtorch-dev, CMake searches the system folders before the
# wheel's and would mix the two (Debian's Caffe2 files, Debian's libtorch.so). Point every
# LibTorch lookup at the chosen one first.
if(Torch_DIR)
  get_filename_component(_pal_torch_cmake "${Torch_DIR}/.." ABSOLUTE)
  get_filename_component(_pal_torch_root "${Torch_DIR}/../../.." ABSOLUTE)
  if(EXISTS "${_pal_torch_root}/lib/libtorch.so" AND EXISTS "${_pal_torch_cmake}/Caffe2")
    list(PREPEND CMAKE_PREFIX_PATH "${_pal_torch_cmake}")
    list(PREPEND CMAKE_LIBRARY_PATH "${_pal_torch_root}/lib")
    set(Caffe2_DIR "${_pal_torch_cmake}/Caffe2" CACHE PATH "Caffe2 CMake files of the chosen LibTorch")
  endif()
endif()
