#include "batchcam/train/trainer.h"

#include "batchcam/cam/grad_cam.h"
#include "batchcam/core/provenance.h"
#include "batchcam/data/datasets.h"
#include "batchcam/eval/report.h"
#include "batchcam/io/sha256.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/models/torchscript.h"
#include "batchcam/train/run_directory.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <optional>
#include <stdexcept>

namespace batchcam::train {

namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Positions in Trainer::running_.
enum Slot : int64_t { kLoss, kCe, kProto, kBatch, kRrr, kProtoRrr, kCorrect, kSeen, kBadStep, kBadTerm, kSlots };
constexpr int64_t kTerms = kCorrect - kLoss;  // the loss and its five terms
const char* const kTermNames[] = {"cross-entropy", "prototype", "batch-cam", "rrr", "prototype-rrr", "total"};

// Like torch::nn::utils::clip_grad_norm_, without reading the norm back to the host.
void clip_gradients(const std::vector<torch::Tensor>& parameters, double max_norm) {
  std::vector<torch::Tensor> norms;
  for (const auto& p : parameters) {
    if (p.grad().defined()) norms.push_back(p.grad().norm());
  }
  if (norms.empty()) return;
  const auto total = torch::stack(norms).norm();
  const auto coefficient = (max_norm / (total + 1e-6)).clamp_max(1.0);
  for (const auto& p : parameters) {
    if (p.grad().defined()) p.grad().mul_(coefficient);
  }
}

nlohmann::json sums_json(const torch::Tensor& running) {
  const auto r = running.to(torch::kCPU, torch::kDouble).contiguous();
  const double* v = r.data_ptr<double>();
  return {{"loss", v[kLoss]},   {"ce", v[kCe]},           {"proto", v[kProto]},
          {"batch", v[kBatch]}, {"rrr", v[kRrr]},         {"proto_rrr", v[kProtoRrr]},
          {"correct", v[kCorrect]}, {"seen", v[kSeen]}};
}

torch::Tensor running_from_json(const nlohmann::json& j) {
  auto r = torch::zeros({kSlots}, torch::kDouble);
  r[kLoss] = j.at("loss").get<double>();
  r[kCe] = j.at("ce").get<double>();
  r[kProto] = j.at("proto").get<double>();
  r[kBatch] = j.at("batch").get<double>();
  // Checkpoints written before the input-gradient terms have no sums of them.
  r[kRrr] = j.value("rrr", 0.0);
  r[kProtoRrr] = j.value("proto_rrr", 0.0);
  r[kCorrect] = j.at("correct").get<double>();
  r[kSeen] = j.at("seen").get<double>();
  r[kBadStep] = -1.0;
  return r;
}

torch::Tensor fresh_running(torch::Device device) {
  auto r = torch::zeros({kSlots}, torch::kDouble);
  r[kBadStep] = -1.0;
  return r.to(device);
}

}  // namespace

nlohmann::json to_json(const EpochMetrics& m) {
  return {{"epoch", m.epoch},
          {"train_loss", m.train_loss},
          {"train_ce", m.train_ce},
          {"train_proto", m.train_proto},
          {"train_batch", m.train_batch},
          {"train_rrr", m.train_rrr},
          {"train_proto_rrr", m.train_proto_rrr},
          {"train_accuracy", m.train_accuracy},
          {"lambda_proto", m.lambda_proto},
          {"lambda_batch", m.lambda_batch},
          {"lambda_rrr", m.lambda_rrr},
          {"lambda_proto_rrr", m.lambda_proto_rrr},
          {"test_loss", m.test.loss},
          {"test_accuracy", m.test.accuracy},
          {"test_proto_l1", m.test.proto_l1},
          {"test_proto_l2", m.test.proto_l2},
          {"test_proto_ssim", m.test.proto_ssim},
          {"test_object_share", eval::json_metric(m.test.object_share)},
          {"test_decoy_share", eval::json_metric(m.test.decoy_share)},
          {"seconds", m.seconds}};
}

