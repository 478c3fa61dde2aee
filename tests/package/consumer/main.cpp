// A program of a batchcam user, built outside batchcam's tree: Batch-CAM and the Prototype
// Loss on a model from the registry, with nothing but batchcam::core (and so LibTorch).
#include <batchcam/cam/grad_cam.h>
#include <batchcam/losses/cam_losses.h>
#include <batchcam/models/registry.h>

#include <torch/torch.h>

#include <iostream>

int main() {
  torch::manual_seed(0);
  auto model = batchcam::models::make_model({"simple-cnn", 1, 3, 16});
  const auto x = torch::rand({4, 1, 16, 16});
  const auto y = torch::tensor({0, 1, 2, 1}, torch::kLong);
  const auto out = batchcam::cam::grad_cam(
      *model, x, y, batchcam::cam::GradCamOptions().create_graph(true).output_size({16, 16}));
  const auto prototypes = batchcam::losses::image_prototypes((x * 255).to(torch::kUInt8), y, 3);
  const auto loss = batchcam::losses::prototype_loss(out.cam.maps, y, prototypes, batchcam::losses::Distance::l1);
  loss.backward();
  const bool ok = out.cam.maps.sizes() == torch::IntArrayRef({4, 16, 16}) && out.cam.maps.min().item<float>() >= 0 &&
                  out.cam.maps.max().item<float>() <= 1 && loss.item<float>() > 0;
  std::cout << "batchcam consumer: maps " << out.cam.maps.sizes() << ", prototype loss " << loss.item<float>()
            << (ok ? ", ok" : ", WRONG") << "\n";
  return ok ? 0 : 1;
}
