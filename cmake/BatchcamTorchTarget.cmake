# batchcam_torch_target(<name> [IMPORTED]): an interface target carrying what
# find_package(Torch) found: its libraries, include paths and flags (for example the
# _GLIBCXX_USE_CXX11_ABI setting of the build that made it). Used by batchcam's own build
# (batchcam_torch) and by the installed package (batchcam::torch, in batchcamConfig.cmake), so
# that a consumer links the LibTorch its own find_package(Torch) finds.
function(batchcam_torch_target name)
  if(TARGET ${name})
    return()
  endif()
  add_library(${name} INTERFACE ${ARGN})
  set_target_properties(${name} PROPERTIES
    INTERFACE_LINK_LIBRARIES "${TORCH_LIBRARIES}"
    INTERFACE_INCLUDE_DIRECTORIES "${TORCH_INCLUDE_DIRS}"
    INTERFACE_SYSTEM_INCLUDE_DIRECTORIES "${TORCH_INCLUDE_DIRS}")
  if(TORCH_CXX_FLAGS)
    separate_arguments(_flags UNIX_COMMAND "${TORCH_CXX_FLAGS}")
    set_target_properties(${name} PROPERTIES INTERFACE_COMPILE_OPTIONS "${_flags}")
  endif()
endfunction()
