#include "batchcam/train/checkpoint.h"

#include "batchcam/data/datasets.h"

#include <torch/torch.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace batchcam::train {

namespace {
// v2: an outer archive holding the v1 archive's bytes ("payload") and their SHA-256, so a
// damaged file is refused rather than loaded with other weights. v1 files still load.
constexpr const char* kFormat = "batchcam-checkpoint-v1";
constexpr const char* kSealedFormat = "batchcam-checkpoint-v2";

std::string serialize(torch::serialize::OutputArchive& archive) {
  std::string bytes;
  archive.save_to([&bytes](const void* data, size_t size) {
    bytes.append(static_cast<const char*>(data), size);
    return size;
  });
  return bytes;
}

// The checkpoint's archive (the payload of a v2 file, verified; a v1 file as it is) with
// its tensors on `device`. Throws std::runtime_error naming the path.
torch::serialize::InputArchive open_archive(const std::string& path, torch::Device device) {
  if (!std::filesystem::is_regular_file(path)) throw std::runtime_error(path + ": no such checkpoint file");
  torch::serialize::InputArchive outer;
  c10::IValue format;
  try {
    // Onto the CPU: a GPU run's optimiser state was saved on its device, and this machine
    // may have none.
    outer.load_from(path, torch::Device(torch::kCPU));
  } catch (const std::exception&) {
    throw std::runtime_error(path + ": not a readable checkpoint (truncated or corrupt archive)");
  }
  if (!outer.try_read("format", format) || !format.isString() ||
      (format.toStringRef() != kSealedFormat && format.toStringRef() != kFormat)) {
    throw std::runtime_error(path + ": not a batchcam checkpoint (expected format " + kSealedFormat + ")");
  }
  if (format.toStringRef() == kFormat) {
    if (device.is_cpu()) return outer;
    torch::serialize::InputArchive on_device;
    on_device.load_from(path, device);
    return on_device;
  }
  c10::IValue sum;
  torch::Tensor payload;
  try {
    outer.read("sha256", sum);
    outer.read("payload", payload);
  } catch (const std::exception&) {
    throw std::runtime_error(path + ": damaged checkpoint (payload or checksum missing)");
  }
  payload = payload.contiguous();
  if (!sum.isString() || payload.scalar_type() != torch::kUInt8 ||
      data::sha256_bytes(payload.data_ptr(), static_cast<size_t>(payload.numel())) != sum.toStringRef()) {
    throw std::runtime_error(path + ": damaged checkpoint (its content does not match its SHA-256); use another "
                                    "checkpoint, e.g. best.pt beside it");
  }
  torch::serialize::InputArchive inner;
  try {
    inner.load_from(static_cast<const char*>(payload.data_ptr()), static_cast<size_t>(payload.numel()), device);
  } catch (const std::exception&) {
    throw std::runtime_error(path + ": not a readable checkpoint (corrupt payload)");
  }
  return inner;
}

void fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// Moves a finished temporary file over `path` and makes the rename durable.
void commit_temp(const std::string& tmp, const std::string& path) {
  fsync_path(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot write (" + err + ")");
  }
  const auto dir = std::filesystem::path(path).parent_path();
  fsync_path(dir.empty() ? "." : dir.string());
}

std::string temp_name(const std::string& path) { return path + ".tmp." + std::to_string(::getpid()); }

torch::Tensor vec_tensor(const std::vector<double>& v) { return torch::tensor(v, torch::kDouble); }
std::vector<double> tensor_vec(const torch::Tensor& t) {
  auto c = t.to(torch::kDouble).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

nlohmann::json spec_json(const models::ModelSpec& s) {
  return {{"name", s.name}, {"in_channels", s.in_channels}, {"num_classes", s.num_classes},
          {"image_size", s.image_size}, {"target_layer", s.target_layer}};
}
}  // namespace

namespace {
// The file a path names: symbolic links followed (even to a target that does not exist yet).
std::string resolve_links(const std::string& requested) {
  namespace fs = std::filesystem;
  fs::path path = requested;
  for (int hops = 0; hops < 40 && fs::is_symlink(fs::symlink_status(path)); ++hops) {
    const auto target = fs::read_symlink(path);
    path = target.is_absolute() ? target : path.parent_path() / target;
  }
  return path.string();
}
}  // namespace

void write_file_atomic(const std::string& requested, const std::string& content) {
  // A link keeps pointing where it did: its target is replaced. A FIFO or a device is
  // written directly: renaming a file over it would replace the node itself.
  const auto path = resolve_links(requested);
  const auto status = std::filesystem::status(path);
  if (std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
    std::ofstream out(path, std::ios::binary);
    out << content;
    out.close();
    if (!out) throw std::runtime_error(requested + ": cannot write (" + std::strerror(errno) + ")");
    return;
  }
  const auto tmp = temp_name(path);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << content;
    out.close();
    if (!out) {
      const std::string err = std::strerror(errno);
      std::remove(tmp.c_str());
      throw std::runtime_error(path + ": cannot write (" + err + ")");
    }
  }
  commit_temp(tmp, path);
}

void export_state_dict(models::CamModel& model, const std::string& path) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& p : model.named_parameters()) dict.insert(p.key(), p.value().detach().cpu().contiguous());
  for (const auto& b : model.named_buffers()) dict.insert(b.key(), b.value().detach().cpu().contiguous());
  const auto bytes = torch::pickle_save(c10::IValue(dict));
  write_file_atomic(path, std::string(bytes.begin(), bytes.end()));
}

