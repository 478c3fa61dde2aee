add_library(batchcam_warnings INTERFACE)
if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(batchcam_warnings INTERFACE -Wall -Wextra -Wpedantic -Wno-unused-parameter)
endif()
