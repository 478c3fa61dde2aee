#pragma once
// `batchcam bench`: the performance figures of docs/performance.md, measured in one run.

#include <cstdint>
#include <string>
#include <vector>

struct BenchArgs {
  std::vector<std::string> models = {"simple-cnn", "resnet18", "convnext-v2-atto"};
  int64_t repetitions = 10, warmup = 2, threads = 0;  ///< threads: as set by the CLI
  std::string device = "auto";  ///< where the steps run (core::resolve_device)
  std::string precision = "fp32";
  /// Training images of the epoch whose `batchcam train` loop is timed against the sum of
  /// the same steps timed alone (0 = skip).
  int64_t epoch_images = 12800;
  /// PNG files of the image-folder pipeline measured at 224 px (0 = skip).
  int64_t folder_images = 2000;
  bool per_sample = true;        ///< time the per-sample Grad-CAM (slow for deep heads)
  bool memory = true;            ///< peak memory of each step, from child processes
  bool compare_python = false;   ///< run bench/python_step.py with the same settings
  std::string python = "/usr/bin/python3";
  std::string python_script;     ///< default: the source tree's bench/python_step.py
  std::string mnist_dir;         ///< when set: one MNIST epoch of SimpleCNN, CE only and Batch-CAM
  std::string json_out;          ///< also write the results as JSON here
  /// Data-parallel steps timed with two ranks (Gloo on loopback, 1 thread each) against one
  /// process on the same global batch, and the gradient all-reduce alone (0 = skip).
  int64_t distributed_steps = 0;
  /// Maps per second of each CAM method, and the closed-form CAM's training step against
  /// Grad-CAM's (models whose head is pooling and one linear layer).
  bool cam_methods = true;
  /// A training step with RRR with masks and with Prototype RRR, against CE only.
  bool input_gradients = true;
  // Internal: `--distributed-probe MODEL STEPS` times steps as one rank of a launch (or alone).
  std::vector<std::string> distributed_probe;
  // Internal: `--memory-probe MODEL VARIANT` measures one step's peak RSS in a fresh process;
  // `--memory-probe folder DIR N` that of streaming N images of a folder.
  std::vector<std::string> probe;
};

/// Runs the benchmark, prints the table; returns the exit code.
int run_bench(const BenchArgs& args, const std::string& self_path);
