#include "batchcam/eval/evaluate.h"
#include "batchcam/cam/grad_cam.h"
#include "batchcam/data/shapes.h"
#include "batchcam/eval/report.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/models/registry.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>

using namespace batchcam;

namespace {
// Shapes, their normalisation and prototypes, and an untrained SimpleCNN (seeded) in eval mode.
struct ShapesAndModel {
  data::Dataset d;
  data::Normalization norm;
  torch::Tensor protos;
  models::CamModelPtr model;
  ShapesAndModel(int64_t count, uint64_t data_seed, data::SpuriousCue cue, double noise, uint64_t model_seed)
      : d(data::generate_shapes(count, 28, data_seed, cue, noise)),
        norm(data::Normalization::fit(d.images)),
        protos(losses::image_prototypes(d.images, d.labels, 10)) {
    torch::manual_seed(model_seed);
    model = models::make_model({"simple-cnn", 1, 10, 28, ""});
    model->eval();
  }
};
}  // namespace

TEST(MassShare, KnownCases) {
  auto masks = torch::zeros({3, 4, 4}, torch::kBool);
  masks.slice(1, 0, 2).fill_(true);  // top half
  const auto equal_to_mask = masks.to(torch::kFloat);
  const auto uniform = torch::ones({3, 4, 4});
  const auto outside = masks.logical_not().to(torch::kFloat);
  EXPECT_NEAR(eval::mass_share(equal_to_mask, masks)[0].item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(eval::mass_share(uniform, masks)[1].item<double>(), 0.5, 1e-6);
  EXPECT_NEAR(eval::mass_share(outside, masks)[2].item<double>(), 0.0, 1e-6);
  EXPECT_EQ(eval::mass_share(torch::zeros({3, 4, 4}), masks).abs().max().item<double>(), 0.0);
}

TEST(Evaluate, IsStableAndReportsEveryMetricInRange) {
  const auto d = data::generate_shapes(64, 28, 9, data::SpuriousCue::random_class, 0.08);
  const auto norm = data::Normalization::fit(d.images);
  const auto protos = losses::image_prototypes(d.images, d.labels, 10);
  torch::manual_seed(0);
  auto model = models::make_model({"simple-cnn", 1, 10, 28, ""});
  const auto a = eval::evaluate(*model, d, norm, protos, 32);
  const auto b = eval::evaluate(*model, d, norm, protos, 16);  // batch size must not matter
  EXPECT_EQ(a.count, 64);
  EXPECT_NEAR(a.accuracy, b.accuracy, 1e-12);
  EXPECT_NEAR(a.loss, b.loss, 1e-5);
  EXPECT_NEAR(a.proto_ssim, b.proto_ssim, 1e-5);
  EXPECT_NEAR(a.object_share, b.object_share, 1e-5);
  EXPECT_GE(a.object_share, 0.0);
  EXPECT_LE(a.object_share, 1.0);
  EXPECT_GE(a.decoy_share, 0.0);
  EXPECT_LE(a.decoy_share, 1.0);
  EXPECT_TRUE(model->is_training());  // mode restored
  const auto no_cam = eval::evaluate(*model, d, norm, torch::Tensor());
  EXPECT_TRUE(std::isnan(no_cam.object_share)) << "not available without CAMs";
  EXPECT_NEAR(no_cam.accuracy, a.accuracy, 1e-12);
}

TEST(PointingGame, PeakInsideTheMaskHits) {
  auto masks = torch::zeros({2, 4, 4}, torch::kBool);
  masks.slice(1, 0, 2).fill_(true);  // top half
  const auto equal_to_mask = masks.to(torch::kFloat);
  EXPECT_TRUE(eval::pointing_game(equal_to_mask, masks).all().item<bool>()) << "a CAM equal to the mask";
  EXPECT_NEAR(eval::mass_share(equal_to_mask, masks).mean().item<double>(), 1.0, 1e-6);
  auto low = torch::zeros({2, 4, 4});
  low[0][3][1] = 1.0;  // peak in the bottom half
  low[1][1][2] = 1.0;  // peak in the top half
  const auto hits = eval::pointing_game(low, masks);
  EXPECT_FALSE(hits[0].item<bool>());
  EXPECT_TRUE(hits[1].item<bool>());
}

TEST(DecoyFollowing, CountsPredictionsOfTheDecoysClassWhereItDisagreesWithTheLabel) {
  const auto labels = torch::tensor({0, 1, 2, 3, 4, 5}, torch::kInt64);
  const auto decoys = torch::tensor({0, 2, 3, 1, 0, 5}, torch::kInt64);  // misleading at 1, 2, 3, 4
  // Predicted the decoy's class at 1 and 3, the label at 2, a third class at 4.
  const auto predicted = torch::tensor({0, 2, 2, 1, 7, 5}, torch::kInt64);
  EXPECT_DOUBLE_EQ(eval::decoy_following(predicted, labels, decoys), 0.5);
  EXPECT_DOUBLE_EQ(eval::decoy_following(decoys, labels, decoys), 1.0) << "a model that only reads the decoy";
  EXPECT_DOUBLE_EQ(eval::decoy_following(labels, labels, decoys), 0.0) << "a perfect model";
  EXPECT_TRUE(std::isnan(eval::decoy_following(labels, labels, labels))) << "no misleading decoy: not available";
}

namespace {
// A toy model whose class-0 probability is the fraction s of the 4 evidence pixels (the
// top-left 2 x 2 of a 4 x 4 image) still equal to 1: logits (log s, log(1 - s)).
torch::Tensor evidence_model(const torch::Tensor& x) {
  const auto s = x.slice(2, 0, 2).slice(3, 0, 2).flatten(1).eq(1.0).to(torch::kDouble).mean(1).clamp(1e-9, 1 - 1e-9);
  return torch::stack({s.log(), (1 - s).log()}, 1);
}
}  // namespace

TEST(Faithfulness, PerfectOrderingGivesTheKnownDeletionAndInsertionAreas) {
  const auto x = torch::ones({1, 1, 4, 4});
  const auto baseline = torch::zeros({1, 1, 4, 4});
  const auto y = torch::zeros({1}, torch::kLong);
  auto perfect = torch::zeros({1, 4, 4});
  perfect.slice(1, 0, 2).slice(2, 0, 2).fill_(1.0);  // ranks the 4 evidence pixels first
  // 4 steps of 4 pixels: deletion removes all evidence at step 1, insertion restores it.
  const auto [del, ins] = eval::deletion_insertion_curves(evidence_model, x, y, perfect, baseline, 4);
  EXPECT_NEAR(del[0][0].item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(del[0][1].item<double>(), 0.0, 1e-6);
  EXPECT_NEAR(ins[0][1].item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(eval::curve_auc(del)[0].item<double>(), 0.125, 1e-6);  // (1 + 0) / 2 * 1/4
  EXPECT_NEAR(eval::curve_auc(ins)[0].item<double>(), 0.875, 1e-6);
  // The worst ordering (evidence last) gives the opposite areas.
  const auto [del_worst, ins_worst] = eval::deletion_insertion_curves(evidence_model, x, y, 1 - perfect, baseline, 4);
  EXPECT_NEAR(eval::curve_auc(del_worst)[0].item<double>(), 0.875, 1e-6);
  EXPECT_NEAR(eval::curve_auc(ins_worst)[0].item<double>(), 0.125, 1e-6);
}

namespace {
// The imputation's defining equation, written out pixel by pixel (independently of the
// library's convolution): the largest |v_i - weighted mean of i's in-image neighbours| over
// the removed pixels of image 0, channel c.
double imputation_residual(const torch::Tensor& v, const torch::Tensor& removed, int64_t c) {
  const int64_t h = v.size(2), w = v.size(3);
  const auto image = v[0][c].contiguous(), holes = removed[0].contiguous();
  const auto img = image.accessor<double, 2>();
  const auto mask = holes.accessor<bool, 2>();
  double worst = 0;
  for (int64_t i = 0; i < h; ++i) {
    for (int64_t j = 0; j < w; ++j) {
      if (!mask[i][j]) continue;
      double sum = 0, weight = 0;
      for (int64_t di = -1; di <= 1; ++di) {
        for (int64_t dj = -1; dj <= 1; ++dj) {
          if ((di == 0 && dj == 0) || i + di < 0 || i + di >= h || j + dj < 0 || j + dj >= w) continue;
          const double wt = (di == 0 || dj == 0) ? 1.0 / 6 : 1.0 / 12;
          sum += wt * img[i + di][j + dj];
          weight += wt;
        }
      }
      worst = std::max(worst, std::abs(img[i][j] - sum / weight));
    }
  }
  return worst;
}
}  // namespace

TEST(NoisyLinearImputation, SolvesTheNeighbourEquationsAndKeepsTheOtherPixels) {
  torch::manual_seed(3);
  const auto x = torch::rand({2, 3, 12, 10}, torch::kDouble);
  auto removed = torch::rand({2, 12, 10}) < 0.7;  // scattered, with large connected holes
  removed[1].slice(0, 0, 6).fill_(true);          // the top half of image 1, border included
  const auto v = eval::noisy_linear_imputation(x, removed, 0.0, 0);
  const auto kept = removed.logical_not().unsqueeze(1).expand_as(x);
  EXPECT_TRUE(torch::equal(v.masked_select(kept), x.masked_select(kept))) << "kept pixels are not touched";
  for (int64_t c = 0; c < 3; ++c) EXPECT_LT(imputation_residual(v, removed, c), 1e-8) << "channel " << c;
  // Image by image gives the same (the systems are independent).
  const auto second = eval::noisy_linear_imputation(x.narrow(0, 1, 1), removed.narrow(0, 1, 1), 0.0, 0);
  EXPECT_LT((second - v.narrow(0, 1, 1)).abs().max().item<double>(), 1e-9);
  // A plane is its own weighted neighbour mean: a hole away from the border refills exactly.
  const auto ramp = (torch::arange(12, torch::kDouble).view({12, 1}) + 2 * torch::arange(10, torch::kDouble))
                        .view({1, 1, 12, 10});
  auto hole = torch::zeros({1, 12, 10}, torch::kBool);
  hole[0].slice(0, 2, 9).slice(1, 3, 8).fill_(true);
  EXPECT_LT((eval::noisy_linear_imputation(ramp, hole, 0.0, 0) - ramp).abs().max().item<double>(), 1e-8);
  // Float32 input reaches the float tolerance.
  const auto single = eval::noisy_linear_imputation(x.to(torch::kFloat), removed, 0.0, 0);
  EXPECT_LT((single.to(torch::kDouble) - v).abs().max().item<double>(), 1e-4);
  EXPECT_THROW(eval::noisy_linear_imputation(x, torch::ones({2, 12, 10}, torch::kBool), 0.0, 0), c10::Error)
      << "nothing left to impute from";
}

TEST(NoisyLinearImputation, AddsSeededNoiseOfTheGivenSizeToRemovedPixelsOnly) {
  torch::manual_seed(4);
  const auto x = torch::rand({4, 1, 32, 32}, torch::kDouble);
  const auto removed = torch::rand({4, 32, 32}) < 0.5;
  const auto clean = eval::noisy_linear_imputation(x, removed, 0.0, 7);
  const auto a = eval::noisy_linear_imputation(x, removed, 0.2, 7);
  const auto b = eval::noisy_linear_imputation(x, removed, 0.2, 7);
  const auto c = eval::noisy_linear_imputation(x, removed, 0.2, 8);
  EXPECT_TRUE(torch::equal(a, b)) << "the same seed, the same noise";
  EXPECT_FALSE(torch::equal(a, c));
  const auto mask = removed.unsqueeze(1);
  const auto noise = (a - clean).masked_select(mask);
  EXPECT_NEAR(noise.std().item<double>(), 0.2, 0.02) << noise.numel() << " removed pixels";
  EXPECT_NEAR(noise.mean().item<double>(), 0.0, 0.02);
  EXPECT_EQ((a - clean).masked_select(mask.logical_not()).abs().max().item<double>(), 0.0);
}

namespace {
// Class 0's probability rises with the mean of the 2 x 2 evidence pixels (top left of an
// 8 x 8 image): logits (10 * (mean - 0.5), 0).
torch::Tensor evidence_mean_model(const torch::Tensor& x) {
  const auto m = x.slice(2, 0, 2).slice(3, 0, 2).flatten(1).mean(1);
  return torch::stack({10 * (m - 0.5), torch::zeros_like(m)}, 1);
}
}  // namespace

TEST(Road, RemovingTheEvidenceFirstLowersTheScoreAndRemovingItLastKeepsIt) {
  auto x = torch::zeros({1, 1, 8, 8}, torch::kDouble);
  x[0][0].slice(0, 0, 2).slice(1, 0, 2).fill_(1.0);
  const auto y = torch::zeros({1}, torch::kLong);
  const double original = 1 / (1 + std::exp(-5.0));  // softmax of (5, 0)
  // A map that ranks the evidence first, the other pixels by their distance from it.
  const auto rows = torch::arange(8, torch::kDouble).view({8, 1}), cols = torch::arange(8, torch::kDouble);
  const auto perfect = (1.0 / (1.0 + rows + cols) + x[0][0]).unsqueeze(0);
  const std::vector<double> fractions{0.1, 0.5, 0.9};  // 6, 32 and 58 of 64 pixels
  const auto good = eval::road_curves(evidence_mean_model, x, y, perfect, fractions, 0.0, 0);
  ASSERT_EQ(good.morf.sizes(), (std::vector<int64_t>{1, 3}));
  // MoRF imputes the evidence from its zero surroundings: the score falls, the class flips.
  EXPECT_LT(good.morf.max().item<double>(), 0.5);
  EXPECT_FALSE(good.morf_correct.any().item<bool>());
  // LeRF removes only zeros far from the evidence, which stays: the score does not move.
  EXPECT_NEAR(good.lerf.min().item<double>(), original, 1e-9);
  EXPECT_TRUE(good.lerf_correct.all().item<bool>());
  // An image's random numbers follow it into any batch: the seed names its position.
  auto pair = torch::cat({x, torch::rand({1, 1, 8, 8}, torch::kDouble)});
  const auto pair_maps = torch::cat({perfect, torch::rand({1, 8, 8}, torch::kDouble)});
  const auto pair_targets = torch::zeros({2}, torch::kLong);
  const auto noisy_pair = eval::road_curves(evidence_mean_model, pair, pair_targets, pair_maps, fractions, 0.1, 5);
  const auto noisy_second = eval::road_curves(evidence_mean_model, pair.narrow(0, 1, 1), pair_targets.narrow(0, 1, 1),
                                              pair_maps.narrow(0, 1, 1), fractions, 0.1, 6);
  EXPECT_TRUE(torch::equal(noisy_pair.morf[1], noisy_second.morf[0]));
  EXPECT_TRUE(torch::equal(noisy_pair.lerf[1], noisy_second.lerf[0]));
  // The reversed map exchanges the two.
  const auto bad = eval::road_curves(evidence_mean_model, x, y, 1 - perfect, fractions, 0.0, 0);
  EXPECT_NEAR(bad.morf.min().item<double>(), original, 1e-9);
  EXPECT_LT(bad.lerf.max().item<double>(), 0.5);
}

TEST(ConfidenceChange, DropIsRelativeAndOnlyDownwardsIncreaseCountsRises) {
  // logits (sum of the image, 0): p = sigmoid(sum).
  const auto model = [](const torch::Tensor& x) {
    const auto s = x.flatten(1).sum(1);
    return torch::stack({s, torch::zeros_like(s)}, 1);
  };
  const auto x = torch::tensor({4.0, -4.0}, torch::kDouble).view({2, 1, 1, 1});
  const auto [drop, increase] = eval::confidence_change(model, x, 0.5 * x, torch::zeros({2}, torch::kLong));
  const auto sigmoid = [](double v) { return 1 / (1 + std::exp(-v)); };
  EXPECT_NEAR(drop[0].item<double>(), (sigmoid(4) - sigmoid(2)) / sigmoid(4), 1e-12);
  EXPECT_EQ(drop[1].item<double>(), 0.0) << "the confidence rose: no drop";
  EXPECT_FALSE(increase[0].item<bool>());
  EXPECT_TRUE(increase[1].item<bool>());
}

TEST(EvaluateFull, IsStableForAFixedModelAndLeavesItUnchanged) {
  ShapesAndModel s(48, 4, data::SpuriousCue::random_class, 0.08, 0);
  const auto& [d, norm, protos, model] = s;
  const auto x = norm.apply(d.images.narrow(0, 0, 8));
  const auto logits_before = model->forward(x).detach();
  eval::EvalOptions o;
  o.batch_size = 16;
  o.faithfulness_count = 20;
  o.faithfulness_steps = 8;
  o.randomization_count = 16;
  const auto a = eval::evaluate_full(*model, d, norm, protos, o);
  const auto b = eval::evaluate_full(*model, d, norm, protos, o);
  EXPECT_TRUE(torch::equal(model->forward(x).detach(), logits_before)) << "weights restored after randomisation";
  auto ja = eval::to_json(a), jb = eval::to_json(b);
  ja.erase("timing");
  jb.erase("timing");
  EXPECT_EQ(ja.dump(), jb.dump()) << "the same report for the same model";
  // Confusion matrix rows sum to the class counts; its diagonal gives the accuracy.
  int64_t total = 0, diagonal = 0;
  for (size_t t = 0; t < a.confusion.size(); ++t) {
    for (size_t p = 0; p < a.confusion.size(); ++p) total += a.confusion[t][p];
    diagonal += a.confusion[t][t];
  }
  EXPECT_EQ(total, 48);
  EXPECT_NEAR(static_cast<double>(diagonal) / 48, a.metrics.accuracy, 1e-12);
  ASSERT_EQ(a.randomization.size(), 4u) << "classifier, block3, block2, block1";
  EXPECT_EQ(a.randomization.front().layer, "classifier");
  EXPECT_EQ(a.randomization.back().layer, "block1");
  EXPECT_LT(a.randomization.back().rank_correlation, 0.9) << "a fully random network explains differently";
  EXPECT_GE(a.deletion_auc, 0.0);
  EXPECT_LE(a.insertion_auc, 1.0);
  EXPECT_GE(a.decoy_pointing, 0.0);
  EXPECT_GE(a.decoy_share_predicted, 0.0);
  EXPECT_LE(a.decoy_share_predicted, 1.0);
  EXPECT_GE(a.decoy_pointing_predicted, 0.0);
  EXPECT_GE(a.decoy_following, 0.0);
  // ROAD and the confidence change of the first 20 images, by the functions themselves on the
  // same maps (explained in the report's batches of 16 and 4; ROAD seeded by image position).
  const auto x20 = norm.apply(d.images.narrow(0, 0, 20)), y20 = d.labels.narrow(0, 0, 20);
  const auto maps20 = torch::cat({cam::explain(*model, x20.narrow(0, 0, 16), y20.narrow(0, 0, 16)).maps,
                                  cam::explain(*model, x20.narrow(0, 16, 4), y20.narrow(0, 16, 4)).maps});
  const auto forward = [&](const torch::Tensor& in) { return model->forward(in); };
  const auto road = eval::road_curves(forward, x20, y20, maps20, o.road_fractions, o.road_noise, 0);
  ASSERT_EQ(a.road_morf.size(), 9u) << "ROAD at 10%, ..., 90%";
  for (int64_t k = 0; k < 9; ++k) {
    EXPECT_NEAR(a.road_morf[k], road.morf.select(1, k).mean().item<double>(), 1e-6) << k;
    EXPECT_NEAR(a.road_lerf[k], road.lerf.select(1, k).mean().item<double>(), 1e-6) << k;
    EXPECT_NEAR(a.road_lerf_accuracy[k], road.lerf_correct.select(1, k).to(torch::kDouble).mean().item<double>(), 1e-9);
  }
  EXPECT_NEAR(a.road_combined, (road.lerf.mean() - road.morf.mean()).item<double>() / 2, 1e-6);
  const auto [drop, increase] =
      eval::confidence_change(forward, x20, norm.from_unit(norm.to_unit(x20) * maps20.unsqueeze(1)), y20);
  EXPECT_NEAR(a.average_drop, drop.mean().item<double>(), 1e-6);
  EXPECT_NEAR(a.increase_in_confidence, increase.to(torch::kDouble).mean().item<double>(), 1e-9);
  EXPECT_EQ(ja.at("faithfulness").at("road").at("morf_probability").size(), 9u) << ja.dump();
  EXPECT_LE(a.decoy_following, 1.0);
  // The predicted-class CAM is the true-class CAM wherever the prediction is right, so on
  // an untrained model (mostly wrong) they differ but stay in range; the JSON carries both.
  EXPECT_EQ(ja.at("decoy").at("follows_decoy").get<double>(), a.decoy_following);
  EXPECT_GT(a.ms_per_image_with_cam, 0.0);
  const auto table = eval::format_report(a);
  EXPECT_NE(table.find("deletion AUC"), std::string::npos) << table;
  EXPECT_NE(table.find("Parameter randomisation"), std::string::npos) << table;
}

TEST(Localisation, CentreDistanceIsInHalfSidesAndEmptyMasksAreLeftOut) {
  auto masks = torch::zeros({4, 10, 10}, torch::kBool);
  masks[0].slice(0, 4, 6).slice(1, 4, 6).fill_(true);  // the four centre pixels: distance 0
  masks[1][4][9] = true;                               // pixel centre (4.5, 9.5): dx 4.5, dy -0.5
  masks[2].slice(1, 0, 1).fill_(true);                 // the left column: dx -4.5, dy 0
  const auto d = eval::centre_distance(masks);
  EXPECT_NEAR(d[0].item<double>(), 0.0, 1e-7);
  EXPECT_NEAR(d[1].item<double>(), std::sqrt(4.5 * 4.5 + 0.25) / 5, 1e-6);
  EXPECT_NEAR(d[2].item<double>(), 0.9, 1e-6);
  EXPECT_TRUE(std::isnan(d[3].item<double>())) << "an empty mask has no centre";
  const auto bands = eval::localisation_bands();
  ASSERT_EQ(bands.size(), 3u);
  EXPECT_EQ(bands.front().from, 0.0);
  EXPECT_TRUE(std::isinf(bands.back().to));
}

TEST(Localisation, BandsSplitTheObjectMetricsByTheObjectsDistanceFromTheCentre) {
  // The object metrics of evaluate_full, recomputed per band from the maps themselves.
  ShapesAndModel s(64, 5, data::SpuriousCue::none, 0.05, 1);
  const auto& [d, norm, protos, model] = s;
  eval::EvalOptions o;
  o.batch_size = 32;
  o.faithfulness_count = 0;
  o.randomization_count = 0;
  const auto r = eval::evaluate_full(*model, d, norm, protos, o);
  ASSERT_EQ(r.localisation_by_distance.size(), 3u);
  const auto maps = cam::explain(*model, norm.apply(d.images), d.labels).maps;
  const auto share = eval::mass_share(maps, d.object_masks);
  const auto hits = eval::pointing_game(maps, d.object_masks).to(torch::kDouble);
  const auto distance = eval::centre_distance(d.object_masks);
  int64_t counted = 0;
  for (const auto& band : r.localisation_by_distance) {
    const auto in = (distance >= band.from).logical_and(distance < band.to);
    EXPECT_EQ(band.count, in.sum().item<int64_t>());
    counted += band.count;
    if (band.count == 0) continue;
    EXPECT_NEAR(band.object_share, share.masked_select(in).mean().item<double>(), 1e-6);
    EXPECT_NEAR(band.object_pointing, hits.masked_select(in).mean().item<double>(), 1e-9);
  }
  EXPECT_EQ(counted, 64) << "every figure lies in one band";
  EXPECT_GT(r.localisation_by_distance[1].count, 0) << "shapes places figures away from the centre too";
  const auto j = eval::to_json(r).at("object").at("by_distance_from_centre");
  ASSERT_EQ(j.size(), 3u);
  EXPECT_TRUE(j[2].at("to").is_null());
  EXPECT_EQ(j[0].at("count").get<int64_t>(), r.localisation_by_distance[0].count);
  EXPECT_NE(eval::format_report(r).find("from centre"), std::string::npos);
  // Without object masks: no bands.
  auto plain = d;
  plain.object_masks = torch::Tensor();
  EXPECT_TRUE(eval::evaluate_full(*model, plain, norm, protos, o).localisation_by_distance.empty());
}

TEST(EvaluateFull, NotAvailableIsNullInJsonAndNaInTextAndNegativeValuesPrintAsNumbers) {
  eval::EvalReport r;
  r.metrics.count = 2;
  r.class_names = {"a", "b"};
  r.per_class_accuracy = {0.5, 0.5};
  r.confusion = {{1, 1}, {1, 1}};
  r.randomization.push_back({"classifier", -0.125, -0.0625});  // a real, negative correlation
  const auto j = eval::to_json(r);
  EXPECT_TRUE(j.at("object").at("cam_mass_share").is_null()) << j.dump();
  EXPECT_TRUE(j.at("decoy").at("follows_decoy").is_null()) << j.dump();
  EXPECT_TRUE(j.at("faithfulness").at("deletion_auc").is_null()) << j.dump();
  EXPECT_TRUE(j.at("faithfulness").at("road").is_null()) << "ROAD skipped: " << j.dump();
  EXPECT_TRUE(j.at("faithfulness").at("confidence").at("average_drop").is_null()) << j.dump();
  EXPECT_DOUBLE_EQ(j.at("randomization").at(0).at("rank_correlation").get<double>(), -0.0625);
  const auto table = eval::format_report(r);
  EXPECT_NE(table.find("-0.125"), std::string::npos) << table;
  EXPECT_NE(table.find("-0.062"), std::string::npos) << table;
  r.ms_per_image = 1.5;  // shown rows: a value that is there, and one that is not
  EXPECT_NE(eval::format_report(r).find("1.500 / n/a"), std::string::npos) << eval::format_report(r);
}
