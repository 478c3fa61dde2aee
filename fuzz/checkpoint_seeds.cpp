// Writes the checkpoint fuzzer's seed into DIR: a checkpoint (format 3) of a SimpleCNN with
// its Adam state after one step.
//   checkpoint_seeds DIR

#include "batchcam/train/checkpoint.h"
#include "batchcam/train/optimization.h"

#include <torch/torch.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: checkpoint_seeds DIR\n");
    return 2;
  }
  const std::string dir = argv[1];
  batchcam::train::TrainConfig config;
  config.dataset = "mnist";
  batchcam::models::ModelSpec spec{"simple-cnn", 1, 10, 28, ""};
  auto model = batchcam::models::make_model(spec);
  auto optimizer = batchcam::train::make_optimizer(config, model->parameters());
  const auto loss = model->forward(torch::rand({2, 1, 28, 28})).logsumexp(1).sum();
  loss.backward();
  optimizer->step();
  batchcam::train::TrainingState state;
  state.optimizer = optimizer.get();
  const batchcam::data::Normalization normalization{{0.1307}, {0.3081}};
  batchcam::train::save_checkpoint(dir + "/checkpoint.pt", *model, spec, config, 1, normalization,
                                   torch::rand({10, 28, 28}), state);
  return 0;
}
