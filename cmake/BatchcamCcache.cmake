# Use ccache when present. PCH builds need the sloppiness below to get cache hits;
# CCACHE_BASEDIR makes paths relative so that another clone (CI's) hits the same entries.
find_program(BATCHCAM_CCACHE ccache)
if(BATCHCAM_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER
      ${CMAKE_COMMAND} -E env CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
      CCACHE_BASEDIR=${PROJECT_SOURCE_DIR} CCACHE_NOHASHDIR=true
      ${BATCHCAM_CCACHE})
  message(STATUS "batchcam: using ccache (${BATCHCAM_CCACHE})")
endif()
