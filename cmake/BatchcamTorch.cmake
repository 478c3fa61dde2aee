# Finds LibTorch: Debian's libtorch-dev (1.13, CPU) by default, or the LibTorch inside a
# PyTorch wheel (2.x, CUDA) with -DTorch_DIR=<site-packages>/torch/share/cmake/Torch.
# A project that adds batchcam with add_subdirectory after its own find_package(Torch) keeps
# its Torch: LibTorch's CMake files cannot be read twice (they create targets unguarded).
if(NOT TARGET torch OR NOT DEFINED TORCH_LIBRARIES)
  find_package(Torch REQUIRED)
endif()
message(STATUS "batchcam: Torch ${Torch_VERSION} from ${Torch_DIR}")
include(${CMAKE_CURRENT_LIST_DIR}/BatchcamTorchTarget.cmake)
batchcam_torch_target(batchcam_torch)