EpochMetrics epoch_metrics_from_json(const nlohmann::json& j) {
  // JSON has no NaN: nlohmann writes it as null, so null reads back as NaN.
  const auto number = [&j](const char* key) {
    const auto& v = j.at(key);
    if (v.is_null()) return std::numeric_limits<double>::quiet_NaN();
    if (!v.is_number()) throw std::invalid_argument(std::string("metrics: '") + key + "' is not a number: " + v.dump());
    return v.get<double>();
  };
  EpochMetrics m;
  m.epoch = j.at("epoch").get<int64_t>();
  m.train_loss = number("train_loss");
  m.train_ce = number("train_ce");
  m.train_proto = number("train_proto");
  m.train_batch = number("train_batch");
  m.train_accuracy = number("train_accuracy");
  m.lambda_proto = number("lambda_proto");
  m.lambda_batch = number("lambda_batch");
  // Written before the input-gradient terms existed: they were off.
  const auto optional = [&](const char* key) { return j.contains(key) ? number(key) : 0.0; };
  m.train_rrr = optional("train_rrr");
  m.train_proto_rrr = optional("train_proto_rrr");
  m.lambda_rrr = optional("lambda_rrr");
  m.lambda_proto_rrr = optional("lambda_proto_rrr");
  m.test.loss = number("test_loss");
  m.test.accuracy = number("test_accuracy");
  m.test.proto_l1 = number("test_proto_l1");
  m.test.proto_l2 = number("test_proto_l2");
  m.test.proto_ssim = number("test_proto_ssim");
  // Shares are never negative: batchcam 0.1 wrote -1 where they were not available.
  const auto share = [&](const char* key) {
    const double v = number(key);
    return v < 0 ? eval::kNotAvailable : v;
  };
  m.test.object_share = share("test_object_share");
  m.test.decoy_share = share("test_decoy_share");
  m.seconds = number("seconds");
  return m;
}

data::DatasetSplits load_dataset(const TrainConfig& c) {
  data::DatasetOptions o;
  o.name = c.dataset;
  o.dir = c.data_dir;
  o.train_size = c.train_size;
  o.test_size = c.test_size;
  o.image_size = c.image_size;
  o.spurious = c.spurious;
  o.seed = c.seed;
  o.max_image_pixels = c.max_image_pixels;
  o.val_split = c.val_split;
  o.workers = c.workers;
  return data::load_dataset(o);
}

Trainer::Trainer(const TrainConfig& config, const data::DatasetSplits& splits, torch::Device device)
    : config_(config), splits_(&splits), device_(device) {
  config_.validate();
  const auto& train_set = splits.train;
  spec_ = {config_.model, train_set.channels(), train_set.num_classes(), train_set.height(), config_.target_layer};
  spec_.class_names = train_set.class_names;
  if (models::is_torchscript(config_.model)) {
    const auto file = models::torchscript_file(config_.model);
    if (!fs::is_regular_file(file)) throw std::runtime_error(file + ": no such TorchScript file (--model " + config_.model + ")");
    spec_.script_sha256 = io::sha256_file(file);  // checkpoints refuse a changed file
    // An absolute path, so that the checkpoint can be used from another directory.
    spec_.name = models::kTorchScriptPrefix + fs::absolute(file).string();
  }
  // Initialised on the CPU from the run's seed, so the weights are the same on every device.
  model_ = core::with_cpu_seed(config_.seed, [&] { return models::make_model(spec_); });
  if (!config_.init_weights.empty()) {
    notes_ = load_initial_weights(*model_, config_.init_weights);
    notes_.insert(notes_.begin(), "initial weights: " + config_.init_weights);
  }
  // The normalisation and the image prototypes in one pass over the training images (a
  // folder's are decoded once, chunk by chunk).
  data::ChannelMoments moments;
  losses::PrototypeSums sums(train_set.num_classes(), train_set.height(), train_set.width());
  data::for_each_chunk(train_set, [&](const torch::Tensor& images, const torch::Tensor& labels) {
    moments.add(images);
    sums.add(images, labels);
  });
  norm_ = moments.normalization();
  prototypes_ = sums.prototypes();
  set_up(splits);
  begin_epoch();
}

Trainer::Trainer(const Checkpoint& ck, const std::string& path, const data::DatasetSplits& splits, torch::Device device)
    : config_(ck.config), splits_(&splits), device_(device) {
  if (ck.progress.empty() || !ck.rng.cpu.defined() || !ck.has_optimizer) {
    throw std::runtime_error(path + ": checkpoint has no training state to resume from");
  }
  config_.validate();
  spec_ = ck.spec;
  model_ = ck.model;
  norm_ = ck.normalization;
  prototypes_ = ck.prototypes.defined()
                    ? ck.prototypes
                    : losses::image_prototypes(splits.train);
  set_up(splits);
  restore_optimizer(path, *optimizer_, device_);
  core::set_generator_state(ck.rng);
  if (scaler_ && ck.scaler_state.defined()) scaler_->load_state(ck.scaler_state);
  try {
    const auto progress = nlohmann::json::parse(ck.progress);
    for (const auto& line : progress.at("history")) history_.push_back(epoch_metrics_from_json(line));
    best_accuracy_ = progress.at("best_accuracy");
    train_seconds_ = progress.at("train_seconds");
    epoch_ = ck.epoch + 1;
    step_ = ck.step;
    if (step_ > 0) {
      running_ = running_from_json(progress.at("sums")).to(device_);
      seconds_before_ = progress.at("sums").at("seconds");
    }
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": invalid training progress in the checkpoint (" + std::string(e.what()) + ")");
  }
  if (step_ >= steps_) throw std::runtime_error(path + ": checkpoint step lies beyond the epoch's end");
  // Whether the epoch this checkpoint ends was the best so far (the first to reach the best
  // accuracy), as end_epoch() would have said.
  if (step_ == 0 && !history_.empty()) {
    last_best_ = history_.back().test.accuracy == best_accuracy_;
    for (size_t e = 0; e + 1 < history_.size(); ++e) last_best_ = last_best_ && history_[e].test.accuracy < best_accuracy_;
  }
  if (!finished()) begin_epoch();
}

