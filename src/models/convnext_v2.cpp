#include "batchcam/models/convnext_v2.h"

#include <torch/torch.h>

#include <stdexcept>

namespace batchcam::models {

namespace nn = torch::nn;

ConvNeXtV2Options convnext_v2_variant(const std::string& variant, int64_t in_channels, int64_t num_classes) {
  ConvNeXtV2Options o(in_channels, num_classes);
  if (variant == "atto") return o.depths({2, 2, 6, 2}).dims({40, 80, 160, 320});
  if (variant == "femto") return o.depths({2, 2, 6, 2}).dims({48, 96, 192, 384});
  if (variant == "pico") return o.depths({2, 2, 6, 2}).dims({64, 128, 256, 512});
  if (variant == "nano") return o.depths({2, 2, 8, 2}).dims({80, 160, 320, 640});
  if (variant == "tiny") return o.depths({3, 3, 9, 3}).dims({96, 192, 384, 768});
  throw std::invalid_argument("unknown ConvNeXt-V2 variant '" + variant + "'; expected atto, femto, pico, nano or tiny");
}

ChannelsFirstLayerNormImpl::ChannelsFirstLayerNormImpl(int64_t channels, double eps) : eps_(eps) {
  weight = register_parameter("weight", torch::ones({channels}));
  bias = register_parameter("bias", torch::zeros({channels}));
}

torch::Tensor ChannelsFirstLayerNormImpl::forward(const torch::Tensor& x) {
  const auto mean = x.mean(1, true);
  const auto var = (x - mean).square().mean(1, true);
  const auto y = (x - mean) / torch::sqrt(var + eps_);
  return weight.view({1, -1, 1, 1}) * y + bias.view({1, -1, 1, 1});
}

GRNImpl::GRNImpl(int64_t dim) {
  gamma = register_parameter("gamma", torch::zeros({1, 1, 1, dim}));
  beta = register_parameter("beta", torch::zeros({1, 1, 1, dim}));
}

torch::Tensor GRNImpl::forward(const torch::Tensor& x) {
  const auto gx = x.square().sum({1, 2}, true).sqrt();   // [B, 1, 1, C]: per-sample spatial L2 norm
  const auto nx = gx / (gx.mean(-1, true) + 1e-6);       // divisive normalisation over channels
  return gamma * (x * nx) + beta + x;
}

ConvNeXtV2BlockImpl::ConvNeXtV2BlockImpl(int64_t dim, double drop_path) : drop_path_(drop_path) {
  dwconv = register_module("dwconv", nn::Conv2d(nn::Conv2dOptions(dim, dim, 7).padding(3).groups(dim)));
  norm = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({dim}).eps(1e-6)));
  pwconv1 = register_module("pwconv1", nn::Linear(dim, 4 * dim));
  grn = register_module("grn", GRN(4 * dim));
  pwconv2 = register_module("pwconv2", nn::Linear(4 * dim, dim));
}

torch::Tensor ConvNeXtV2BlockImpl::forward(const torch::Tensor& x) {
  // LibTorch's CPU depthwise convolution is very slow on contiguous NCHW input (about 40 s
  // forward+backward for 64x40x28x28 here) and fast in channels-last (0.02 s): oneDNN takes it.
  auto h = dwconv(x.contiguous(at::MemoryFormat::ChannelsLast)).permute({0, 2, 3, 1});  // channels last
  h = pwconv2(grn(torch::gelu(pwconv1(norm(h))))).permute({0, 3, 1, 2});
  if (is_training() && drop_path_ > 0.0) {
    // DropPath: drop the whole residual branch per sample, rescale the kept ones.
    const double keep = 1.0 - drop_path_;
    const auto mask = torch::empty({h.size(0), 1, 1, 1}, h.options()).bernoulli_(keep);
    h = h * mask / keep;
  }
  return x + h;
}

ConvNeXtV2Impl::ConvNeXtV2Impl(const ConvNeXtV2Options& o, std::string variant)
    : options_(o), variant_(std::move(variant)) {
  TORCH_CHECK(o.depths().size() == 4 && o.dims().size() == 4, "ConvNeXtV2 needs 4 depths and 4 dims");
  TORCH_CHECK(o.in_channels() > 0 && o.num_classes() > 1, "ConvNeXtV2 needs in_channels > 0 and num_classes > 1");
  const auto& dims = o.dims();
  auto downsample_layers = register_module("downsample_layers", nn::ModuleList());
  auto stages = register_module("stages", nn::ModuleList());
  downsample_layers->push_back(nn::Sequential(
      o.small_input() ? nn::Conv2d(nn::Conv2dOptions(o.in_channels(), dims[0], 3).padding(1))
                      : nn::Conv2d(nn::Conv2dOptions(o.in_channels(), dims[0], 4).stride(4)),
      ChannelsFirstLayerNorm(dims[0])));
  for (int i = 1; i < 4; ++i) {
    downsample_layers->push_back(
        nn::Sequential(ChannelsFirstLayerNorm(dims[i - 1]), nn::Conv2d(nn::Conv2dOptions(dims[i - 1], dims[i], 2).stride(2))));
  }
  int64_t total_blocks = 0;
  for (auto d : o.depths()) total_blocks += d;
  int64_t block = 0;
  for (int i = 0; i < 4; ++i) {
    nn::Sequential stage;
    for (int64_t j = 0; j < o.depths()[i]; ++j, ++block) {
      // Stochastic depth grows linearly from 0 to drop_path_rate, as in the reference.
      const double rate = total_blocks > 1 ? o.drop_path_rate() * block / (total_blocks - 1) : 0.0;
      stage->push_back(ConvNeXtV2Block(dims[i], rate));
    }
    stages->push_back(stage);
  }
  for (int i = 0; i < 4; ++i) {
    auto down = std::dynamic_pointer_cast<nn::SequentialImpl>(downsample_layers->ptr(i));
    auto stage = std::dynamic_pointer_cast<nn::SequentialImpl>(stages->ptr(i));
    const auto idx = std::to_string(i);
    add_stage(
        "stages." + idx, [down, stage](const torch::Tensor& x) { return stage->forward(down->forward(x)); },
        {{"downsample_layers." + idx, down}, {"stages." + idx, stage}});
  }
  norm_ = register_module("norm", nn::LayerNorm(nn::LayerNormOptions({dims[3]}).eps(1e-6)));
  head_ = register_module("head", nn::Linear(dims[3], o.num_classes()));
  // Reference initialisation: weights from a normal (std 0.02) truncated to [-2, 2]
  // (LibTorch 1.13 has no trunc_normal_; at this std the cut almost never applies), zero biases.
  torch::NoGradGuard no_grad;
  for (auto& m : modules(false)) {
    if (auto* c = m->as<nn::Conv2d>()) {
      c->weight.normal_(0.0, 0.02).clamp_(-2.0, 2.0);
      c->bias.zero_();
    } else if (auto* l = m->as<nn::Linear>()) {
      l->weight.normal_(0.0, 0.02).clamp_(-2.0, 2.0);
      l->bias.zero_();
    }
  }
  if (o.small_input()) set_target_layer("stages.2");
}

torch::Tensor ConvNeXtV2Impl::classify(const torch::Tensor& a) { return head_(norm_(a.mean({2, 3}))); }

CamModel::NamedModules ConvNeXtV2Impl::classifier_modules() const { return {{"norm", norm_.ptr()}, {"head", head_.ptr()}}; }

}  // namespace batchcam::models
