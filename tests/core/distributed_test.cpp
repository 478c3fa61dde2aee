// Process groups over c10d's Gloo: the collectives run between real processes. The parent
// tests start this test program again as the ranks (a worker test, selected by
// BATCHCAM_TEST_WORKER, does one rank's part), exactly as torchrun would set their environment.

#include "batchcam/core/distributed.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/train/objective.h"
#include "batchcam/train/trainer.h"
#include "support/process.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

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
  EXPECT_NE(r.out.find("distributed all-reduce failed on rank 0: rank 1 stopped or did not answer"), std::string::npos)
      << r.out;
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

TEST(Distributed, TwoRanksOf64MatchOneProcessOf128AndShareTheirPrototypesAndMetrics) {
  if (!core::distributed_available()) GTEST_SKIP() << "built without c10d's Gloo (libgloo-dev)";
  const auto r = launch("MatchesOneProcess", 2, free_port());
  EXPECT_EQ(r.code, 0) << r.out;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("difference") != std::string::npos || line.find("Batch-CAM Loss:") != std::string::npos) {
      std::cout << line << "\n";  // the measured numbers, in the test log
    }
  }
  EXPECT_EQ(r.out.find("FAILED"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[  PASSED  ] 1 test"), std::string::npos) << r.out;
}

namespace {
// sqrt(sum |a - b|^2) / sqrt(sum |a|^2) over all parameters.
double relative_difference(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff += (a[i] - b[i]).to(torch::kDouble).pow(2).sum().item<double>();
    norm += a[i].to(torch::kDouble).pow(2).sum().item<double>();
  }
  return std::sqrt(diff / norm);
}
}  // namespace

