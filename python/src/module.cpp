// batchcam._C: the tensor-level library (batchcam::core) for PyTorch. Tensors in and out,
// autograd graphs kept (the losses' gradients reach the caller's model), CPU or CUDA.
// python/batchcam/__init__.py wraps these with keyword arguments, defaults and docstrings.

#include "batchcam/cam/grad_cam.h"
#include "batchcam/core/runtime.h"
#include "batchcam/eval/evaluate.h"
#include "batchcam/losses/cam_losses.h"
#include "batchcam/losses/distances.h"

#include <pybind11/functional.h>
#include <pybind11/stl.h>
#include <torch/extension.h>

#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;
using torch::Tensor;

namespace {

namespace cam = batchcam::cam;
namespace eval = batchcam::eval;
namespace losses = batchcam::losses;

using Forward = std::function<Tensor(const Tensor&)>;

cam::GradCamOptions cam_options(const std::string& method, bool create_graph, const std::vector<int64_t>& output_size,
                                double eps) {
  if (!output_size.empty() && output_size.size() != 2) {
    throw std::invalid_argument("output_size must be (H, W), got " + std::to_string(output_size.size()) + " values");
  }
  return cam::GradCamOptions().method(cam::parse_cam_method(method)).create_graph(create_graph).output_size(output_size).eps(eps);
}

std::pair<Tensor, Tensor> pair_of(const cam::CamResult& r) { return {r.maps, r.raw}; }

void require_forward(const Forward& forward) {
  if (!forward) throw std::invalid_argument("forward must be a callable taking x and returning logits [B, K]");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "batchcam's tensor-level library (C++); use the functions of the batchcam package.";

  // LibTorch's errors (TORCH_CHECK) as Python's, with their message and without the C++
  // backtrace; std::invalid_argument is pybind11's ValueError already.
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
    } catch (const c10::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    } catch (const c10::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    }
  });
  // The GIL is released while batchcam computes: autograd may run Python code of the
  // caller's model (hooks, custom Functions) on its own threads, and a Python `forward`
  // given to a metric takes the GIL back when it is called.
  const auto no_gil = py::call_guard<py::gil_scoped_release>();

  m.def("version", &batchcam::core::version);
  m.def("cam_methods", &cam::cam_method_names);

  m.def(
      "grad_cam",
      [](const Tensor& features, const Tensor& logits, const Tensor& targets, const std::string& method,
         bool create_graph, const std::vector<int64_t>& output_size, double eps) {
        return pair_of(cam::grad_cam(features, logits, targets, cam_options(method, create_graph, output_size, eps)));
      },
      py::arg("features"), py::arg("logits"), py::arg("targets"), py::arg("method"), py::arg("create_graph"),
      py::arg("output_size"), py::arg("eps"), no_gil);
  m.def(
      "cam_from_gradients",
      [](const Tensor& features, const Tensor& gradients, const std::string& method, bool create_graph,
         const std::vector<int64_t>& output_size, double eps) {
        return pair_of(cam::cam_from_gradients(features, gradients, cam_options(method, create_graph, output_size, eps)));
      },
      py::arg("features"), py::arg("gradients"), py::arg("method"), py::arg("create_graph"), py::arg("output_size"),
      py::arg("eps"), no_gil);
  m.def(
      "class_activation_map",
      [](const Tensor& features, const Tensor& class_weights, bool create_graph, const std::vector<int64_t>& output_size,
         double eps) {
        return pair_of(cam::class_activation_map(features, class_weights,
                                                 cam_options("cam", create_graph, output_size, eps)));
      },
      py::arg("features"), py::arg("class_weights"), py::arg("create_graph"), py::arg("output_size"), py::arg("eps"),
      no_gil);
  m.def("normalize_maps", &cam::normalize_maps, py::arg("maps"), py::arg("eps"), no_gil);

  m.def(
      "distance",
      [](const std::string& name, const Tensor& a, const Tensor& b) {
        return losses::distance(losses::parse_distance(name), a, b);
      },
      py::arg("name"), py::arg("a"), py::arg("b"), no_gil);
  m.def(
      "ssim",
      [](const Tensor& a, const Tensor& b, int64_t window, double sigma, double k1, double k2, double data_range) {
        losses::SsimOptions o;
        o.window = window;
        o.sigma = sigma;
        o.k1 = k1;
        o.k2 = k2;
        o.data_range = data_range;
        return losses::ssim(a, b, o);
      },
      py::arg("a"), py::arg("b"), py::arg("window"), py::arg("sigma"), py::arg("k1"), py::arg("k2"),
      py::arg("data_range"), no_gil);

  m.def(
      "image_prototypes",
      [](const Tensor& images, const Tensor& labels, int64_t num_classes) {
        return losses::image_prototypes(images, labels, num_classes);
      },
      py::arg("images"), py::arg("labels"), py::arg("num_classes"), no_gil);
  m.def(
      "batch_prototypes",
      [](const Tensor& maps, const Tensor& labels, int64_t num_classes) {
        return losses::batch_prototypes(maps, labels, num_classes);
      },
      py::arg("maps"), py::arg("labels"), py::arg("num_classes"), no_gil);
  m.def(
      "ema_prototypes",
      [](const Tensor& prototypes, const Tensor& maps, const Tensor& labels, double momentum) {
        return losses::ema_prototypes(prototypes, maps, labels, momentum);
      },
      py::arg("prototypes"), py::arg("maps"), py::arg("labels"), py::arg("momentum"), no_gil);
  m.def(
      "prototype_loss",
      [](const Tensor& maps, const Tensor& targets, const Tensor& prototypes, const std::string& distance) {
        return losses::prototype_loss(maps, targets, prototypes, losses::parse_distance(distance));
      },
      py::arg("maps"), py::arg("targets"), py::arg("prototypes"), py::arg("distance"), no_gil);
  m.def(
      "batch_cam_loss",
      [](const Tensor& maps, const Tensor& targets, int64_t num_classes, const std::string& distance,
         bool detach_target) {
        return losses::batch_cam_loss(maps, targets, num_classes, losses::parse_distance(distance), detach_target);
      },
      py::arg("maps"), py::arg("targets"), py::arg("num_classes"), py::arg("distance"), py::arg("detach_target"),
      no_gil);

  m.def("log_probability_input_gradients", &losses::log_probability_input_gradients, py::arg("x"), py::arg("logits"),
        py::arg("create_graph"), no_gil);
  m.def("rrr_loss", &losses::rrr_loss, py::arg("gradients"), py::arg("masks"), no_gil);
  m.def(
      "prototype_rrr_loss",
      [](const Tensor& gradients, const Tensor& targets, const Tensor& prototypes) {
        return losses::prototype_rrr_loss(gradients, targets, prototypes);
      },
      py::arg("gradients"), py::arg("targets"), py::arg("prototypes"), no_gil);

  m.def("mass_share", &eval::mass_share, py::arg("maps"), py::arg("masks"), no_gil);
  m.def("centre_distance", &eval::centre_distance, py::arg("masks"), no_gil);
  m.def("pointing_game", &eval::pointing_game, py::arg("maps"), py::arg("masks"), no_gil);
  m.def("decoy_following", &eval::decoy_following, py::arg("predicted"), py::arg("labels"), py::arg("decoy_labels"),
        no_gil);
  m.def("curve_auc", &eval::curve_auc, py::arg("curves"), no_gil);
  m.def(
      "deletion_insertion_curves",
      [](const Forward& forward, const Tensor& x, const Tensor& targets, const Tensor& maps, const Tensor& baseline,
         int64_t steps) {
        require_forward(forward);
        return eval::deletion_insertion_curves(forward, x, targets, maps, baseline, steps);
      },
      py::arg("forward"), py::arg("x"), py::arg("targets"), py::arg("maps"), py::arg("baseline"), py::arg("steps"),
      no_gil);
  m.def("noisy_linear_imputation", &eval::noisy_linear_imputation, py::arg("x"), py::arg("removed"), py::arg("noise"),
        py::arg("seed"), no_gil);
  m.def(
      "road_curves",
      [](const Forward& forward, const Tensor& x, const Tensor& targets, const Tensor& maps,
         const std::vector<double>& fractions, double noise, uint64_t seed) {
        require_forward(forward);
        const auto r = eval::road_curves(forward, x, targets, maps, fractions, noise, seed);
        return std::vector<Tensor>{r.morf, r.lerf, r.morf_correct, r.lerf_correct};
      },
      py::arg("forward"), py::arg("x"), py::arg("targets"), py::arg("maps"), py::arg("fractions"), py::arg("noise"),
      py::arg("seed"), no_gil);
  m.def(
      "confidence_change",
      [](const Forward& forward, const Tensor& x, const Tensor& explained, const Tensor& targets) {
        require_forward(forward);
        return eval::confidence_change(forward, x, explained, targets);
      },
      py::arg("forward"), py::arg("x"), py::arg("explained"), py::arg("targets"), no_gil);
}