Trainer::~Trainer() = default;

void Trainer::set_up(const data::DatasetSplits& splits) {
  const auto& train_set = splits.train;
  core::require_supported(config_.precision, device_);
  const int64_t k = train_set.num_classes();
  const auto& test_set = splits.test;
  if (test_set.size() > 0 && (test_set.channels() != train_set.channels() || test_set.height() != train_set.height() ||
                              test_set.width() != train_set.width() || test_set.num_classes() != k)) {
    throw std::runtime_error(
        "dataset '" + config_.dataset + "' (" + config_.data_dir + "): test images are " +
        std::to_string(test_set.channels()) + "x" + std::to_string(test_set.height()) + "x" +
        std::to_string(test_set.width()) + " of " + std::to_string(test_set.num_classes()) +
        " classes, training images " + std::to_string(train_set.channels()) + "x" + std::to_string(train_set.height()) +
        "x" + std::to_string(train_set.width()) + " of " + std::to_string(k) + " classes; they must match");
  }
  if (train_set.size() > 0) {
    // Validated once here, so that no step has to read the labels back from the device.
    const auto lo = train_set.labels.min().item<int64_t>(), hi = train_set.labels.max().item<int64_t>();
    if (lo < 0 || hi >= k) {
      throw std::runtime_error("training labels must lie in [0, " + std::to_string(k) + "), found " +
                               std::to_string(lo) + ".." + std::to_string(hi));
    }
  }
  model_->to(device_);
  set_training_mode();
  cam::require_per_sample_head(*model_);
  prototypes_ = prototypes_.to(device_);

  if (config_.lambda_rrr > 0.0 && !train_set.decoy_masks.defined()) {
    throw std::invalid_argument("config: 'lambda_rrr' needs annotation masks of the region that must not matter; "
                                "the training set of '" + config_.dataset + "' has none (decoy-mnist, decoy-fashion "
                                "and shapes with spurious have them)");
  }
  objective_.distance_proto = config_.distance_proto;
  objective_.distance_batch = config_.distance_batch;
  objective_.detach_batch_target = config_.batch_target == BatchTarget::detached;
  objective_.label_smoothing = config_.label_smoothing;
  objective_.precision = config_.precision;
  objective_.check_targets = false;
  objective_.method = config_.cam_method;
  if (config_.cam_method == cam::CamMethod::cam && !model_->gap_linear_weight().defined()) {
    throw std::invalid_argument("config: 'cam_method' cam needs a head of global average pooling and one linear "
                                "layer; model " + spec_.name + " with target layer '" + model_->target_layer() +
                                "' has another (grad-cam equals cam where it applies)");
  }

  optimizer_ = make_optimizer(config_, model_->parameters());
  if (config_.precision == core::Precision::fp16) scaler_ = std::make_unique<LossScaler>(device_);
  batches_ = std::make_unique<data::BatchIterator>(train_set, norm_, config_.batch_size, /*shuffle=*/true,
                                                   config_.seed, /*drop_last=*/true);
  if (config_.augment == Augment::shift || config_.augment == Augment::shift_flip) {
    batches_->set_augmentation(
        {std::max<int64_t>(1, train_set.height() / 8), config_.augment == Augment::shift_flip, false});
  } else if (config_.augment == Augment::crop_jitter_flip) {
    batches_->set_augmentation({0, true, true});
  }
  batches_->set_masks(config_.lambda_rrr > 0.0);
  batches_->set_device(device_);
  steps_ = batches_->size();
  if (steps_ == 0) {
    throw std::invalid_argument("config: 'batch_size' (" + std::to_string(config_.batch_size) +
                                ") is larger than the training set (" + std::to_string(train_set.size()) + ")");
  }
  running_ = fresh_running(device_);
}

void Trainer::set_training_mode() {
  model_->train();
  if (config_.freeze_batchnorm) model_->freeze_batchnorm();
}