void save_checkpoint(const std::string& path, models::CamModel& model, const models::ModelSpec& spec,
                     const TrainConfig& config, int64_t epoch, const data::Normalization& normalization,
                     const torch::Tensor& prototypes, const TrainingState& state) {
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kFormat)));
  archive.write("config", c10::IValue(to_json(config).dump()));
  archive.write("spec", c10::IValue(spec_json(spec).dump()));
  archive.write("epoch", c10::IValue(epoch));
  archive.write("step", c10::IValue(state.step));
  archive.write("progress", c10::IValue(state.progress));
  if (state.rng.cpu.defined()) archive.write("rng_state", state.rng.cpu);
  if (state.rng.cuda.defined()) archive.write("cuda_rng_state", state.rng.cuda);
  if (state.scaler_state.defined()) archive.write("scaler_state", state.scaler_state);
  if (state.optimizer) {
    torch::serialize::OutputArchive optimizer_archive;
    state.optimizer->save(optimizer_archive);
    archive.write("optimizer", optimizer_archive);
  }
  archive.write("norm_mean", vec_tensor(normalization.mean));
  archive.write("norm_std", vec_tensor(normalization.std));
  if (prototypes.defined()) archive.write("prototypes", prototypes.detach().cpu());
  for (const auto& p : model.named_parameters()) archive.write("model." + p.key(), p.value().detach().cpu());
  for (const auto& b : model.named_buffers()) archive.write("model." + b.key(), b.value().detach().cpu(), true);
  // Serialised in memory, then written by write_file_atomic: LibTorch's own file writer
  // throws again from its destructor when a write fails (disk full, file-size limit), which
  // terminates the process instead of reporting the error.
  auto payload = serialize(archive);
  torch::serialize::OutputArchive sealed;
  sealed.write("format", c10::IValue(std::string(kSealedFormat)));
  sealed.write("sha256", c10::IValue(data::sha256_bytes(payload.data(), payload.size())));
  sealed.write("payload",
               torch::from_blob(payload.data(), {static_cast<int64_t>(payload.size())}, torch::kUInt8));
  write_file_atomic(path, serialize(sealed));
}

Checkpoint load_checkpoint(const std::string& path, torch::Device device) {
  auto archive = open_archive(path, torch::kCPU);
  c10::IValue format;
  if (!archive.try_read("format", format) || !format.isString() || format.toStringRef() != kFormat) {
    throw std::runtime_error(path + ": not a batchcam checkpoint (expected format " + kFormat + " inside)");
  }
  Checkpoint ck;
  try {
    c10::IValue config, spec, epoch;
    archive.read("config", config);
    archive.read("spec", spec);
    archive.read("epoch", epoch);
    ck.config = config_from_json(nlohmann::json::parse(config.toStringRef()));
    const auto s = nlohmann::json::parse(spec.toStringRef());
    ck.spec.name = s.at("name").get<std::string>();
    ck.spec.in_channels = s.at("in_channels").get<int64_t>();
    ck.spec.num_classes = s.at("num_classes").get<int64_t>();
    ck.spec.image_size = s.at("image_size").get<int64_t>();
    ck.spec.target_layer = s.at("target_layer").get<std::string>();
    ck.epoch = epoch.toInt();
    c10::IValue step, progress;
    if (archive.try_read("step", step)) ck.step = step.toInt();
    if (archive.try_read("progress", progress)) ck.progress = progress.toStringRef();
    torch::Tensor rng, cuda_rng, scaler;
    if (archive.try_read("rng_state", rng)) ck.rng.cpu = rng;
    if (archive.try_read("cuda_rng_state", cuda_rng)) ck.rng.cuda = cuda_rng;
    if (archive.try_read("scaler_state", scaler)) ck.scaler_state = scaler;
    torch::serialize::InputArchive optimizer_archive;
    ck.has_optimizer = archive.try_read("optimizer", optimizer_archive);
    torch::Tensor mean, stdev, protos;
    archive.read("norm_mean", mean);
    archive.read("norm_std", stdev);
    ck.normalization.mean = tensor_vec(mean);
    ck.normalization.std = tensor_vec(stdev);
    if (archive.try_read("prototypes", protos)) ck.prototypes = protos;
    ck.model = models::make_model(ck.spec);
    torch::NoGradGuard no_grad;
    const auto restore = [&](const torch::OrderedDict<std::string, torch::Tensor>& tensors, bool is_buffer) {
      for (const auto& item : tensors) {
        torch::Tensor t;
        archive.read("model." + item.key(), t, is_buffer);
        TORCH_CHECK(t.sizes() == item.value().sizes(), "shape of ", item.key(), " is ", t.sizes(),
                    ", model expects ", item.value().sizes());
        item.value().copy_(t);
      }
    };
    restore(ck.model->named_parameters(), false);
    restore(ck.model->named_buffers(), true);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    msg = msg.substr(0, msg.find('\n'));
    throw std::runtime_error(path + ": invalid checkpoint (" + msg + ")");
  }
  ck.model->eval();
  ck.model->to(device);
  return ck;
}

void restore_optimizer(const std::string& path, torch::optim::Optimizer& optimizer, torch::Device device) {
  auto archive = open_archive(path, device);
  try {
    torch::serialize::InputArchive optimizer_archive;
    archive.read("optimizer", optimizer_archive);
    optimizer.load(optimizer_archive);
  } catch (const std::exception& e) {
    std::string msg = e.what();
    throw std::runtime_error(path + ": cannot restore the optimiser state (" + msg.substr(0, msg.find('\n')) + ")");
  }
}

}  // namespace batchcam::train
