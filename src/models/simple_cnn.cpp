#include "batchcam/models/simple_cnn.h"

#include <torch/torch.h>

namespace batchcam::models {

namespace {
torch::nn::Sequential conv_bn_relu_twice(int64_t in, int64_t out, bool pool_first) {
  namespace nn = torch::nn;
  nn::Sequential s;
  if (pool_first) s->push_back(nn::MaxPool2d(nn::MaxPool2dOptions(2)));
  s->push_back(nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1).bias(false)));
  s->push_back(nn::BatchNorm2d(out));
  s->push_back(nn::ReLU(nn::ReLUOptions(true)));
  s->push_back(nn::Conv2d(nn::Conv2dOptions(out, out, 3).padding(1).bias(false)));
  s->push_back(nn::BatchNorm2d(out));
  s->push_back(nn::ReLU(nn::ReLUOptions(true)));
  return s;
}
}  // namespace

SimpleCNNImpl::SimpleCNNImpl(const SimpleCNNOptions& options) : options_(options) {
  TORCH_CHECK(options.in_channels() > 0 && options.num_classes() > 1 && options.width() > 0,
              "SimpleCNN needs in_channels > 0, num_classes > 1 and width > 0");
  const int64_t w = options.width();
  add_stage("block1", conv_bn_relu_twice(options.in_channels(), w, false));
  add_stage("block2", conv_bn_relu_twice(w, 2 * w, true));
  add_stage("block3", conv_bn_relu_twice(2 * w, 4 * w, true));
  fc_ = register_module("fc", torch::nn::Linear(4 * w, options.num_classes()));
}

torch::Tensor SimpleCNNImpl::classify(const torch::Tensor& a) {
  return fc_->forward(a.mean({2, 3}));
}

CamModel::NamedModules SimpleCNNImpl::classifier_modules() const {
  return {{"fc", fc_.ptr()}};
}

}  // namespace batchcam::models