void Trainer::begin_epoch() {
  const bool cam_on = epoch_ > config_.cam_warmup_epochs;
  objective_.lambda_proto = cam_on ? config_.lambda_proto : 0.0;
  objective_.lambda_batch = cam_on ? config_.lambda_batch : 0.0;
  // The input-gradient terms need no maps: the CAM warm-up leaves them on.
  objective_.lambda_rrr = config_.lambda_rrr;
  objective_.lambda_proto_rrr = config_.lambda_proto_rrr;
  batches_->set_epoch(epoch_);
  set_training_mode();
  if (step_ == 0) {
    running_ = fresh_running(device_);
    seconds_before_ = 0;
  }
  epoch_start_ = Clock::now();
  epoch_first_step_ = step_;
}

void Trainer::step(const data::Batch& batch) {
  TORCH_CHECK(!finished(), "Trainer::step: the run is complete");
  TORCH_CHECK(step_ < steps_, "Trainer::step: the epoch's ", steps_, " steps are done; call end_epoch() first");
  set_learning_rate(*optimizer_, learning_rate(config_, (epoch_ - 1) * steps_ + step_, steps_));
  optimizer_->zero_grad();
  auto losses_now = compute_losses(*model_, batch, prototypes_, spec_.num_classes, objective_);
  const auto parameters = model_->parameters();
  if (scaler_) {
    scaler_->scale(losses_now.total).backward();
    // Summed over the ranks while scaled: a non-finite gradient on any rank is then seen by
    // every rank, which all skip the same steps with the same scale.
    if (group_) average_gradients(parameters, static_cast<double>(batch.y.size(0)));
    const auto found_inf = scaler_->unscale(parameters);
    if (config_.grad_clip > 0.0) clip_gradients(parameters, config_.grad_clip);
    // The one read-back of fp16 training: whether this step's gradients are usable. A skipped
    // step changes nothing but the scale: no update, no prototype or running-loss change.
    const bool skip = found_inf.item<float>() > 0;
    scaler_->update(found_inf);
    if (skip) {
      ++skipped_in_a_row_;
      if (skipped_in_a_row_ >= config_.max_skipped_steps) {
        throw std::runtime_error("fp16 gradients were not finite in " + std::to_string(skipped_in_a_row_) +
                                 " steps in a row (loss scale now " + std::to_string(scaler_->current_scale()) +
                                 ") at epoch " + std::to_string(epoch_) + ", step " + std::to_string(step_ + 1) +
                                 " (term: total loss); the last good checkpoint is kept");
      }
      ++step_;
      return;
    }
    skipped_in_a_row_ = 0;
    optimizer_->step();
  } else {
    losses_now.total.backward();
    if (group_) average_gradients(parameters, static_cast<double>(batch.y.size(0)));
    if (config_.grad_clip > 0.0) clip_gradients(parameters, config_.grad_clip);
    optimizer_->step();
  }
  if (config_.prototype == PrototypeKind::cam_ema && losses_now.maps.defined()) {
    // The class means of the batch; data-parallel, of the global batch (every rank's class
    // sums and counts, summed).
    torch::NoGradGuard no_grad;
    const auto [sums, counts] = losses::class_sums(losses_now.maps.detach().to(prototypes_.scalar_type()), batch.y,
                                                   spec_.num_classes, /*check_targets=*/false);
    if (group_) group_->all_reduce_sum({sums, counts});
    prototypes_ = losses::ema_prototypes_from_sums(prototypes_, sums, counts, 0.99);
  }

  // Running sums and the first non-finite term, kept on the device.
  torch::NoGradGuard no_grad;
  const auto terms = torch::stack({losses_now.ce, losses_now.proto, losses_now.batch, losses_now.rrr,
                                   losses_now.proto_rrr, losses_now.total})
                         .detach()
                         .to(torch::kDouble);  // [6], in the order of kTermNames
  const double n = static_cast<double>(batch.y.size(0));
  const auto correct = losses_now.logits.argmax(1).eq(batch.y).sum().to(torch::kDouble);
  const auto bad = terms.isfinite().logical_not();
  const auto first_bad = (running_[kBadStep] < 0).logical_and(bad.any());
  running_.narrow(0, kLoss, kTerms).add_(torch::cat({terms.narrow(0, kTerms - 1, 1), terms.narrow(0, 0, kTerms - 1)}) * n);
  running_[kCorrect] += correct;
  running_[kSeen] += n;
  running_[kBadStep] = torch::where(first_bad, torch::full({}, static_cast<double>(step_ + 1), running_.options()),
                                    running_[kBadStep]);
  running_[kBadTerm] = torch::where(first_bad, bad.to(torch::kLong).argmax().to(torch::kDouble), running_[kBadTerm]);
  ++step_;
}

namespace {
// "(3, 48, 8, 1)" for an int64 vector.
std::string shape_of(const torch::Tensor& values) {
  std::string text = "(";
  for (int64_t i = 0; i < values.numel(); ++i) text += (i ? ", " : "") + std::to_string(values[i].item<int64_t>());
  return text + ")";
}
}  // namespace

