#include "batchcam/train/run_directory.h"

#include "batchcam/eval/pictures.h"
#include "batchcam/eval/report.h"
#include "batchcam/io/file.h"
#include "batchcam/io/png.h"
#include "batchcam/train/checkpoint.h"
#include "batchcam/train/trainer.h"

#include <torch/torch.h>

#include <signal.h>

#include <cerrno>
#include <ctime>
#include <iterator>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace batchcam::train {

namespace fs = std::filesystem;

namespace {
std::string default_run_name(const TrainConfig& c) {
  const std::time_t now = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", std::localtime(&now));
  return c.dataset + "-" + c.model + "-" + stamp;
}
}  // namespace

RunDirectory RunDirectory::create(const TrainConfig& c, const nlohmann::json& provenance) {
  const std::string name = c.run_name.empty() ? default_run_name(c) : c.run_name;
  fs::path dir = fs::path(c.out_dir) / name;
  if (c.run_name.empty()) {
    for (int k = 2; fs::exists(dir); ++k) dir = fs::path(c.out_dir) / (name + "-" + std::to_string(k));
  } else if (fs::exists(dir / "metrics.jsonl") || fs::exists(dir / "last.pt") || fs::exists(dir / "best.pt")) {
    throw std::runtime_error(dir.string() +
                             ": run directory already holds a run; choose another run name, or continue it with --resume");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir.string() + ": cannot create run directory (" + ec.message() + ")");
  const auto probe = dir / ".write-test";
  {
    std::ofstream out(probe);
    out << std::string(4096, '\0');
    out.flush();
    if (!out) throw std::runtime_error(dir.string() + ": run directory is not writable (or the disk is full)");
  }
  fs::remove(probe, ec);
  RunDirectory run(dir.string());
  run.write_config(c, provenance);
  return run;
}

RunDirectory RunDirectory::open(const std::string& dir) {
  if (!fs::is_directory(dir)) throw std::runtime_error(dir + ": no such run directory");
  RunDirectory run(dir);
  if (!fs::exists(run.last_checkpoint())) {
    throw std::runtime_error(dir + ": no last.pt to resume from (the run stopped before its first checkpoint)");
  }
  return run;
}

std::string RunDirectory::last_checkpoint() const { return (fs::path(path_) / "last.pt").string(); }
std::string RunDirectory::best_checkpoint() const { return (fs::path(path_) / "best.pt").string(); }
std::string RunDirectory::report() const { return (fs::path(path_) / "report.html").string(); }

void RunDirectory::save_checkpoint(Trainer& trainer, bool best) {
  const auto state = trainer.training_state();
  const auto save = [&](const std::string& path) {
    train::save_checkpoint(path, trainer.model(), trainer.spec(), trainer.config(), trainer.epochs_done(),
                           trainer.normalization(), trainer.prototypes(), state);
  };
  save(last_checkpoint());
  if (best) save(best_checkpoint());
}

void RunDirectory::copy_last_to_best() {
  io::write_file_atomic(best_checkpoint(), io::read_file(last_checkpoint()));
}

void RunDirectory::remove_stale_temporaries() {
  for (const auto& entry : fs::directory_iterator(path_)) {
    const auto name = entry.path().filename().string();
    const auto at = name.rfind(".tmp.");
    if (at == std::string::npos || !entry.is_regular_file()) continue;
    const auto digits = name.substr(at + 5);
    if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    const auto pid = static_cast<pid_t>(std::stol(digits));
    if (::kill(pid, 0) != 0 && errno == ESRCH) {
      std::error_code ec;
      fs::remove(entry.path(), ec);
    }
  }
}

void RunDirectory::write_metrics(const std::vector<EpochMetrics>& history) {
  std::string lines;
  for (const auto& m : history) lines += to_json(m).dump() + "\n";
  io::write_file_atomic((fs::path(path_) / "metrics.jsonl").string(), lines);
}

void RunDirectory::write_config(const TrainConfig& config, const nlohmann::json& provenance) {
  auto j = to_json(config);
  j[kProvenanceKey] = provenance;
  io::write_file_atomic((fs::path(path_) / "config.json").string(), j.dump(2) + "\n");
}

void RunDirectory::write_final(Trainer& trainer, const std::function<void(const std::string&)>& on_phase) {
  const auto& test = trainer.splits().test;
  if (on_phase) on_phase("pictures (prototypes.png, samples.png)");
  io::write_png((fs::path(path_) / "prototypes.png").string(), eval::prototype_strip(trainer.prototypes().cpu()));
  io::write_png((fs::path(path_) / "samples.png").string(),
                eval::cam_examples(trainer.model(), test, trainer.normalization(), 0, trainer.config().cam_method));
  std::vector<nlohmann::json> history;
  for (const auto& m : trainer.history()) history.push_back(to_json(m));
  eval::EvalOptions options;
  options.on_phase = on_phase;
  options.method = trainer.config().cam_method;
  eval::write_run_report(path_, trainer.model(), test, trainer.normalization(), trainer.prototypes(),
                         to_json(trainer.config()), history,
                         eval::evaluation_origin(last_checkpoint(), trainer.epochs_done(), trainer.device()), options);
}

}  // namespace batchcam::train
