#pragma once
// CIFAR-10 from its binary batches (cifar-10-binary.tar.gz, extracted by the user).

#include "batchcam/data/dataset.h"

#include <cstdint>
#include <string>

namespace batchcam::data {

/// data_batch_1..5.bin and test_batch.bin in `dir` (or its cifar-10-batches-bin/);
/// train_size/test_size keep the first N (0 = all).
DatasetSplits cifar10_dataset(const std::string& dir, int64_t train_size, int64_t test_size);

/// One CIFAR-10 binary batch file (records of 1 label byte + 3 x 32 x 32 pixels).
Dataset cifar10_batch(const std::string& path);

}  // namespace batchcam::data