void Trainer::use_process_group(std::shared_ptr<core::ProcessGroup> group) {
  if (!group || group->size() == 1) return;
  if (group_) throw std::invalid_argument("distributed training: a second process group is not supported yet");
  if (group->size() > config_.batch_size) {
    throw std::invalid_argument("distributed training: " + std::to_string(group->size()) +
                                " ranks need a global --batch-size of at least as many, got " +
                                std::to_string(config_.batch_size));
  }
  group_ = std::move(group);
  // Every rank must walk the same epochs from the same place: the same steps, data and
  // global batch as rank 0 (a resumed run: the same checkpoint).
  const auto mine = torch::tensor({steps_, splits_->train.size(), config_.batch_size, config_.epochs, epoch_, step_},
                                  torch::kInt64);
  auto rank0 = mine.clone();
  group_->broadcast({rank0});
  const bool differs = !torch::equal(mine, rank0);
  auto ranks_differing = torch::full({1}, differs ? 1.0 : 0.0, torch::kDouble);
  group_->all_reduce_sum({ranks_differing});  // every rank learns it, and stops
  if (differs) {
    throw std::invalid_argument("distributed training: rank " + std::to_string(group_->rank()) +
                                " has (steps per epoch, training images, batch size, epochs, epoch, step) = " +
                                shape_of(mine) +
                                ", rank 0 " + shape_of(rank0) + "; every rank needs the same data and configuration");
  }
  if (ranks_differing.item<double>() > 0) {
    throw std::invalid_argument("distributed training: " + std::to_string(ranks_differing.item<int64_t>()) +
                                " rank(s) have other data or configuration than rank 0 (their messages say which)");
  }
  // The same seed gives every rank the same initial weights already; rank 0's make it certain.
  std::vector<torch::Tensor> state;
  for (const auto& p : model_->parameters()) state.push_back(p.detach());
  for (const auto& b : model_->buffers()) state.push_back(b.detach());
  group_->broadcast(state);
  batches_->set_shard(group_->rank(), group_->size());
  // A mid-epoch checkpoint holds the running sums of all ranks: rank 0 carries them on.
  if (group_->rank() != 0) running_.narrow(0, kLoss, kSeen - kLoss + 1).zero_();
}

bool Trainer::any_rank(bool here) {
  if (!group_) return here;
  auto votes = torch::full({1}, here ? 1.0 : 0.0, torch::kDouble);
  group_->all_reduce_sum({votes});
  return votes.item<double>() > 0;
}

void Trainer::average_gradients(const std::vector<torch::Tensor>& parameters, double local_samples) {
  // Each rank's loss is the mean over its slice; the mean over the global batch has the
  // gradient sum over ranks of (slice / global batch) x the rank's gradient.
  torch::NoGradGuard no_grad;
  const double share = local_samples / static_cast<double>(config_.batch_size);
  // A parameter without a gradient (not used by this loss) has none on every rank: the
  // ranks run the same graph, so the set of gradients matches, and such a parameter stays
  // untouched as in a single process.
  std::vector<torch::Tensor> gradients;
  for (const auto& p : parameters) {
    if (!p.grad().defined()) continue;
    gradients.push_back(p.grad().mul_(share));
  }
  group_->all_reduce_sum(gradients);
}

StepInfo Trainer::read_progress() {
  auto r = running_.to(torch::kCPU).contiguous();
  if (group_) {
    // The sums of every rank, and how many ranks saw a non-finite loss: all of them stop.
    r = r.clone();
    auto bad_ranks = torch::full({1}, r[kBadStep].item<double>() >= 0 ? 1.0 : 0.0, torch::kDouble);
    group_->all_reduce_sum({r.narrow(0, kLoss, kSeen - kLoss + 1), bad_ranks});
    if (bad_ranks.item<double>() > 0 && r[kBadStep].item<double>() < 0) {
      throw std::runtime_error("non-finite loss on another rank at epoch " + std::to_string(epoch_) +
                               " (before step " + std::to_string(step_) + "); the last good checkpoint is kept");
    }
  }
  read_sums_ = r;
  const double* v = r.data_ptr<double>();
  if (v[kBadStep] >= 0) {
    throw std::runtime_error("non-finite " + std::string(kTermNames[static_cast<int>(v[kBadTerm])]) +
                             " loss at epoch " + std::to_string(epoch_) + ", step " +
                             std::to_string(static_cast<int64_t>(v[kBadStep])) + "; the last good checkpoint is kept");
  }
  StepInfo info;
  info.epoch = epoch_;
  info.epochs = config_.epochs;
  info.step = step_;
  info.steps = steps_;
  const double seen = std::max(v[kSeen], 1.0);
  info.loss = v[kLoss] / seen;
  info.ce = v[kCe] / seen;
  info.proto = v[kProto] / seen;
  info.batch = v[kBatch] / seen;
  info.rrr = v[kRrr] / seen;
  info.proto_rrr = v[kProtoRrr] / seen;
  info.accuracy = v[kCorrect] / seen;
  info.lambda_proto = objective_.lambda_proto;
  info.lambda_batch = objective_.lambda_batch;
  info.lambda_rrr = objective_.lambda_rrr;
  info.lambda_proto_rrr = objective_.lambda_proto_rrr;
  info.fresh = true;
  last_read_ = info;
  return info;
}

