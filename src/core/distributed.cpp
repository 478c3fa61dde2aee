#include "batchcam/core/distributed.h"

#include <torch/torch.h>
#include <torch/version.h>

#ifdef BATCHCAM_WITH_C10D_GLOO
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#endif

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <functional>
#include <map>
#include <stdexcept>
#include <thread>

namespace batchcam::core {

namespace {
// The variable as an integer in [lo, hi]; `fallback` when unset.
int64_t integer_variable(const std::function<const char*(const char*)>& getenv, const char* name, int64_t fallback,
                         int64_t lo, int64_t hi) {
  const char* text = getenv(name);
  if (!text || !*text) return fallback;
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (errno != 0 || *end != '\0' || value < lo || value > hi) {
    throw std::invalid_argument(std::string(name) + "='" + text + "': expected an integer in [" + std::to_string(lo) +
                                ", " + std::to_string(hi) + "] (torchrun sets it)");
  }
  return value;
}

}  // namespace

LaunchInfo launch_info(const std::function<const char*(const char*)>& getenv) {
  LaunchInfo l;
  l.world_size = integer_variable(getenv, "WORLD_SIZE", 1, 1, 1 << 20);
  if (!l.distributed()) return l;
  l.rank = integer_variable(getenv, "RANK", -1, 0, l.world_size - 1);
  if (l.rank < 0) throw std::invalid_argument("WORLD_SIZE is set but RANK is not (launch with torchrun)");
  l.local_rank = integer_variable(getenv, "LOCAL_RANK", 0, 0, l.world_size - 1);
  l.master_port = integer_variable(getenv, "MASTER_PORT", 29500, 1, 65535);
  if (const char* addr = getenv("MASTER_ADDR"); addr && *addr) l.master_addr = addr;
  const char* agent = getenv("TORCHELASTIC_USE_AGENT_STORE");
  l.agent_store = agent && std::string(agent) == "True";
  l.restart_count = integer_variable(getenv, "TORCHELASTIC_RESTART_COUNT", 0, 0, 1 << 30);
  if (const char* interface = getenv("GLOO_SOCKET_IFNAME"); interface && *interface) l.gloo_interface = interface;
  return l;
}

#ifdef BATCHCAM_WITH_C10D_GLOO

bool distributed_available() { return true; }

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;
  int64_t rank = 0, size = 1;
  std::chrono::milliseconds timeout{0};

  // Runs one collective and waits for it; a failure (a rank gone, the timeout) becomes one
  // std::runtime_error naming this rank, the operation and the ranks that did not answer.
  template <typename F>
  void run(const char* what, F&& start) {
    try {
      auto work = start();
      work->wait();
    } catch (const std::exception& e) {
      std::string message = e.what();
      message = message.substr(0, message.find('\n'));
      throw std::runtime_error("distributed " + std::string(what) + " failed on rank " + std::to_string(rank) +
                               roll_call() + " (waited up to " + std::to_string(timeout.count()) + " ms): " + message);
    }
  }

  // After a failed collective: every rank that meets the failure checks in at the store, and
  // those that have not within a few seconds are named (stopped, or stuck in other work).
  // Best effort: the store may have gone with rank 0.
  std::string roll_call() {
    try {
      store->set("failed/" + std::to_string(rank), std::vector<uint8_t>{1});
      const auto deadline =
          std::chrono::steady_clock::now() + std::min<std::chrono::milliseconds>(timeout, std::chrono::seconds(5));
      std::vector<int64_t> missing;
      for (;;) {
        missing.clear();
        for (int64_t r = 0; r < size; ++r) {
          if (r != rank && !store->check({"failed/" + std::to_string(r)})) missing.push_back(r);
        }
        if (missing.empty() || std::chrono::steady_clock::now() >= deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (missing.empty()) return ", and so did every other rank (the ranks made different calls?)";
      std::string names;
      for (size_t i = 0; i < missing.size() && i < 8; ++i) names += (i ? ", " : "") + std::to_string(missing[i]);
      if (missing.size() > 8) names += " and " + std::to_string(missing.size() - 8) + " more";
      return ": rank" + std::string(missing.size() > 1 ? "s " : " ") + names +
             " stopped or did not answer";
    } catch (const std::exception&) {
      return ": the rendezvous store is gone as well (rank 0 or the launcher stopped)";
    }
  }
};

ProcessGroup::ProcessGroup(const LaunchInfo& launch, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>()), rank_(launch.rank), size_(launch.world_size) {
  impl_->rank = launch.rank;
  impl_->size = launch.world_size;
  impl_->timeout = timeout;
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(launch.master_port);
    options.isServer = launch.rank == 0 && !launch.agent_store;
    options.numWorkers = static_cast<std::size_t>(launch.world_size);
    options.timeout = std::max<std::chrono::milliseconds>(timeout, std::chrono::seconds(60));
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    // LibTorch 2.4 made the libuv server the default; Debian's LibTorch is built without
    // libuv. The classic server is in every build.
    options.useLibUV = false;
#endif
    auto tcp = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, options);
    // The agent's store holds torchrun's own keys (and those of earlier attempts): ours get a
    // prefix of their own.
    impl_->store = c10::make_intrusive<c10d::PrefixStore>(
        "/batchcam/attempt_" + std::to_string(launch.restart_count), tcp);
    auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
    gloo->devices.push_back(launch.gloo_interface.empty()
                                ? c10d::ProcessGroupGloo::createDefaultDevice()
                                : c10d::ProcessGroupGloo::createDeviceForInterface(launch.gloo_interface));
    impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, static_cast<int>(launch.rank),
                                                               static_cast<int>(launch.world_size), gloo);
  } catch (const std::exception& e) {
    std::string message = e.what();
    throw std::runtime_error("rank " + std::to_string(launch.rank) + " of " + std::to_string(launch.world_size) +
                             ": cannot join the process group at " + launch.master_addr + ":" +
                             std::to_string(launch.master_port) + " (" + message.substr(0, message.find('\n')) + ")");
  }
}

