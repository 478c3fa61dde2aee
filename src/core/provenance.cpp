#include "batchcam/core/provenance.h"

#include "batchcam/core/runtime.h"

#include <ATen/Parallel.h>
#include <torch/version.h>
#include <unistd.h>

#include <array>
#include <ctime>

namespace batchcam::core {

nlohmann::json provenance(const torch::Device& device) {
  std::array<char, 256> host{};
  if (::gethostname(host.data(), host.size() - 1) != 0) host[0] = '\0';
  char when[32];
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  ::gmtime_r(&now, &utc);
  std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return {{"batchcam", version()},
          {"git_commit", git_commit()},
          {"libtorch", TORCH_VERSION},
          {"host", std::string(host.data())},
          {"device", device_name(device)},
          {"threads", at::get_num_threads()},
          {"time", when}};
}

}  // namespace batchcam::core
