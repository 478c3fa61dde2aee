# Finds LibTorch: Debian's libtorch-dev (1.13, CPU) by default, or the LibTorch inside a
# PyTorch wheel (2.x, CUDA) with -DTorch_DIR=<site-packages>/torch/share/cmake/Torch.
find_package(Torch REQUIRED)
message(STATUS "batchcam: Torch ${Torch_VERSION} from ${Torch_DIR}")
include(${CMAKE_CURRENT_LIST_DIR}/BatchcamTorchTarget.cmake)
batchcam_torch_target(batchcam_torch)
