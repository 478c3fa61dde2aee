#pragma once
// The allocator settings of the batchcam executable, in one place: main.cpp applies them at
// start, and `batchcam bench` gives the same values to the Python side through glibc's
// environment variables, so that both run with the same allocator.

#ifdef __GLIBC__
#include <malloc.h>
#endif

// Tensors of a training step are megabytes each. By default glibc serves such blocks with
// mmap and returns them to the system when freed, so every step faults the same memory in
// again and the kernel zero-fills it (batch 128: about 11,000 page faults per SimpleCNN step,
// 75,000 or more per ResNet-18 step; docs/performance.md). Served from the heap and kept there,
// freed blocks are reused without a fault. The cost: the process keeps its peak heap.
constexpr int kMmapThresholdBytes = 32 << 20;  // glibc's largest allowed threshold on 64-bit
constexpr int kTrimThresholdBytes = 1 << 30;

inline void keep_freed_memory_in_process() {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, kMmapThresholdBytes);
  mallopt(M_TRIM_THRESHOLD, kTrimThresholdBytes);
#endif
}
