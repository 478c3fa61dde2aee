#pragma once
// Processes that train together, on PyTorch's c10d: this process's place in a torchrun
// launch, and the collectives data-parallel training needs, over Gloo (which reduces
// in CPU memory: tensors on a GPU travel through a CPU copy). The
// rendezvous (TCPStore), transport and collectives are c10d's; batchcam adds the bucketing.

#include <torch/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace batchcam::core {

/// This process's place in a launch, as torchrun describes it in the environment.
struct LaunchInfo {
  int64_t rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  /// torchrun's agent already hosts the TCPStore at master_addr:master_port
  /// (TORCHELASTIC_USE_AGENT_STORE=True): every rank joins it as a client, under a prefix of
  /// this restart attempt (TORCHELASTIC_RESTART_COUNT).
  bool agent_store = false;
  int64_t restart_count = 0;
  /// The network interface Gloo connects the ranks over (GLOO_SOCKET_IFNAME, as in PyTorch);
  /// "" = the one this host's name resolves to.
  std::string gloo_interface;
  bool distributed() const { return world_size > 1; }
};

/// From RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_USE_AGENT_STORE,
/// TORCHELASTIC_RESTART_COUNT and GLOO_SOCKET_IFNAME, read through `getenv`
/// (the CLI passes std::getenv; the library reads no environment itself). Without
/// WORLD_SIZE, or with 1: a single process. Throws std::invalid_argument naming the variable,
/// its value and what was expected.
LaunchInfo launch_info(const std::function<const char*(const char*)>& getenv);

/// Whether this build of batchcam can create process groups (c10d with Gloo was found).
bool distributed_available();

/// The processes of one launch, connected: collectives over all of them. Every rank must
/// make the same calls in the same order, with tensors of the same shapes and dtypes.
class ProcessGroup {
 public:
  /// Rendezvous through a TCPStore at master_addr:master_port (hosted by torchrun's agent,
  /// else by rank 0), then a Gloo process group. `timeout` bounds every collective: when a
  /// rank has died or hangs, the others throw std::runtime_error instead of waiting for
  /// ever, naming the ranks that did not check in at the store within a few seconds of the
  /// failure. The rendezvous waits for the other ranks to start for `timeout`, and at least
  /// 60 s.
  ProcessGroup(const LaunchInfo& launch, std::chrono::milliseconds timeout);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int64_t rank() const { return rank_; }
  int64_t size() const { return size_; }

  /// Sums each tensor over the ranks, in place. Tensors of one dtype are packed into
  /// buckets of at most `bucket_bytes` (a tensor larger than that gets a bucket of its own):
  /// one collective per bucket, not one per tensor. Tensors must be on one device.
  void all_reduce_sum(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes = int64_t{25} << 20);
  /// Every rank's tensors become rank `root`'s, in place (bucketed the same way).
  void broadcast(const std::vector<torch::Tensor>& tensors, int64_t root = 0);
  /// Returns when every rank has called it.
  void barrier();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t rank_ = 0, size_ = 1;
};

}  // namespace batchcam::core