bool Trainer::run_epoch(const std::function<void(const StepInfo&)>& on_step, const std::function<bool()>& should_stop) {
  while (step_ < steps_) {
    step(batches_->get(step_));
    // Read every log_every steps, at the epoch's end, and at its first step (so that the
    // first progress line shows this epoch's loss, not zeros or the last epoch's).
    const bool read = step_ == steps_ || step_ % config_.log_every == 0 || step_ == epoch_first_step_ + 1;
    StepInfo info = read ? read_progress() : last_read_;
    if (!read) info.fresh = false;
    info.step = step_;
    info.steps = steps_;
    info.epoch = epoch_;
    info.epochs = config_.epochs;
    info.model = model_.get();
    const double per_step = seconds_since(epoch_start_) / static_cast<double>(step_ - epoch_first_step_);
    info.images_per_second = static_cast<double>(config_.batch_size) / std::max(per_step, 1e-9);
    info.eta_seconds = per_step * static_cast<double>((config_.epochs - epoch_) * steps_ + steps_ - step_);
    if (on_step) on_step(info);
    // Data-parallel ranks stop together: at the first step after any of them was asked to.
    if (step_ < steps_ && any_rank(should_stop && should_stop())) return false;
  }
  return true;
}

TrainingState Trainer::training_state() {
  TORCH_CHECK(step_ < steps_, "Trainer::training_state: the epoch's steps are done; call end_epoch() first");
  read_progress();  // never save what a non-finite step produced
  average_batchnorm_statistics();  // a mid-epoch checkpoint holds every rank's, as an epoch's end does
  // The losses were finite, but the last update may not have been (a loss is computed
  // before its step's update).
  {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> finite;
    for (const auto& p : model_->parameters()) finite.push_back(torch::isfinite(p).all());
    if (!torch::stack(finite).all().item<bool>()) {
      const auto where = step_ == 0 ? "at the end of epoch " + std::to_string(epochs_done())
                                    : "at epoch " + std::to_string(epoch_) + ", step " + std::to_string(step_);
      throw std::runtime_error("non-finite weights " + where +
                               " (the last update diverged); the last good checkpoint is kept");
    }
  }
  nlohmann::json history = nlohmann::json::array();
  for (const auto& m : history_) history.push_back(to_json(m));
  auto sums = sums_json(read_sums_);  // every rank's
  sums["seconds"] = step_ > 0 ? seconds_before_ + seconds_since(epoch_start_) : 0.0;
  const nlohmann::json progress = {{"history", history},
                                   {"sums", sums},
                                   {"best_accuracy", best_accuracy_},
                                   {"train_seconds", train_seconds_},
                                   {"world_size", group_ ? group_->size() : 1}};
  TrainingState state;
  state.step = step_;
  state.progress = progress.dump();
  state.optimizer = optimizer_.get();
  state.rng = core::generator_state();
  if (scaler_) state.scaler_state = scaler_->state();
  return state;
}

EpochMetrics Trainer::end_epoch() {
  TORCH_CHECK(step_ == steps_, "Trainer::end_epoch: the epoch has ", steps_ - step_, " steps left");
  const auto progress = read_progress();
  EpochMetrics m;
  m.epoch = epoch_;
  m.lambda_proto = objective_.lambda_proto;
  m.lambda_batch = objective_.lambda_batch;
  m.lambda_rrr = objective_.lambda_rrr;
  m.lambda_proto_rrr = objective_.lambda_proto_rrr;
  m.seconds = seconds_before_ + seconds_since(epoch_start_);
  m.train_loss = progress.loss;
  m.train_ce = progress.ce;
  m.train_proto = progress.proto;
  m.train_batch = progress.batch;
  m.train_rrr = progress.rrr;
  m.train_proto_rrr = progress.proto_rrr;
  m.train_accuracy = progress.accuracy;
  average_batchnorm_statistics();
  m.test = evaluate_test_set();
  train_seconds_ += m.seconds;
  history_.push_back(m);
  last_best_ = m.test.accuracy > best_accuracy_;
  if (last_best_) best_accuracy_ = m.test.accuracy;
  ++epoch_;
  step_ = 0;
  if (!finished()) begin_epoch();
  return m;
}

