#pragma once
// The CAM methods by name (light: config files and the command line name them).

#include <string>
#include <vector>

namespace batchcam::cam {

/// The class activation maps batchcam computes, each from the features A [B, D, h, w] and
/// the gradient G = dz_t/dA of each sample's target score (one gradient call for the batch),
/// then ReLU, upsampling and per-sample min-max normalisation. Sums run over the channels d
/// and, for weights, over the positions (x, y):
/// - grad_cam (Selvaraju et al. 2017): ReLU(sum_d mean_xy(G_d) A_d)
/// - grad_cam_pp (Chattopadhay et al. 2018): ReLU(sum_d w_d A_d), w_d = sum_xy a_dxy ReLU(G_dxy),
///   a_dxy = G^2 / (2 G^2 + sum_xy(A_d) G^3) (0 where that denominator is 0)
/// - xgrad_cam (Fu et al. 2020): ReLU(sum_d w_d A_d), w_d = sum_xy(G_d A_d) / sum_xy(A_d)
///   (0 where sum_xy(A_d) is 0)
/// - hires_cam (Draelos and Carin 2020): ReLU(sum_d G_d * A_d)
/// - layer_cam (Jiang et al. 2021): ReLU(sum_d ReLU(G_d) * A_d)
/// - cam (Zhou et al. 2016), for heads that are global average pooling and one linear layer:
///   ReLU(sum_d W_td A_d / (h w)) in closed form, no gradient call; on such heads G_d = W_td /
///   (h w) everywhere, so it equals Grad-CAM (the 1 / (h w) keeps Grad-CAM's scale).
enum class CamMethod { grad_cam, grad_cam_pp, xgrad_cam, hires_cam, layer_cam, cam };
/// "grad-cam", "grad-cam++", "xgrad-cam", "hirescam", "layercam", "cam", in enum order.
const std::vector<std::string>& cam_method_names();
const std::string& to_string(CamMethod method);
/// Throws std::invalid_argument naming the value and the choices.
CamMethod parse_cam_method(const std::string& name);

}  // namespace batchcam::cam