TEST(DistributedWorker, MatchesOneProcess) {
  if (!is_worker()) GTEST_SKIP() << "one rank's part of Distributed.TwoRanksOf64MatchOneProcessOf128...";
  auto group = std::make_shared<core::ProcessGroup>(from_environment(), std::chrono::seconds(60));
  // The acceptance case: SimpleCNN with its BatchNorm frozen (no batch statistics in
  // training) and the Prototype Loss; 20 steps of 2 x 64 images against 20 of 128. It starts,
  // as a fine-tuning does, from weights and statistics trained with BatchNorm on (one epoch
  // of cross-entropy): at the random start the CAMs span ~1e-4, and their min-max
  // normalisation magnifies float rounding (then the two runs drift apart by ~1e-3 in 20
  // steps, as two single processes whose sums are ordered differently would).
  train::TrainConfig c;
  c.train_size = 20 * 128;
  c.test_size = 64;
  c.batch_size = 128;
  c.epochs = 1;
  c.lambda_proto = 0.0;
  const auto splits = train::load_dataset(c);
  train::Trainer pretraining(c, splits, torch::kCPU);
  ASSERT_TRUE(pretraining.run_epoch());
  (void)pretraining.end_epoch();
  const auto start_from_pretrained = [&](train::Trainer& t) {
    torch::NoGradGuard no_grad;
    const auto from = pretraining.model().parameters(), to = t.model().parameters();
    for (size_t i = 0; i < from.size(); ++i) to[i].copy_(from[i]);
    const auto from_buffers = pretraining.model().buffers(), to_buffers = t.model().buffers();
    for (size_t i = 0; i < from_buffers.size(); ++i) to_buffers[i].copy_(from_buffers[i]);
  };
  c.freeze_batchnorm = true;
  c.lambda_proto = 1.0;
  c.optimizer = train::OptimizerKind::sgd;
  // Plain SGD at a fine-tuning rate: the drift of float rounding grows with the step size and
  // with momentum (lr 0.002 with momentum 0.9 gave 1.4e-7 here but 7.9e-5 with LibTorch 2.6).
  c.lr = 0.001;
  c.momentum = 0.0;
  train::Trainer alone(c, splits, torch::kCPU), ranked(c, splits, torch::kCPU);
  start_from_pretrained(alone);
  start_from_pretrained(ranked);
  const auto start = alone.model().parameters();
  std::vector<torch::Tensor> initial;
  for (const auto& p : start) initial.push_back(p.detach().clone());
  std::vector<torch::Tensor> statistics;
  for (const auto& b : alone.model().buffers()) statistics.push_back(b.detach().clone());
  ranked.use_process_group(group);
  ASSERT_TRUE(alone.run_epoch());
  ASSERT_TRUE(ranked.run_epoch());
  ASSERT_EQ(ranked.step_in_epoch(), 20);
  const double difference = relative_difference(alone.model().parameters(), ranked.model().parameters());
  const double moved = relative_difference(alone.model().parameters(), initial);
  std::cout << "20 steps, 2 ranks of 64 against 1 process of 128: relative weight difference " << difference
            << " (the steps moved the weights by " << moved << ")\n";
  EXPECT_LT(difference, 1e-5);
  EXPECT_GT(moved, 1e-3);
  const auto buffers = alone.model().buffers();
  for (size_t i = 0; i < buffers.size(); ++i) {
    EXPECT_TRUE(torch::equal(buffers[i], statistics[i])) << "frozen BatchNorm keeps its running statistics";
  }
  // The test metrics: each rank evaluates half of the test set; together they are one process's.
  const auto a = alone.end_epoch().test, b = ranked.end_epoch().test;
  EXPECT_EQ(a.count, b.count);
  EXPECT_EQ(a.accuracy, b.accuracy);
  EXPECT_NEAR(a.loss, b.loss, 1e-5);
  EXPECT_NEAR(a.proto_ssim, b.proto_ssim, 1e-5);
  EXPECT_NEAR(a.proto_l1, b.proto_l1, 1e-5);

  // cam-ema prototypes move with the class means of the global batch: the same on every rank
  // as in one process.
  c.prototype = train::PrototypeKind::cam_ema;
  train::Trainer ema_alone(c, splits, torch::kCPU), ema_ranked(c, splits, torch::kCPU);
  start_from_pretrained(ema_alone);
  start_from_pretrained(ema_ranked);
  const auto ema_start = ema_alone.prototypes().clone();
  ema_ranked.use_process_group(group);
  // Three steps: later, the Prototype Loss against maps whose zeros (ReLU) meet the
  // prototypes' zeros turns rounding into sign changes of its gradient, and the runs drift
  // (~3e-4 after 20 steps) as any two differently summed runs would.
  const auto three_steps = [](train::Trainer& t) {
    int steps = 0;
    return t.run_epoch({}, [&steps] { return ++steps >= 3; });
  };
  ASSERT_FALSE(three_steps(ema_alone));
  ASSERT_FALSE(three_steps(ema_ranked));
  ASSERT_EQ(ema_ranked.step_in_epoch(), 3);
  const double ema_difference = (ema_alone.prototypes() - ema_ranked.prototypes()).abs().max().item<double>();
  std::cout << "cam-ema prototypes after 3 steps, largest difference: " << ema_difference << "\n";
  EXPECT_LT(ema_difference, 1e-6);
  EXPECT_GT((ema_alone.prototypes() - ema_start).abs().max().item<double>(), 1e-3) << "the prototypes moved";
  auto both = ema_ranked.prototypes().clone();
  group->all_reduce_sum({both});
  EXPECT_TRUE(torch::equal(both, 2 * ema_ranked.prototypes())) << "every rank holds the same prototypes";

  // The Batch-CAM Loss compares maps within each rank's slice: the running term is the mean
  // of the slices' losses, not the loss of the whole batch.
  c.prototype = train::PrototypeKind::image;
  c.lambda_proto = 0.0;
  c.lambda_batch = 1.0;
  train::Trainer reference(c, splits, torch::kCPU), batch_ranked(c, splits, torch::kCPU);
  batch_ranked.use_process_group(group);
  data::BatchIterator batches(splits.train, reference.normalization(), c.batch_size, true, c.seed, true);
  batches.set_epoch(1);
  const auto first = batches.get(0);
  const auto slice = [&](int64_t begin, int64_t end) {
    return data::Batch{first.x.slice(0, begin, end), first.y.slice(0, begin, end), first.index.slice(0, begin, end), {}};
  };
  train::CamLossConfig objective;
  objective.lambda_batch = 1.0;
  objective.distance_batch = c.distance_batch;
  objective.method = c.cam_method;
  const auto loss_of = [&](int64_t begin, int64_t end) {
    return train::compute_losses(reference.model(), slice(begin, end), reference.prototypes(),
                                 splits.train.num_classes(), objective)
        .batch.item<double>();
  };
  const double per_rank = (loss_of(0, 64) + loss_of(64, 128)) / 2, whole = loss_of(0, 128);
  batch_ranked.step(slice(64 * group->rank(), 64 * group->rank() + 64));  // this rank's slice of the same batch
  const double term = batch_ranked.read_progress().batch;
  std::cout << "Batch-CAM Loss: ranks " << term << ", mean of the slices " << per_rank << ", whole batch " << whole
            << "\n";
  EXPECT_NEAR(term, per_rank, 1e-6);
  EXPECT_GT(std::abs(whole - per_rank), 1e-3) << "the whole batch's loss differs (else the test shows nothing)";
}

