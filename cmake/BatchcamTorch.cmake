# Finds LibTorch: Debian's libtorch-dev (1.13, CPU) by default, or the LibTorch inside a
# PyTorch wheel (2.x, CUDA) with -DTorch_DIR=<site-packages>/torch/share/cmake/Torch.
find_package(Torch REQUIRED)
message(STATUS "batchcam: Torch ${Torch_VERSION} from ${Torch_DIR}")

# One interface target carries Torch's libraries, include paths and flags (e.g. the
# _GLIBCXX_USE_CXX11_ABI setting of the build that made it).
if(NOT TARGET batchcam_torch)
  add_library(batchcam_torch INTERFACE)
  target_link_libraries(batchcam_torch INTERFACE ${TORCH_LIBRARIES})
  target_include_directories(batchcam_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
  if(TORCH_CXX_FLAGS)
    separate_arguments(_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
    target_compile_options(batchcam_torch INTERFACE ${_torch_flags})
  endif()
endif()
