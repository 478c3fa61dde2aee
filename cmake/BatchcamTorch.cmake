# Finds LibTorch: Debian's libtorch-dev (1.13, CPU) by default, or the LibTorch inside
# a PyTorch wheel (2.x, CUDA) when Torch_DIR points at <site-packages>/torch/share/cmake/Torch.
if(NOT Torch_DIR)
  find_program(BATCHCAM_PYTHON python3)
  if(BATCHCAM_USE_PIP_TORCH AND BATCHCAM_PYTHON)
    execute_process(
      COMMAND ${BATCHCAM_PYTHON} -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'share', 'cmake', 'Torch'))"
      OUTPUT_VARIABLE _torch_dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    if(_torch_dir)
      set(Torch_DIR ${_torch_dir})
    endif()
  endif()
endif()
find_package(Torch REQUIRED)
message(STATUS "batchcam: Torch ${Torch_VERSION} from ${Torch_DIR}")

# Torch's exported flags contain -D_GLIBCXX_USE_CXX11_ABI and friends; keep them on one target.
if(NOT TARGET batchcam_torch)
  add_library(batchcam_torch INTERFACE)
  target_link_libraries(batchcam_torch INTERFACE ${TORCH_LIBRARIES})
  target_include_directories(batchcam_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
  if(TORCH_CXX_FLAGS)
    separate_arguments(_torch_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
    target_compile_options(batchcam_torch INTERFACE ${_torch_flags})
  endif()
endif()