void Trainer::average_batchnorm_statistics() {
  // Running statistics are only read in eval mode, so averaging them during training changes
  // no step; and since their updates are linear, the average at an epoch's end is the same
  // whether or not they were averaged before. Frozen, they are equal on every rank already.
  if (!group_ || config_.freeze_batchnorm) return;
  std::vector<torch::Tensor> statistics;
  for (const auto& b : model_->buffers()) {
    if (b.is_floating_point()) statistics.push_back(b.detach());
  }
  group_->all_reduce_sum(statistics);
  for (auto& s : statistics) s.div_(static_cast<double>(group_->size()));
}

eval::EvalMetrics Trainer::evaluate_test_set() {
  const auto& test = splits_->test;
  if (!group_) return eval::evaluate(*model_, test, norm_, prototypes_, 256, config_.cam_method);
  // Each rank evaluates its share of the test set; the means are combined by their counts.
  const int64_t n = test.size(), r = group_->rank(), w = group_->size();
  const int64_t begin = n * r / w, end = n * (r + 1) / w;
  const auto mine = eval::evaluate(*model_, test.subset(torch::arange(begin, end, torch::kInt64)), norm_, prototypes_,
                                   256, config_.cam_method);
  const std::vector<double> means = {mine.loss,     mine.accuracy,     mine.proto_l1,   mine.proto_l2,
                                     mine.proto_ssim, mine.object_share, mine.decoy_share};
  // [count x mean, count where the mean is available] per metric.
  auto totals = torch::zeros({2, static_cast<int64_t>(means.size())}, torch::kDouble);
  for (size_t i = 0; i < means.size(); ++i) {
    if (!eval::available(means[i]) || mine.count == 0) continue;
    totals[0][static_cast<int64_t>(i)] = static_cast<double>(mine.count) * means[i];
    totals[1][static_cast<int64_t>(i)] = static_cast<double>(mine.count);
  }
  group_->all_reduce_sum({totals});
  const auto mean = [&](int64_t i) {
    const double count = totals[1][i].item<double>();
    return count > 0 ? totals[0][i].item<double>() / count : eval::kNotAvailable;
  };
  eval::EvalMetrics m;
  m.count = n;
  m.loss = mean(0);
  // The count of correct answers is a whole number: rounded, the accuracy is one process's.
  m.accuracy = n > 0 ? std::round(totals[0][1].item<double>()) / static_cast<double>(n) : 0.0;
  m.proto_l1 = mean(2);
  m.proto_l2 = mean(3);
  m.proto_ssim = mean(4);
  m.object_share = mean(5);
  m.decoy_share = mean(6);
  if (n == 0) m.loss = m.proto_l1 = m.proto_l2 = m.proto_ssim = 0.0;
  return m;
}

