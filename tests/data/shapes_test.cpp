#include "batchcam/data/shapes.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

using namespace batchcam::data;

TEST(Shapes, SameSeedGivesSameBytesOtherSeedDiffers) {
  const auto a = generate_shapes(40, 28, 7, SpuriousCue::none, 0.08);
  const auto b = generate_shapes(40, 28, 7, SpuriousCue::none, 0.08);
  const auto c = generate_shapes(40, 28, 8, SpuriousCue::none, 0.08);
  EXPECT_TRUE(a.images.equal(b.images));
  EXPECT_TRUE(a.object_masks.equal(b.object_masks));
  EXPECT_TRUE(a.labels.equal(b.labels));
  EXPECT_FALSE(a.images.equal(c.images));
}

TEST(Shapes, ShapesAndTypes) {
  const auto d = generate_shapes(30, 32, 1, SpuriousCue::none, 0.08);
  EXPECT_EQ(d.images.sizes(), (std::vector<int64_t>{30, 1, 32, 32}));
  EXPECT_EQ(d.images.scalar_type(), torch::kUInt8);
  EXPECT_EQ(d.object_masks.sizes(), (std::vector<int64_t>{30, 32, 32}));
  EXPECT_FALSE(d.decoy_masks.defined());
  EXPECT_EQ(d.num_classes(), 10);
  // Balanced labels: 3 of each class.
  EXPECT_TRUE(torch::bincount(d.labels).equal(torch::full({10}, 3, torch::kLong)));
}

TEST(Shapes, MaskCoversTheDrawnFigure) {
  // Without noise a pixel is background + coverage * (intensity - background), and the mask
  // is coverage >= 0.5: every pixel above the midpoint is in the mask and none below it
  // (one grey level of rounding allowed).
  const auto d = generate_shapes(50, 28, 3, SpuriousCue::none, 0.0);
  for (int64_t n = 0; n < d.size(); ++n) {
    const auto img = d.images[n][0].to(torch::kDouble);
    const auto mask = d.object_masks[n];
    const double lo = img.min().item<double>(), hi = img.max().item<double>();
    const double mid = 0.5 * (lo + hi);
    const double area = mask.to(torch::kDouble).mean().item<double>();
    EXPECT_GT(area, 0.03) << "image " << n;
    EXPECT_LT(area, 0.6) << "image " << n;
    EXPECT_TRUE(img.masked_select(mask).ge(mid - 1.0).all().item<bool>()) << "image " << n;
    EXPECT_TRUE(img.masked_select(mask.logical_not()).le(mid + 1.0).all().item<bool>()) << "image " << n;
  }
}

TEST(Shapes, SpuriousPatchEncodesTheClassInTrainingOnly) {
  const int64_t k = spurious_patch_size(28);
  ASSERT_EQ(k, 4);
  const auto train = generate_shapes(60, 28, 5, SpuriousCue::class_coded, 0.08);
  ASSERT_TRUE(train.decoy_masks.defined());
  for (int64_t n = 0; n < train.size(); ++n) {
    const auto decoy = train.decoy_masks[n];
    EXPECT_EQ(decoy.sum().item<int64_t>(), k * k);
    // A k x k block in one of the four corners.
    const auto rows = decoy.any(1).nonzero().flatten(), cols = decoy.any(0).nonzero().flatten();
    const int64_t top = rows.min().item<int64_t>(), left = cols.min().item<int64_t>();
    EXPECT_TRUE(top == 0 || top == 28 - k);
    EXPECT_TRUE(left == 0 || left == 28 - k);
    const auto shades = train.images[n][0].masked_select(decoy).to(torch::kLong);
    EXPECT_TRUE(shades.eq(spurious_shade(train.labels[n].item<int64_t>())).all().item<bool>());
    EXPECT_FALSE(train.object_masks[n].logical_and(decoy).any().item<bool>());
  }
  const auto test = generate_shapes(200, 28, 6, SpuriousCue::random_class, 0.08);
  int64_t agree = 0;
  for (int64_t n = 0; n < test.size(); ++n) {
    const auto shade = test.images[n][0].masked_select(test.decoy_masks[n])[0].item<int64_t>();
    EXPECT_EQ((255 - shade) % 25, 0);
    EXPECT_EQ(shade, spurious_shade(test.decoy_labels[n].item<int64_t>())) << "decoy_labels name the shade's class";
    agree += shade == spurious_shade(test.labels[n].item<int64_t>());
  }
  EXPECT_LT(agree, 50);  // random codes agree with the label about 1 time in 10
}

TEST(Shapes, SplitsUseDifferentStreams) {
  ShapesOptions o;
  o.train_size = 20;
  o.test_size = 20;
  const auto s = make_shapes(o);
  EXPECT_FALSE(s.train.images.equal(s.test.images));
  EXPECT_EQ(s.name, "shapes");
}

TEST(Shapes, RejectsBadArguments) {
  EXPECT_THROW(generate_shapes(10, 8, 0, SpuriousCue::none, 0.1), std::invalid_argument);
  EXPECT_THROW(generate_shapes(-1, 28, 0, SpuriousCue::none, 0.1), std::invalid_argument);
  EXPECT_THROW(generate_shapes(10, 28, 0, SpuriousCue::none, 2.0), std::invalid_argument);
}
