// Process groups over c10d's Gloo: the collectives run between real processes. The parent
// tests start this test program again as the ranks (a worker test, selected by
// BATCHCAM_TEST_WORKER, does one rank's part), exactly as torchrun would set their environment.

#include "batchcam/core/distributed.h"
#include "batchcam/train/trainer.h"
#include "support/process.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>

using namespace batchcam;
namespace fs = std::filesystem;

namespace {
// A TCP port that was free a moment ago (the rendezvous binds it again right away).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  socklen_t length = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string self() { return std::string(BATCHCAM_TEST_BINARY); }

// Starts `world` copies of this program running worker test `name`, as ranks 0..world-1, in
// the background (each killed after 120 s, so that a hang fails the test instead of the
// suite), and returns the command's result (every rank's output, the first failure).
test_support::CommandResult launch(const std::string& name, int world, int port) {
  const auto logs = fs::temp_directory_path() / ("batchcam-ranks-" + std::to_string(::getpid()) + "-" + name);
  fs::create_directories(logs);
  std::string command = "pids=''; ";
  for (int rank = 0; rank < world; ++rank) {
    command += "env -u GTEST_OUTPUT BATCHCAM_TEST_WORKER=1 WORLD_SIZE=" + std::to_string(world) +
               " RANK=" + std::to_string(rank) + " LOCAL_RANK=" + std::to_string(rank) +
               " MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(port) + " timeout -k 5 120 '" + self() +
               "' --gtest_filter=DistributedWorker." + name + " > '" + (logs / std::to_string(rank)).string() +
               "' 2>&1 & pids=\"$pids $!\"; ";
  }
  command += "status=0; for p in $pids; do wait $p || status=$?; done; cat '" + logs.string() + "'/*; exit $status";
  auto result = test_support::run_shell(command);
  fs::remove_all(logs);
  return result;
}

bool is_worker() { return std::getenv("BATCHCAM_TEST_WORKER") != nullptr; }

core::LaunchInfo from_environment() { return core::launch_info([](const char* name) { return std::getenv(name); }); }
}  // namespace