namespace {

// Drives a trainer through its remaining epochs, with `files` as the sink of its outputs
// (null on the ranks other than 0 of a data-parallel run: they train, but write nothing).
TrainResult drive(Trainer& trainer, RunDirectory* files, const TrainCallbacks& callbacks,
                  const std::vector<std::string>& notices = {}) {
  TrainResult result;
  result.config = trainer.config();
  result.device = core::device_name(trainer.device());
  if (files) {
    result.run_dir = files->path();
    result.checkpoint = files->last_checkpoint();
    result.best_checkpoint = files->best_checkpoint();
    if (callbacks.on_start) callbacks.on_start(files->path());
  }
  if (callbacks.on_notice) {
    for (const auto& note : trainer.notes()) callbacks.on_notice(note);
    for (const auto& note : notices) callbacks.on_notice(note);
  }
  const auto save = [&](bool best) {
    if (files) {
      files->save_checkpoint(trainer, best);
    } else {
      (void)trainer.training_state();  // collective: the sums of every rank go into rank 0's
    }
    // The other ranks go on (or exit) once rank 0's checkpoint is on disk, so that a launcher
    // which stops every rank when one exits cannot cut the checkpoint short.
    if (trainer.process_group()) trainer.process_group()->barrier();
  };
  const auto stop_requested = [&] { return callbacks.should_stop && callbacks.should_stop(); };
  const auto finish = [&](TrainResult& r) {
    r.history = trainer.history();
    r.train_seconds = trainer.train_seconds();
    return r;
  };
  while (!trainer.finished()) {
    if (!trainer.run_epoch(callbacks.on_step, stop_requested)) {
      save(/*best=*/false);
      result.interrupted = true;
      result.stopped_epoch = trainer.epoch();
      result.stopped_step = trainer.step_in_epoch();
      return finish(result);
    }
    const auto m = trainer.end_epoch();
    save(trainer.last_epoch_was_best());
    if (files) files->write_metrics(trainer.history());
    if (callbacks.on_epoch) callbacks.on_epoch(m);
    if (!trainer.finished() && trainer.any_rank(stop_requested())) {
      result.interrupted = true;
      result.stopped_epoch = trainer.epoch();
      return finish(result);
    }
  }
  if (callbacks.on_final_outputs) callbacks.on_final_outputs();
  if (files && trainer.config().report) {
    files->write_final(trainer, callbacks.on_final_phase);
    result.report = files->report();
  }
  return finish(result);
}

bool writes_files(const std::shared_ptr<core::ProcessGroup>& group) { return !group || group->rank() == 0; }

// Runs `work` on rank 0 (the only rank of a single process), then every rank learns whether
// it failed: rank 0 throws its error, the others one that points to it, instead of waiting
// for rank 0 in their next collective.
void on_rank_0(Trainer& trainer, const std::function<void()>& work) {
  std::exception_ptr failure;
  if (writes_files(trainer.process_group())) {
    try {
      work();
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (!trainer.any_rank(failure != nullptr)) return;
  if (failure) std::rethrow_exception(failure);
  throw std::runtime_error("rank " + std::to_string(trainer.process_group()->rank()) +
                           ": rank 0 could not write the run directory (its error says why)");
}

}  // namespace

TrainResult train(const TrainConfig& config, const TrainCallbacks& callbacks,
                  std::shared_ptr<core::ProcessGroup> group) {
  config.validate();
  const auto device = core::resolve_device(config.device);
  core::require_supported(config.precision, device);
  // Data, model and target layer are checked before the run directory exists, so that a
  // failed start leaves no directory behind.
  const auto splits = load_dataset(config);
  TrainConfig recorded = config;
  recorded.image_size = splits.train.height();  // the size used, also when asked for by 0
  Trainer trainer(recorded, splits, device);
  trainer.use_process_group(group);
  std::optional<RunDirectory> files;
  on_rank_0(trainer, [&] {
    auto provenance = core::provenance(device);
    if (group) provenance["world_size"] = group->size();
    files.emplace(RunDirectory::create(recorded, provenance));
  });
  return drive(trainer, files ? &*files : nullptr, callbacks);
}

TrainResult resume(const std::string& run_dir, const TrainCallbacks& callbacks, const ResumeOptions& options) {
  const bool writer = writes_files(options.group);
  auto files = RunDirectory::open(run_dir);
  if (writer) files.remove_stale_temporaries();
  const auto path = files.last_checkpoint();
  const auto ck = load_checkpoint(path);
  TrainConfig config = ck.config;
  if (!options.device.empty()) config.device = options.device;
  if (options.workers >= 0) config.workers = options.workers;
  const bool extended = options.epochs > 0 && options.epochs != config.epochs;
  if (options.epochs > 0) {
    // A mid-epoch checkpoint has started epoch ck.epoch + 1: that one must be kept.
    const int64_t least = ck.step > 0 ? ck.epoch + 1 : std::max<int64_t>(ck.epoch, 1);
    if (options.epochs < least) {
      throw std::invalid_argument("--epochs " + std::to_string(options.epochs) + ": " + run_dir + " has trained " +
                                  std::to_string(ck.epoch) + (ck.step > 0 ? " epochs and part of the next" : " epochs") +
                                  "; a resumed run can only be extended (--epochs >= " + std::to_string(least) + ")");
    }
    config.epochs = options.epochs;
  }
  config.validate();
  const bool finals_done = !config.report || fs::exists(files.report());
  if (ck.epoch >= config.epochs && finals_done) {
    throw std::runtime_error(run_dir + ": the run is already complete (" + std::to_string(ck.epoch) + " of " +
                             std::to_string(config.epochs) + " epochs" + (config.report ? ", report written" : "") +
                             "); to train longer: batchcam train --resume " + run_dir + " --epochs N (N > " +
                             std::to_string(ck.epoch) + ")");
  }
  const auto device = core::resolve_device(config.device);
  auto checkpoint = ck;
  checkpoint.config = config;
  const auto splits = load_dataset(config);
  Trainer trainer(checkpoint, path, splits, device);
  trainer.use_process_group(options.group);
  std::vector<std::string> notices;
  const int64_t world = options.group ? options.group->size() : 1;
  const int64_t before = nlohmann::json::parse(ck.progress).value("world_size", int64_t{1});
  if (world != before) {
    notices.push_back("continued on " + std::to_string(world) + " process(es); trained on " + std::to_string(before) +
                      " so far: the same batches, but BatchNorm's per-rank statistics and float rounding differ");
  }
  on_rank_0(trainer, [&] {
    // A stop between the last.pt and best.pt commits leaves best.pt an epoch behind.
    if (trainer.last_epoch_was_best()) files.copy_last_to_best();
    if (extended) files.write_config(config, core::provenance(device));
  });
  return drive(trainer, writer ? &files : nullptr, callbacks, notices);
}

}  // namespace batchcam::train