TEST(Distributed, ARankWithOtherDataIsRefused) {
  if (!core::distributed_available()) GTEST_SKIP() << "built without c10d's Gloo (libgloo-dev)";
  const auto r = launch("RefusesOtherData", 2, free_port());
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("distributed training: rank 1 has (steps per epoch, training images, batch size, epochs, "
                       "epoch, step) = (7, 56, 8, 1, 1, 0), rank 0 (6, 48, 8, 1, 1, 0)"),
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
  EXPECT_NE(r.out.find("distributed all-reduce failed on rank 0: rank 1 stopped or did not answer (waited up to 5000 ms)"),
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

// `batchcam train` as several processes: under torchrun, and started by hand as torchrun
// would start them.
namespace {
using test_support::read_text;
using test_support::spawn_process;
using test_support::wait_exit;
using test_support::wait_for_file;

const char* const kPython = "/usr/bin/python3";

// Why torchrun cannot be used here ("" when it can): not installed, or unable to start its
// own store (Debian 13's PyTorch 2.6 is built without libuv, which its torchrun asks for).
std::string torchrun_unavailable() {
  if (test_support::run_shell(std::string(kPython) + " -c 'import torch.distributed.run'").code != 0) {
    return std::string("no torchrun (") + kPython + " -m torch.distributed.run; python3-torch)";
  }
  const auto probe = test_support::run_shell(std::string(kPython) +
                                             " -m torch.distributed.run --nproc_per_node 1 --master_port " +
                                             std::to_string(free_port()) + " --no_python true");
  if (probe.code != 0 && probe.out.find("without libuv support") != std::string::npos) {
    return "this PyTorch's torchrun cannot start its store (built without libuv): " + probe.out.substr(
        probe.out.rfind("RuntimeError"), 80);
  }
  return "";
}

// torchrun with two processes on this machine running `batchcam train ARGS`. Debian 12's
// torchrun (PyTorch 1.13 on Python 3.11) cannot read its default --redirects/--tee of 0,
// hence 1 (stdout to a log and the terminal, each line prefixed with its rank).
std::vector<std::string> torchrun(int port, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"-m", "torch.distributed.run", "--no_python", "--nproc_per_node", "2",
                                   "--master_port", std::to_string(port), "--redirects", "1", "--tee", "1",
                                   BATCHCAM_CLI, "train"};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

// The environment torchrun gives rank `rank` of two.
std::vector<std::string> rank_environment(int rank, int port) {
  return {"WORLD_SIZE=2", "RANK=" + std::to_string(rank), "LOCAL_RANK=" + std::to_string(rank),
          "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port), "OMP_NUM_THREADS=1"};
}

std::vector<nlohmann::json> metrics_lines(const fs::path& run) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(read_text((run / "metrics.jsonl").string()));
  for (std::string line; std::getline(in, line);) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

// The CLI runs below: the default shapes run (6000 training and 1000 test images, batches
// of 128: 46 steps an epoch), 4 epochs, 1 thread per process.
std::vector<std::string> shapes_run(const fs::path& dir, const std::string& name) {
  return {"--epochs", "4", "--out-dir", dir.string(), "--run-name", name, "--threads", "1"};
}

// Polls (up to two minutes) until the file holds `text`: here, a progress line of rank 0
// (without a terminal it writes one each quarter of an epoch).
bool wait_for_text(const fs::path& file, const std::string& text) {
  for (int i = 0; i < 1200; ++i) {
    if (read_text(file.string()).find(text) != std::string::npos) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

// The processes a test started; those still running when it ends early (a failed
// assertion) get SIGTERM and are waited for, so that none outlives the test.
struct Started {
  std::vector<pid_t> running;
  pid_t add(pid_t pid) {
    running.push_back(pid);
    return pid;
  }
  int wait(pid_t pid) {
    running.erase(std::remove(running.begin(), running.end(), pid), running.end());
    return wait_exit(pid);
  }
  ~Started() {
    for (const pid_t pid : running) ::kill(pid, SIGTERM);
    for (const pid_t pid : running) (void)wait_exit(pid);
  }
};
}  // namespace

TEST(DistributedCli, TorchrunTrainsStopsEveryRankAtOneStepAndResumes) {
  if (!core::distributed_available()) GTEST_SKIP() << "built without c10d's Gloo (libgloo-dev)";
  if (const auto why = torchrun_unavailable(); !why.empty()) GTEST_SKIP() << why;
  const auto dir = fs::temp_directory_path() / ("batchcam-torchrun-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto run = dir / "two", log = dir / "two.log";
  Started started;
  // SIGTERM to torchrun (as a cluster's scheduler sends it) a quarter into epoch 2: torchrun
  // passes it on to both ranks, which stop after the same step; rank 0 saves.
  const pid_t launcher = started.add(spawn_process(kPython, torchrun(free_port(), shapes_run(dir, "two")), {}, log.string()));
  ASSERT_TRUE(wait_for_text(log, "epoch 2/4 step 11/46")) << read_text(log.string());
  ::kill(launcher, SIGTERM);
  EXPECT_NE(started.wait(launcher), 0);
  const auto stopped = read_text(log.string());
  EXPECT_EQ(stopped.find("batchcam: error"), std::string::npos) << stopped;
  const auto ck = train::load_checkpoint((run / "last.pt").string());
  ASSERT_GE(ck.epoch, 1) << stopped;
  ASSERT_GT(ck.step, 0) << "stopped mid-epoch: " << stopped;
  EXPECT_NE(stopped.find("batchcam: terminated at epoch " + std::to_string(ck.epoch + 1) + ", step " +
                         std::to_string(ck.step) + ": saved"),
            std::string::npos)
      << stopped;
  const auto progress = nlohmann::json::parse(ck.progress);
  EXPECT_EQ(progress.at("world_size"), 2);
  EXPECT_EQ(progress.at("sums").at("seen").get<double>(), 128.0 * static_cast<double>(ck.step))
      << "the checkpoint's running sums are both ranks' (each saw 64 images a step)";
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 2) << "one run directory and the log";

  // Resumed under torchrun: rank 0 alone writes and prints.
  const pid_t resumed = started.add(spawn_process(kPython, torchrun(free_port(), {"--resume", run.string()}), {}, log.string()));
  ASSERT_EQ(started.wait(resumed), 0) << read_text(log.string());
  const auto output = read_text(log.string());
  EXPECT_NE(output.find("[default0]:Trained simple-cnn on shapes for 4 epochs"), std::string::npos) << output;
  EXPECT_EQ(output.find("[default1]:Trained"), std::string::npos) << "rank 1 prints no summary: " << output;
  const auto epochs = metrics_lines(run);
  ASSERT_EQ(epochs.size(), 4u);
  EXPECT_TRUE(fs::exists(run / "report.html"));

  // The 2-rank run (per-rank BatchNorm statistics) against one process on the same batches,
  // and its checkpoint evaluated again in one process.
  const auto one = test_support::run_shell(std::string(BATCHCAM_CLI) + " train -q --no-report " +
                                           [&] {
                                             std::string a;
                                             for (const auto& x : shapes_run(dir, "one")) a += "'" + x + "' ";
                                             return a;
                                           }());
  ASSERT_EQ(one.code, 0) << one.out;
  const double two_ranks = epochs.back().at("test_accuracy"), one_process = metrics_lines(dir / "one").back().at("test_accuracy");
  std::cout << "test accuracy after 4 epochs: 2 ranks (stopped and resumed) " << 100 * two_ranks << "%, one process "
            << 100 * one_process << "%\n";
  EXPECT_NEAR(two_ranks, one_process, 0.005);
  const auto eval = test_support::run_shell(std::string(BATCHCAM_CLI) + " eval '" + (run / "last.pt").string() +
                                            "' --json --faithfulness-count 0 --randomization-count 0 2>/dev/null");
  ASSERT_EQ(eval.code, 0) << eval.out;
  EXPECT_EQ(nlohmann::json::parse(eval.out).at("accuracy").get<double>(), two_ranks)
      << "one process evaluates the 2-rank checkpoint as the ranks did together";
  fs::remove_all(dir);
}

TEST(DistributedCli, ARankKilledMidRunStopsTheOtherAndTheCheckpointResumes) {
  if (!core::distributed_available()) GTEST_SKIP() << "built without c10d's Gloo (libgloo-dev)";
  const auto dir = fs::temp_directory_path() / ("batchcam-killed-rank-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto run = dir / "run";
  auto args = shapes_run(dir, "run");
  args.insert(args.begin(), "train");
  args.insert(args.end(), {"--dist-timeout", "30"});
  const int port = free_port();
  const auto log0 = (dir / "rank0.log").string(), log1 = (dir / "rank1.log").string();
  Started started;
  const pid_t rank0 = started.add(spawn_process(BATCHCAM_CLI, args, rank_environment(0, port), log0));
  const pid_t rank1 = started.add(spawn_process(BATCHCAM_CLI, args, rank_environment(1, port), log1));
  ASSERT_TRUE(wait_for_text(log0, "epoch 2/4 step 11/46")) << read_text(log0);
  ::kill(rank1, SIGKILL);  // a machine lost, an out-of-memory kill
  EXPECT_EQ(started.wait(rank1), 128 + SIGKILL);
  EXPECT_EQ(started.wait(rank0), 1) << read_text(log0);
  const auto failed = read_text(log0);
  EXPECT_NE(failed.find("batchcam: error: distributed "), std::string::npos) << failed;
  EXPECT_NE(failed.find("failed on rank 0: rank 1 stopped or did not answer"), std::string::npos) << failed;
  const auto error = failed.substr(failed.find("batchcam: error"));
  std::cout << error.substr(0, error.find('\n')) << "\n";  // in the test log
  const auto ck = train::load_checkpoint((run / "last.pt").string());  // intact
  EXPECT_EQ(ck.epoch, 1);
  EXPECT_EQ(ck.step, 0);

  // Both ranks started again continue the run from its last checkpoint.
  const std::vector<std::string> resume = {"train", "--resume", run.string()};
  const int port2 = free_port();
  const pid_t again0 = started.add(spawn_process(BATCHCAM_CLI, resume, rank_environment(0, port2), log0));
  const pid_t again1 = started.add(spawn_process(BATCHCAM_CLI, resume, rank_environment(1, port2), log1));
  EXPECT_EQ(started.wait(again1), 0) << read_text(log1);
  EXPECT_EQ(started.wait(again0), 0) << read_text(log0);
  EXPECT_EQ(metrics_lines(run).size(), 4u);
  EXPECT_TRUE(fs::exists(run / "report.html"));
  fs::remove_all(dir);
}

TEST(DistributedCli, TwoHostsInNetworkNamespacesTrainOverTcp) {
  if (!core::distributed_available()) GTEST_SKIP() << "built without c10d's Gloo (libgloo-dev)";
  if (::geteuid() != 0) GTEST_SKIP() << "network namespaces need root (CI runs as root)";
  // Two "machines": network namespaces joined by a veth pair, one rank in each, each with its
  // own loopback, so that the ranks can reach each other only over 10.231.0.0/24.
  const std::string id = std::to_string(::getpid() % 100000);
  const std::string a = "bcam-a-" + id, b = "bcam-b-" + id, link_a = "bca" + id, link_b = "bcb" + id;
  const auto shell = [](const std::string& command) { return test_support::run_shell(command); };
  const auto made = shell("ip netns add " + a + " && ip netns add " + b);
  if (made.code != 0) {
    shell("ip netns del " + a + "; ip netns del " + b);
    GTEST_SKIP() << "cannot create network namespaces here (ip netns add: " << made.out << ")";
  }
  const auto set_up = shell("ip link add " + link_a + " type veth peer name " + link_b + " && ip link set " + link_a +
                            " netns " + a + " && ip link set " + link_b + " netns " + b + " && ip -n " + a +
                            " addr add 10.231.0.1/24 dev " + link_a + " && ip -n " + b + " addr add 10.231.0.2/24 dev " +
                            link_b + " && ip -n " + a + " link set " + link_a + " up && ip -n " + b + " link set " +
                            link_b + " up && ip -n " + a + " link set lo up && ip -n " + b + " link set lo up");
  const auto dir = fs::temp_directory_path() / ("batchcam-two-hosts-" + id);
  fs::remove_all(dir);
  fs::create_directories(dir);
  test_support::CommandResult result{-1, ""};
  if (set_up.code == 0) {
    // torchrun on each machine would set these; LOCAL_RANK is 0 on both.
    const auto rank = [&](const std::string& ns, const std::string& link, int r) {
      return "ip netns exec " + ns + " env WORLD_SIZE=2 RANK=" + std::to_string(r) +
             " LOCAL_RANK=0 MASTER_ADDR=10.231.0.1 MASTER_PORT=29500 GLOO_SOCKET_IFNAME=" + link +
             " OMP_NUM_THREADS=1 timeout -k 5 120 '" + BATCHCAM_CLI + "' train --train-size 512 --test-size 64 " +
             "--batch-size 64 --epochs 1 --no-report --dist-timeout 30 --out-dir '" + dir.string() +
             "' --run-name run > '" + (dir / ("rank" + std::to_string(r))).string() + "' 2>&1";
    };
    result = shell(rank(a, link_a, 0) + " & " + rank(b, link_b, 1) + "; s1=$?; wait $!; s0=$?; cat '" +
                   dir.string() + "'/rank*; [ $s0 -eq 0 ] && [ $s1 -eq 0 ]");
  }
  // Deleting the namespaces takes the veth pair with them; the link goes too where setting
  // up failed before it moved into a namespace.
  shell("ip netns del " + a + "; ip netns del " + b + "; ip link del " + link_a + " 2>/dev/null");
  ASSERT_EQ(set_up.code, 0) << set_up.out;
  EXPECT_EQ(result.code, 0) << result.out;
  EXPECT_NE(result.out.find("2 processes over Gloo"), std::string::npos) << result.out;
  EXPECT_EQ(metrics_lines(dir / "run").size(), 1u) << result.out;
  fs::remove_all(dir);
}

TEST(DistributedCli, WhenRankZeroCannotWriteTheRunDirectoryEveryRankStops) {
  if (!core::distributed_available()) GTEST_SKIP() << "built without c10d's Gloo (libgloo-dev)";
  const auto dir = fs::temp_directory_path() / ("batchcam-taken-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "run");
  std::ofstream(dir / "run" / "metrics.jsonl") << "{}\n";  // the name holds a run already
  // Both ranks get --dist-timeout 300 and 120 s to live: rank 1 must not wait for the timeout.
  const int port = free_port();
  std::string command;
  for (int r = 0; r < 2; ++r) {
    std::string env;
    for (const auto& e : rank_environment(r, port)) env += e + " ";
    command += "env " + env + "timeout -k 5 120 '" + BATCHCAM_CLI + "' train --epochs 1 --train-size 256 " +
               "--test-size 64 --dist-timeout 300 --out-dir '" + dir.string() + "' --run-name run > '" +
               (dir / ("rank" + std::to_string(r))).string() + "' 2>&1 & ";
  }
  command += "wait %1; s0=$?; wait %2; s1=$?; cat '" + dir.string() + "'/rank*; echo \"exit $s0 $s1\"";
  const auto r = test_support::run_shell("bash -c \"$(cat <<'EOS'\n" + command + "\nEOS\n)\"");
  EXPECT_NE(r.out.find("exit 1 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("holds a run"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("batchcam: error: rank 1: rank 0 could not write the run directory (its error says why)"),
            std::string::npos)
      << r.out;
  fs::remove_all(dir);
}