ProcessGroup::~ProcessGroup() = default;

namespace {
// Groups the tensors' indices by dtype, then into runs of at most `bucket_bytes`.
std::vector<std::vector<size_t>> buckets_of(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes) {
  std::map<int, std::vector<size_t>> by_type;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (i > 0 && tensors[i].device() != tensors[0].device()) {
      throw std::invalid_argument("ProcessGroup: tensor " + std::to_string(i) + " is on " + tensors[i].device().str() +
                                  ", tensor 0 on " + tensors[0].device().str() + "; all must be on one device");
    }
    by_type[static_cast<int>(tensors[i].scalar_type())].push_back(i);
  }
  std::vector<std::vector<size_t>> buckets;
  for (const auto& [type, indices] : by_type) {
    std::vector<size_t> bucket;
    int64_t bytes = 0;
    for (const auto i : indices) {
      const int64_t size = tensors[i].numel() * static_cast<int64_t>(tensors[i].element_size());
      if (!bucket.empty() && bytes + size > bucket_bytes) {
        buckets.push_back(std::move(bucket));
        bucket.clear();
        bytes = 0;
      }
      bucket.push_back(i);
      bytes += size;
    }
    if (!bucket.empty()) buckets.push_back(std::move(bucket));
  }
  return buckets;
}

// Packs each bucket of `tensors` into one flat tensor, runs `collective` on it, and copies
// the result back into the tensors. Gloo reduces CPU memory: a GPU's bucket travels through
// a CPU copy.
void bucketed(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes,
              const std::function<void(std::vector<torch::Tensor>&)>& collective) {
  torch::NoGradGuard no_grad;
  for (const auto& bucket : buckets_of(tensors, bucket_bytes)) {
    std::vector<torch::Tensor> parts;
    for (const auto i : bucket) parts.push_back(tensors[i].reshape({-1}));
    std::vector<torch::Tensor> flat = {torch::cat(parts).cpu()};
    collective(flat);
    int64_t at = 0;
    for (const auto i : bucket) {
      const int64_t n = tensors[i].numel();
      tensors[i].copy_(flat[0].narrow(0, at, n).view(tensors[i].sizes()));
      at += n;
    }
  }
}
}  // namespace

void ProcessGroup::all_reduce_sum(const std::vector<torch::Tensor>& tensors, int64_t bucket_bytes) {
  bucketed(tensors, bucket_bytes, [&](std::vector<torch::Tensor>& flat) {
    impl_->run("all-reduce", [&] { return impl_->group->allreduce(flat); });
  });
}

void ProcessGroup::broadcast(const std::vector<torch::Tensor>& tensors, int64_t root) {
  c10d::BroadcastOptions options;
  options.rootRank = root;
  bucketed(tensors, int64_t{25} << 20, [&](std::vector<torch::Tensor>& flat) {
    impl_->run("broadcast", [&] { return impl_->group->broadcast(flat, options); });
  });
}

void ProcessGroup::barrier() {
  impl_->run("barrier", [&] { return impl_->group->barrier(); });
}

#else

bool distributed_available() { return false; }

struct ProcessGroup::Impl {};

ProcessGroup::ProcessGroup(const LaunchInfo&, std::chrono::milliseconds) {
  throw std::runtime_error("this batchcam was built without c10d's Gloo (install libgloo-dev and rebuild)");
}
// Never reached: no ProcessGroup can be made in this build.
ProcessGroup::~ProcessGroup() = default;
void ProcessGroup::all_reduce_sum(const std::vector<torch::Tensor>&, int64_t) {}
void ProcessGroup::broadcast(const std::vector<torch::Tensor>&, int64_t) {}
void ProcessGroup::barrier() {}

#endif

}  // namespace batchcam::core
