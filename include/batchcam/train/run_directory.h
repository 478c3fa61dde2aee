#pragma once
// The files of a training run: the run directory with config.json, metrics.jsonl, last.pt
// and best.pt, the pictures and the report. The Trainer writes nothing itself; whoever
// drives it owns one RunDirectory (in a run of several processes, only one of them).

#include "batchcam/train/config.h"

#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <vector>

namespace batchcam::train {

class Trainer;
struct EpochMetrics;

class RunDirectory {
 public:
  /// Creates out_dir/run_name (a new timestamped name when run_name is empty), proves it
  /// writable before any training time is spent and writes config.json (the configuration
  /// and, under kProvenanceKey, `provenance`). Throws std::runtime_error naming the
  /// directory when it holds a run (metrics or a checkpoint) or cannot be written.
  static RunDirectory create(const TrainConfig& config, const nlohmann::json& provenance);
  /// The directory of an earlier run, to continue it from its last.pt. Throws
  /// std::runtime_error when there is no such directory or checkpoint.
  static RunDirectory open(const std::string& dir);

  const std::string& path() const { return path_; }
  std::string last_checkpoint() const;  ///< last.pt
  std::string best_checkpoint() const;  ///< best.pt
  std::string report() const;           ///< report.html

  /// last.pt (and best.pt), atomically, with everything needed to continue.
  void save_checkpoint(Trainer& trainer, bool best);
  /// metrics.jsonl: one line per finished epoch, atomically.
  void write_metrics(const std::vector<EpochMetrics>& history);
  /// config.json, atomically (a new one when a resumed run is extended).
  void write_config(const TrainConfig& config, const nlohmann::json& provenance);
  /// After the last epoch: prototypes.png, samples.png, eval.json and report.html (last).
  /// `on_phase` (may be empty) is told before each part.
  void write_final(Trainer& trainer, const std::function<void(const std::string&)>& on_phase = {});
  /// best.pt := last.pt, atomically (when the epoch that last.pt ends was the best).
  void copy_last_to_best();
  /// Removes `*.tmp.PID` files of writers that no longer run (killed while writing).
  void remove_stale_temporaries();

 private:
  explicit RunDirectory(std::string path) : path_(std::move(path)) {}
  std::string path_;
};

}  // namespace batchcam::train