TEST(Distributed, LaunchInfoComesFromTorchrunsVariables) {
  const auto read = [](std::map<std::string, std::string> env) {
    return core::launch_info([env](const char* name) -> const char* {
      const auto it = env.find(name);
      return it == env.end() ? nullptr : it->second.c_str();
    });
  };
  EXPECT_FALSE(read({}).distributed()) << "no torchrun: one process";
  const auto l = read({{"WORLD_SIZE", "4"}, {"RANK", "2"}, {"LOCAL_RANK", "0"}, {"MASTER_ADDR", "10.0.0.1"},
                       {"MASTER_PORT", "29512"}});
  EXPECT_TRUE(l.distributed());
  EXPECT_EQ(l.rank, 2);
  EXPECT_EQ(l.local_rank, 0);
  EXPECT_EQ(l.master_addr, "10.0.0.1");
  EXPECT_EQ(l.master_port, 29512);
  try {
    read({{"WORLD_SIZE", "2"}, {"RANK", "2"}});
    FAIL() << "RANK out of range";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("RANK='2': expected an integer in [0, 1]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read({{"WORLD_SIZE", "two"}}), std::invalid_argument);
  EXPECT_THROW(read({{"WORLD_SIZE", "2"}}), std::invalid_argument) << "RANK missing";
}

TEST(Distributed, TwoProcessesAllReduceInBucketsAndBroadcast) {
  if (!core::distributed_available()) GTEST_SKIP() << "built without c10d's Gloo (libgloo-dev)";
  const auto r = launch("AllReduceAndBroadcast", 2, free_port());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.find("FAILED"), std::string::npos) << r.out;
}

TEST(Distributed, ARankThatDiesMakesTheOthersFailWithinTheTimeout) {
  if (!core::distributed_available()) GTEST_SKIP() << "built without c10d's Gloo (libgloo-dev)";
  const auto r = launch("OneRankDies", 2, free_port());
  EXPECT_EQ(r.code, 0) << r.out;  // rank 0 expects the failure; rank 1 exits on purpose with 0
  EXPECT_NE(r.out.find("distributed all-reduce failed on rank 0"), std::string::npos) << r.out;
}

TEST(Distributed, TwoRanksTrainAsOneProcessOnTheGlobalBatch) {
  if (!core::distributed_available()) GTEST_SKIP() << "built without c10d's Gloo (libgloo-dev)";
  const auto r = launch("TrainsAsOneProcess", 2, free_port());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(r.out.find("FAILED"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[  PASSED  ] 1 test"), std::string::npos) << r.out;
}

TEST(DistributedWorker, TrainsAsOneProcess) {
  if (!is_worker()) GTEST_SKIP() << "one rank's part of Distributed.TwoRanksTrainAsOneProcessOnTheGlobalBatch";
  auto group = std::make_shared<core::ProcessGroup>(from_environment(), std::chrono::seconds(60));
  // ConvNeXt-V2 normalises each sample on its own (LayerNorm, GRN): two ranks on halves of
  // each batch of 8 must take the steps one process takes on the whole batches (with the
  // random shift and flip, drawn per position in the batch), up to the order of float sums.
  train::TrainConfig c;
  c.model = "convnext-v2-atto";
  c.train_size = 48;
  c.test_size = 16;
  c.batch_size = 8;
  c.epochs = 1;
  c.augment = train::Augment::shift_flip;
  // Plain SGD: an update proportional to the gradient, so float differences stay float-sized
  // (Adam divides tiny gradients by their own size and magnifies them).
  c.optimizer = train::OptimizerKind::sgd;
  c.momentum = 0.0;
  c.nesterov = false;
  c.lr = 0.1;
  const auto splits = train::load_dataset(c);
  train::Trainer alone(c, splits, torch::kCPU);
  ASSERT_TRUE(alone.run_epoch());
  train::Trainer ranked(c, splits, torch::kCPU);
  ranked.use_process_group(group);
  ASSERT_TRUE(ranked.run_epoch());
  EXPECT_NEAR(ranked.read_progress().loss, alone.read_progress().loss, 1e-4) << "the running loss of all ranks";
  EXPECT_EQ(ranked.read_progress().accuracy, alone.read_progress().accuracy);
  const auto a = alone.model().parameters(), b = ranked.model().parameters();
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, (a[i] - b[i]).abs().max().item<double>());
  EXPECT_LT(worst, 1e-5) << "6 steps on two ranks against one process";
  std::cout << "largest weight difference, two ranks against one process: " << worst << "\n";
  EXPECT_GT((a[0] - train::Trainer(c, splits, torch::kCPU).model().parameters()[0]).abs().max().item<double>(), 1e-3)
      << "the steps changed the weights";

  // SimpleCNN has BatchNorm (per-rank statistics): the ranks still hold the same weights,
  // and the same averaged statistics after an evaluation.
  c.model = "simple-cnn";
  train::Trainer bn(c, splits, torch::kCPU);
  bn.use_process_group(group);
  ASSERT_TRUE(bn.run_epoch());
  (void)bn.end_epoch();
  std::vector<torch::Tensor> state;
  for (const auto& p : bn.model().parameters()) state.push_back(p.detach().clone());
  for (const auto& x : bn.model().buffers()) state.push_back(x.detach().to(torch::kDouble));
  auto summed = state;
  for (auto& t : summed) t = t.clone();
  group->all_reduce_sum(summed);
  for (size_t i = 0; i < state.size(); ++i) {
    EXPECT_TRUE(torch::allclose(summed[i], 2 * state[i], 1e-6, 1e-7)) << "tensor " << i << " differs between ranks";
  }
}

TEST(Distributed, ARankWithOtherDataIsRefused) {
  if (!core::distributed_available()) GTEST_SKIP() << "built without c10d's Gloo (libgloo-dev)";
  const auto r = launch("RefusesOtherData", 2, free_port());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("distributed training: rank 1 has (steps per epoch, training images, batch size, epochs) = "
                       "(7, 56, 8, 1), rank 0 (6, 48, 8, 1)"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("distributed training: 1 rank(s) have other data or configuration than rank 0"),
            std::string::npos)
      << r.out;
}

TEST(DistributedWorker, RefusesOtherData) {
  if (!is_worker()) GTEST_SKIP() << "one rank's part of Distributed.ARankWithOtherDataIsRefused";
  auto group = std::make_shared<core::ProcessGroup>(from_environment(), std::chrono::seconds(60));
  train::TrainConfig c;
  c.train_size = 48 + 8 * group->rank();  // rank 1 was given another training set
  c.test_size = 16;
  c.batch_size = 8;
  c.epochs = 1;
  const auto splits = train::load_dataset(c);
  train::Trainer trainer(c, splits, torch::kCPU);
  try {
    trainer.use_process_group(group);
    FAIL() << "rank " << group->rank() << " went on with a rank of other data";
  } catch (const std::invalid_argument& e) {
    std::cout << e.what() << "\n";  // both ranks stop, each with one line
  }
}

TEST(Distributed, ARankThatHangsMakesTheOthersFailAfterTheTimeout) {
  if (!core::distributed_available()) GTEST_SKIP() << "built without c10d's Gloo (libgloo-dev)";
  const auto r = launch("OneRankHangs", 2, free_port());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("distributed all-reduce failed on rank 0 (another rank stopped, did not answer within 5000 ms"),
            std::string::npos)
      << r.out;
}

TEST(DistributedWorker, OneRankHangs) {
  if (!is_worker()) GTEST_SKIP() << "one rank's part of Distributed.ARankThatHangsMakesTheOthersFailAfterTheTimeout";
  core::ProcessGroup group(from_environment(), std::chrono::seconds(5));
  if (group.rank() == 1) {
    // Alive but silent (a rank stuck in its data or a deadlock) until rank 0 has given up.
    ::sleep(15);
    return;
  }
  std::vector<torch::Tensor> gradients = {torch::ones({8})};
  try {
    group.all_reduce_sum(gradients);
    FAIL() << "an all-reduce with a silent rank returned";
  } catch (const std::runtime_error& e) {
    std::cout << e.what() << "\n";
  }
}

TEST(DistributedWorker, AllReduceAndBroadcast) {
  if (!is_worker()) GTEST_SKIP() << "one rank's part of Distributed.TwoProcessesAllReduceInBucketsAndBroadcast";
  core::ProcessGroup group(from_environment(), std::chrono::seconds(30));
  const double r = static_cast<double>(group.rank());
  // Tensors of two dtypes and several shapes; 64-byte buckets force several collectives.
  std::vector<torch::Tensor> tensors = {torch::full({3, 2}, r + 1.0, torch::kFloat32),
                                        torch::arange(5, torch::kFloat64) * (r + 1.0),
                                        torch::full({40}, 2.0 * r, torch::kFloat32), torch::full({1}, r, torch::kFloat64)};
  group.all_reduce_sum(tensors, 64);
  EXPECT_TRUE(torch::allclose(tensors[0], torch::full({3, 2}, 3.0f))) << tensors[0];
  EXPECT_TRUE(torch::allclose(tensors[1], torch::arange(5, torch::kFloat64) * 3.0)) << tensors[1];
  EXPECT_TRUE(torch::allclose(tensors[2], torch::full({40}, 2.0f))) << tensors[2];
  EXPECT_EQ(tensors[3].item<double>(), 1.0);
  std::vector<torch::Tensor> weights = {torch::full({4}, 10.0 + r), torch::full({2, 2}, 20.0 + r, torch::kFloat64)};
  group.broadcast(weights, 1);
  EXPECT_TRUE(torch::equal(weights[0], torch::full({4}, 11.0))) << "rank 1's";
  EXPECT_TRUE(torch::equal(weights[1], torch::full({2, 2}, 21.0, torch::kFloat64)));
  group.barrier();
}

TEST(DistributedWorker, OneRankDies) {
  if (!is_worker()) GTEST_SKIP() << "one rank's part of Distributed.ARankThatDiesMakesTheOthersFailWithinTheTimeout";
  // A rank that has exited is noticed at once (its connection closes); one that hangs takes
  // the timeout (DistributedWorker.OneRankHangs).
  core::ProcessGroup group(from_environment(), std::chrono::seconds(30));
  if (group.rank() == 1) std::_Exit(0);  // gone without a word, as a crashed or killed rank
  std::vector<torch::Tensor> gradients = {torch::ones({8})};
  try {
    group.all_reduce_sum(gradients);
    FAIL() << "an all-reduce with a dead rank returned";
  } catch (const std::runtime_error& e) {
    std::cout << e.what() << "\n";
  }
}
