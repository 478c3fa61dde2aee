#include "batchcam/train/checkpoint.h"

#include "batchcam/io/sha256.h"
#include "batchcam/io/file.h"
#include "batchcam/models/torchscript.h"

#include <torch/torch.h>
#include <torch/version.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>

namespace batchcam::train {

namespace {
// The file (format 3): a short text header, then the LibTorch archive's bytes (the payload):
//   batchcam-checkpoint\n format 3\n sha256 <64 hex digits>\n size <bytes>\n \n <payload>
// The payload is verified before LibTorch parses it: its TorchScript reader can crash on
// damaged bytes (a fuzzer found a segfault in its type parser), so damage must be refused
// first. Files of batchcam 0.1 (format 2: an outer LibTorch archive holding the payload and
// its SHA-256; format 1: the bare archive) still load, without that protection.
constexpr const char* kFormat = "batchcam-checkpoint-v1";  // the archive's "format" entry
constexpr const char* kSealedFormat = "batchcam-checkpoint-v2";
const std::string kMagic = "batchcam-checkpoint\n";

std::string serialize(torch::serialize::OutputArchive& archive) {
  std::string bytes;
  archive.save_to([&bytes](const void* data, size_t size) {
    bytes.append(static_cast<const char*>(data), size);
    return size;
  });
  return bytes;
}

std::string seal(const std::string& payload) {
  return kMagic + "format 3\nsha256 " + io::sha256_bytes(payload.data(), payload.size()) + "\nsize " +
         std::to_string(payload.size()) + "\n\n" + payload;
}

// Where the verified payload of a format-3 file starts; throws std::runtime_error naming
// the path when the header is unreadable or the content does not match it.
size_t unseal(const std::string& path, const std::string& file) {
  const auto damaged = [&](const std::string& what) {
    return std::runtime_error(path + ": damaged checkpoint (" + what + "); use another checkpoint, e.g. best.pt beside it");
  };
  std::istringstream header(file.substr(kMagic.size(), 128));
  std::string word;
  int format = 0;
  if (!(header >> word >> format) || word != "format") throw damaged("unreadable header");
  if (format > 3) {
    throw std::runtime_error(path + ": checkpoint format " + std::to_string(format) +
                             " is newer than this batchcam reads (3); use a newer batchcam");
  }
  std::string sum_word, sum, size_word;
  unsigned long long size = 0;
  if (format != 3 || !(header >> sum_word >> sum >> size_word >> size) || sum_word != "sha256" ||
      size_word != "size" || sum.size() != 64) {
    throw damaged("unreadable header");
  }
  const auto body = file.find("\n\n", kMagic.size());
  if (body == std::string::npos) throw damaged("unreadable header");
  const size_t start = body + 2;
  if (file.size() - start != size) {
    throw damaged("holds " + std::to_string(file.size() - start) + " bytes of content, its header says " +
                  std::to_string(size) + "; truncated?");
  }
  if (io::sha256_bytes(file.data() + start, file.size() - start) != sum) {
    throw damaged("its content does not match its SHA-256");
  }
  return start;
}

// The checkpoint's archive (verified for format 3 and 2) with its tensors on `device`.
// Throws std::runtime_error naming the path.
torch::serialize::InputArchive open_archive(const std::string& path, torch::Device device) {
  if (!std::filesystem::is_regular_file(path)) throw std::runtime_error(path + ": no such checkpoint file");
  const std::string file = io::read_file(path);
  torch::serialize::InputArchive archive;
  if (file.compare(0, kMagic.size(), kMagic) == 0) {
    const size_t start = unseal(path, file);
    try {
      archive.load_from(file.data() + start, file.size() - start, device);
    } catch (const std::exception&) {
      throw std::runtime_error(path + ": not a readable checkpoint (corrupt payload)");
    }
    return archive;
  }
  // batchcam 0.1: a LibTorch archive (format 2 or 1).
  c10::IValue format;
  try {
    // Onto the CPU: a GPU run's optimiser state was saved on its device, and this machine
    // may have none.
    archive.load_from(file.data(), file.size(), torch::Device(torch::kCPU));
  } catch (const std::exception&) {
    throw std::runtime_error(path + ": not a readable checkpoint (truncated or corrupt archive)");
  }
  if (!archive.try_read("format", format) || !format.isString() ||
      (format.toStringRef() != kSealedFormat && format.toStringRef() != kFormat)) {
    throw std::runtime_error(path + ": not a batchcam checkpoint (expected a file starting with 'batchcam-checkpoint')");
  }
  if (format.toStringRef() == kFormat) {
    if (device.is_cpu()) return archive;
    torch::serialize::InputArchive on_device;
    on_device.load_from(file.data(), file.size(), device);
    return on_device;
  }
  c10::IValue sum;
  torch::Tensor payload;
  try {
    archive.read("sha256", sum);
    archive.read("payload", payload);
  } catch (const std::exception&) {
    throw std::runtime_error(path + ": damaged checkpoint (payload or checksum missing)");
  }
  payload = payload.contiguous();
  if (!sum.isString() || payload.scalar_type() != torch::kUInt8 ||
      io::sha256_bytes(payload.data_ptr(), static_cast<size_t>(payload.numel())) != sum.toStringRef()) {
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

torch::Tensor vec_tensor(const std::vector<double>& v) { return torch::tensor(v, torch::kDouble); }
std::vector<double> tensor_vec(const torch::Tensor& t) {
  auto c = t.to(torch::kDouble).contiguous();
  return {c.data_ptr<double>(), c.data_ptr<double>() + c.numel()};
}

nlohmann::json spec_json(const models::ModelSpec& s) {
  nlohmann::json j = {{"name", s.name},         {"in_channels", s.in_channels},   {"num_classes", s.num_classes},
                      {"image_size", s.image_size}, {"target_layer", s.target_layer}};
  if (!s.script_sha256.empty()) j["script_sha256"] = s.script_sha256;
  if (!s.class_names.empty()) j["class_names"] = s.class_names;
  return j;
}
}  // namespace

void export_state_dict(models::CamModel& model, const std::string& path) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& p : model.named_parameters()) dict.insert(p.key(), p.value().detach().cpu().contiguous());
  for (const auto& b : model.named_buffers()) dict.insert(b.key(), b.value().detach().cpu().contiguous());
  const auto bytes = torch::pickle_save(c10::IValue(dict));
  io::write_file_atomic(path, std::string(bytes.begin(), bytes.end()));
}

namespace {
std::string shape_text(const torch::Tensor& t) {
  std::string text = "[";
  for (int64_t d = 0; d < t.dim(); ++d) text += (d ? ", " : "") + std::to_string(t.size(d));
  return text + "]";
}

// "a, b, c and 4 more"
std::string first_few(const std::vector<std::string>& items) {
  std::string text;
  for (size_t i = 0; i < items.size() && i < 5; ++i) text += (i ? ", " : "") + items[i];
  if (items.size() > 5) text += " and " + std::to_string(items.size() - 5) + " more";
  return text;
}
}  // namespace

std::vector<std::string> load_initial_weights(models::CamModel& model, const std::string& path) {
  const std::string contents = io::read_file(path);
  const std::vector<char> bytes(contents.begin(), contents.end());
  c10::IValue loaded;
  try {
    loaded = torch::pickle_load(bytes);
  } catch (const std::exception& e) {
    // LibTorch 1.13 cannot read the OrderedDict that model.state_dict() returns (its metadata).
    const std::string what = e.what();
    throw std::runtime_error(path + ": LibTorch " + TORCH_VERSION + " cannot read it (" +
                             what.substr(0, what.find('\n')) +
                             "); save the weights as a plain dict: torch.save(dict(model.state_dict()), FILE)");
  }
  if (!loaded.isGenericDict()) throw std::runtime_error(path + ": expected a dict name -> tensor (model.state_dict())");
  std::map<std::string, torch::Tensor> file;
  for (const auto& item : loaded.toGenericDict()) {
    if (!item.key().isString() || !item.value().isTensor()) {
      throw std::runtime_error(path + ": expected a dict name -> tensor (model.state_dict())");
    }
    file[item.key().toStringRef()] = item.value().toTensor();
  }
  // The model's tensors in registration order: parameters, then buffers.
  std::vector<std::pair<std::string, torch::Tensor>> wanted;
  for (const auto& p : model.named_parameters()) wanted.emplace_back(p.key(), p.value());
  const size_t parameter_count = wanted.size();
  for (const auto& b : model.named_buffers()) wanted.emplace_back(b.key(), b.value());
  size_t first_conv = wanted.size();
  for (size_t i = 0; i < parameter_count && first_conv == wanted.size(); ++i) {
    if (wanted[i].second.dim() == 4) first_conv = i;
  }
  std::vector<std::string> missing, misshaped, notes, skipped;
  std::set<std::string> used;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;  // (into, from), done when all are checked
  for (size_t i = 0; i < wanted.size(); ++i) {
    const auto& [name, tensor] = wanted[i];
    const auto it = file.find(name);
    if (it == file.end()) {
      missing.push_back(name);
      continue;
    }
    used.insert(name);
    const auto& from = it->second;
    if (from.sizes() == tensor.sizes()) {
      copies.emplace_back(tensor, from);
    } else if (i + 2 >= parameter_count && i < parameter_count && from.dim() == tensor.dim() &&
               from.dim() >= 1 && from.sizes().slice(1) == tensor.sizes().slice(1)) {
      skipped.push_back(name);  // the classifier of another class count
    } else if (i == first_conv && from.dim() == 4 && from.size(1) == 3 && tensor.size(1) == 1 &&
               from.size(0) == tensor.size(0) && from.size(2) == tensor.size(2) && from.size(3) == tensor.size(3)) {
      copies.emplace_back(tensor, from.sum(1, /*keepdim=*/true));
      notes.push_back(name + ": the RGB weights " + shape_text(from) + " summed for 1-channel input");
    } else {
      misshaped.push_back(name + " " + shape_text(from) + " (the model has " + shape_text(tensor) + ")");
    }
  }
  std::vector<std::string> unexpected;
  for (const auto& [name, tensor] : file) {
    if (!used.count(name)) unexpected.push_back(name);
  }
  if (!missing.empty() || !unexpected.empty() || !misshaped.empty()) {
    std::string problems;
    const auto add = [&](const std::string& what, const std::vector<std::string>& keys) {
      if (!keys.empty()) problems += (problems.empty() ? "" : "; ") + what + " " + first_few(keys);
    };
    add("missing", missing);
    add("unexpected", unexpected);
    add("mis-shaped", misshaped);
    throw std::runtime_error(path + ": does not fit model " + model.name() + ": " + problems);
  }
  if (!skipped.empty()) {
    notes.push_back(first_few(skipped) + ": kept their initialisation (the file's classifier has " +
                    std::to_string(file.at(skipped.front()).size(0)) + " classes, the model " +
                    std::to_string(model.num_classes()) + ")");
  }
  torch::NoGradGuard no_grad;
  for (auto& [into, from] : copies) into.copy_(from);
  return notes;
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
  io::write_file_atomic(path, seal(serialize(archive)));
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
    const auto config_json = nlohmann::json::parse(config.toStringRef());
    ck.config = config_from_json(config_json);
    // Saved before the CAM method could be chosen: trained and evaluated with Grad-CAM.
    if (!config_json.contains("cam_method")) ck.config.cam_method = cam::CamMethod::grad_cam;
    const auto s = nlohmann::json::parse(spec.toStringRef());
    ck.spec.name = s.at("name").get<std::string>();
    ck.spec.in_channels = s.at("in_channels").get<int64_t>();
    ck.spec.num_classes = s.at("num_classes").get<int64_t>();
    ck.spec.image_size = s.at("image_size").get<int64_t>();
    ck.spec.target_layer = s.at("target_layer").get<std::string>();
    ck.spec.script_sha256 = s.value("script_sha256", "");
    ck.spec.class_names = s.value("class_names", std::vector<std::string>());
    // The size the model was built for; batchcam 0.1 recorded 28 in the configuration of
    // datasets whose size it did not change (CIFAR-10's 32).
    ck.config.image_size = ck.spec.image_size;
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
    if (!ck.spec.script_sha256.empty()) {
      // The weights belong to the module of that file as it was: a changed file is refused.
      const auto file = models::torchscript_file(ck.spec.name);
      if (!std::filesystem::is_regular_file(file)) {
        throw std::runtime_error("its TorchScript model " + file + " is missing (SHA-256 " + ck.spec.script_sha256 + ")");
      }
      const auto sum = io::sha256_file(file);
      if (sum != ck.spec.script_sha256) {
        throw std::runtime_error("its TorchScript model " + file + " has changed since (SHA-256 " + sum +
                                 ", the checkpoint's " + ck.spec.script_sha256 + ")");
      }
    }
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
