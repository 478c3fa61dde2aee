#include "batchcam/data/dataset.h"
#include "batchcam/data/shapes.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <set>

using namespace batchcam::data;

namespace {
Dataset small_dataset() { return generate_shapes(50, 16, 2, SpuriousCue::none, 0.1); }
std::vector<int64_t> epoch_indices(BatchIterator& it) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < it.size(); ++i) {
    const auto idx = it.get(i).index;
    for (int64_t k = 0; k < idx.size(0); ++k) out.push_back(idx[k].item<int64_t>());
  }
  return out;
}
}  // namespace

TEST(BatchIterator, EachSampleOncePerEpochInABatch) {
  const auto d = small_dataset();
  BatchIterator it(d, Normalization::fit(d.images), 8, true, 3, false);
  EXPECT_EQ(it.size(), 7);
  const auto seen = epoch_indices(it);
  EXPECT_EQ(std::set<int64_t>(seen.begin(), seen.end()).size(), 50u);
  EXPECT_EQ(seen.size(), 50u);
  const auto b = it.get(6);
  EXPECT_EQ(b.x.size(0), 2);  // the last, partial batch
  EXPECT_TRUE(b.y.equal(d.labels.index_select(0, b.index)));
}

TEST(BatchIterator, OrderDependsOnSeedAndEpochOnly) {
  const auto d = small_dataset();
  const auto norm = Normalization::fit(d.images);
  BatchIterator a(d, norm, 8, true, 3, true), b(d, norm, 8, true, 3, true), c(d, norm, 8, true, 4, true);
  EXPECT_EQ(a.size(), 6);  // drop_last
  a.set_epoch(2);
  b.set_epoch(2);
  c.set_epoch(2);
  EXPECT_EQ(epoch_indices(a), epoch_indices(b));
  EXPECT_NE(epoch_indices(a), epoch_indices(c));
  b.set_epoch(3);
  EXPECT_NE(epoch_indices(a), epoch_indices(b));
}

TEST(BatchIterator, WithoutShuffleKeepsDatasetOrder) {
  const auto d = small_dataset();
  BatchIterator it(d, Normalization::fit(d.images), 16, false, 0, false);
  const auto seen = epoch_indices(it);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], static_cast<int64_t>(i));
  EXPECT_THROW(BatchIterator(d, Normalization::fit(d.images), 0, false, 0, false), std::invalid_argument);
}

TEST(Normalization, FitsMomentsAndInvertsToUnitRange) {
  const auto d = small_dataset();
  const auto norm = Normalization::fit(d.images);
  const auto x = norm.apply(d.images);
  EXPECT_NEAR(x.mean().item<double>(), 0.0, 1e-4);
  EXPECT_NEAR(x.std(false).item<double>(), 1.0, 1e-4);
  const auto unit = norm.to_unit_gray(x);
  const auto expected = d.images.to(torch::kFloat).div(255.0).mean(1);
  EXPECT_LT((unit - expected).abs().max().item<double>(), 1e-5);
}
