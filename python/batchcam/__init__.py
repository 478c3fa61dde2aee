"""Batch-CAM for PyTorch training loops.

Differentiable, batched class activation maps (Grad-CAM and its relatives) computed with one
gradient call for the whole batch, the two Batch-CAM regularisers (the Prototype Loss and the
Batch-CAM Loss) with L1, L2 or SSIM as distance, and the tensor-level evaluation metrics.
Every function takes and returns torch tensors on the CPU or a CUDA device; maps and losses
stay in the autograd graph, so their gradients reach the caller's model.

A training step (``model`` any CNN, ``layer`` the module whose output is explained)::

    hook = batchcam.FeatureHook(model.layer4)
    logits = model(x)
    maps = batchcam.grad_cam(hook.features, logits, y, output_size=x.shape[-2:])
    loss = F.cross_entropy(logits, y) + 0.5 * batchcam.prototype_loss(maps, y, prototypes)
    loss.backward()

The maths is batchcam's C++ library (batchcam::core); errors raise ValueError (a bad
name or option) or RuntimeError (a bad tensor) with its message.
"""

from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import torch

from . import _C

__all__ = [
    "FeatureHook", "RoadCurves", "batch_cam_loss", "batch_prototypes", "cam_from_gradients", "cam_methods",
    "centre_distance", "class_activation_map", "confidence_change", "curve_auc", "decoy_following",
    "deletion_insertion_curves", "distance", "ema_prototypes", "grad_cam", "image_prototypes", "input_gradients",
    "l1", "l2", "mass_share", "noisy_linear_imputation", "normalize_maps", "pointing_game", "prototype_loss",
    "prototype_rrr_loss", "road_curves", "rrr_loss", "ssim",
]

__version__: str = _C.version()

Tensor = torch.Tensor
Forward = Callable[[Tensor], Tensor]


def cam_methods() -> List[str]:
    """The CAM methods' names: "grad-cam", "grad-cam++", "xgrad-cam", "hirescam", "layercam", "cam"."""
    return list(_C.cam_methods())


def _size(output_size: Optional[Sequence[int]]) -> List[int]:
    return [] if output_size is None else [int(s) for s in output_size]


def _targets(targets: Tensor) -> Tensor:
    # Any integer type is accepted; the library computes with int64.
    if not targets.dtype.is_floating_point and targets.dtype != torch.bool and targets.dtype != torch.int64:
        return targets.long()
    return targets


def grad_cam(features: Tensor, logits: Tensor, targets: Optional[Tensor] = None, *, method: str = "grad-cam",
             create_graph: bool = True, output_size: Optional[Sequence[int]] = None, eps: float = 1e-7,
             raw: bool = False) -> Tensor:
    """Batched Grad-CAM (or another method) from one gradient call.

    Args:
        features: A [B, D, h, w], the explained layer's output, in the autograd graph of
            ``logits`` (for example kept by :class:`FeatureHook` during the forward pass).
        logits: [B, K]; each row must depend on its own sample only (no BatchNorm in
            training mode after the explained layer).
        targets: [B] integer classes in [0, K); None explains the predicted classes.
        method: one of :func:`cam_methods` except "cam" (see :func:`class_activation_map`).
        create_graph: keep the gradient's graph so that a loss on the maps trains the model
            (default); False for explanations (the maps are then constants).
        output_size: (H, W) to upsample the maps to (bilinear, align_corners=False); None
            keeps h x w.
        eps: added to the denominator of the per-sample min-max normalisation.
        raw: return the map after ReLU, before upsampling and normalisation, [B, h, w].

    Returns:
        [B, H, W] maps in [0, 1], each the map of sample i for class targets[i] as if it were
        computed alone (float32, or float64 for float64 features).
    """
    if targets is None:
        targets = logits.detach().argmax(1)
    maps, raw_maps = _C.grad_cam(features, logits, _targets(targets), method, create_graph, _size(output_size), eps)
    return raw_maps if raw else maps


def cam_from_gradients(features: Tensor, gradients: Tensor, *, method: str = "grad-cam", create_graph: bool = True,
                       output_size: Optional[Sequence[int]] = None, eps: float = 1e-7, raw: bool = False) -> Tensor:
    """The map of ``method`` from features A and the gradients G = dz_t/dA of each sample's
    target score (both [B, D, h, w]), for callers that computed G themselves. Arguments
    and result as :func:`grad_cam`; differentiable in both inputs when create_graph."""
    maps, raw_maps = _C.cam_from_gradients(features, gradients, method, create_graph, _size(output_size), eps)
    return raw_maps if raw else maps


def class_activation_map(features: Tensor, class_weights: Tensor, *, create_graph: bool = True,
                         output_size: Optional[Sequence[int]] = None, eps: float = 1e-7, raw: bool = False) -> Tensor:
    """CAM in closed form (Zhou et al. 2016) for a head of global average pooling and one
    linear layer: features [B, D, h, w] and each sample's classifier row W_t [B, D]
    (``fc.weight[targets]``) -> ReLU(sum_d W_td A_d / (h w)), normalised as :func:`grad_cam`."""
    maps, raw_maps = _C.class_activation_map(features, class_weights, create_graph, _size(output_size), eps)
    return raw_maps if raw else maps


def normalize_maps(maps: Tensor, eps: float = 1e-7) -> Tensor:
    """Per-sample min-max normalisation of [B, H, W]: (m - min) / (max - min + eps)."""
    return _C.normalize_maps(maps, eps)


class FeatureHook:
    """Keeps the output of ``layer`` at each forward pass, as ``features`` (the A that
    :func:`grad_cam` explains). Use it as a context manager, or call :meth:`remove`."""

    def __init__(self, layer: torch.nn.Module) -> None:
        self.features: Optional[Tensor] = None
        self._handle = layer.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, inputs: Tuple[Tensor, ...], output: Tensor) -> None:
        self.features = output

    def remove(self) -> None:
        """Stops keeping the layer's output."""
        self._handle.remove()

    def __enter__(self) -> "FeatureHook":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def distance(name: str, a: Tensor, b: Tensor) -> Tensor:
    """``name`` "l1" (mean |a - b|), "l2" (mean (a - b)^2) or "ssim" (1 - SSIM) between maps
    a, b [B, H, W] in [0, 1] -> [B], averaged over pixels; differentiable in both."""
    return _C.distance(name, a, b)


def l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute difference per sample: [B, H, W] x 2 -> [B]."""
    return _C.distance("l1", a, b)


def l2(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference per sample: [B, H, W] x 2 -> [B]."""
    return _C.distance("l2", a, b)


def ssim(a: Tensor, b: Tensor, *, window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
         data_range: float = 1.0) -> Tensor:
    """SSIM of Wang et al. 2004 per sample (a similarity: 1 for identical maps), Gaussian
    window (shrunk, with sigma, to maps smaller than it), "valid" windows only, mean of the
    SSIM map: [B, H, W] x 2 -> [B]."""
    return _C.ssim(a, b, window, sigma, k1, k2, data_range)


def image_prototypes(images: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Global class prototypes: P_c = the mean over the images of class c of the
    channel-averaged image, min-max normalised to [0, 1].

    Args:
        images: [N, C, H, W], uint8 (0..255) or floating point with values in [0, 1].
        labels: [N] integer classes in [0, num_classes).
    Returns:
        [num_classes, H, W] float32 on the images' device; a class without images gets zeros.
    """
    return _C.image_prototypes(images, _targets(labels), num_classes).to(images.device)


def batch_prototypes(maps: Tensor, labels: Tensor, num_classes: int) -> Tuple[Tensor, Tensor]:
    """In-batch class means of maps [B, H, W] -> (Q [K, H, W], zero for absent classes;
    counts [K] int64)."""
    q, counts = _C.batch_prototypes(maps, _targets(labels), num_classes)
    return q, counts


def ema_prototypes(prototypes: Tensor, maps: Tensor, labels: Tensor, momentum: float = 0.99) -> Tensor:
    """The cam-ema prototype update: P_c <- momentum P_c + (1 - momentum) Q_c for each class
    present in the batch, Q detached. Returns the new [K, H, W]."""
    return _C.ema_prototypes(prototypes, maps, _targets(labels), momentum)


def prototype_loss(maps: Tensor, targets: Tensor, prototypes: Tensor, distance: str = "l1") -> Tensor:
    """The Prototype Loss: (1/B) sum_i D(maps_i, prototypes[targets_i]).

    Args:
        maps: [B, H, W] in [0, 1] (:func:`grad_cam` with create_graph=True).
        targets: [B] integer classes in [0, K).
        prototypes: [K, H, W] (:func:`image_prototypes`), same size as the maps.
        distance: "l1" (default), "l2" or "ssim".
    Returns:
        A scalar tensor in the maps' graph.
    """
    return _C.prototype_loss(maps, _targets(targets), prototypes, distance)


def batch_cam_loss(maps: Tensor, targets: Tensor, num_classes: int, distance: str = "l1",
                   detach_target: bool = False) -> Tensor:
    """The Batch-CAM Loss: (1/B) sum_i D(maps_i, Q_{targets_i}), Q the in-batch class means,
    over samples whose class has at least two members in the batch. With detach_target the
    class means are constants; otherwise the term pulls a class's maps together."""
    return _C.batch_cam_loss(maps, _targets(targets), num_classes, distance, detach_target)


def input_gradients(x: Tensor, logits: Tensor, create_graph: bool = True) -> Tensor:
    """The input gradients RRR penalises: d/dx sum_i sum_k log_softmax(logits)_ik, shaped like x.

    Args:
        x: [B, C, H, W], requires grad; logits [B, K] computed from it.
        create_graph: keep the graph, so that a penalty of the gradients trains the model.
    """
    return _C.log_probability_input_gradients(x, logits, create_graph)


def rrr_loss(gradients: Tensor, masks: Tensor) -> Tensor:
    """RRR's right-reasons term (Ross et al. 2017): (1/B) sum_i sum_{c,u,v} masks_i(u,v) gradients_icuv^2.

    Args:
        gradients: [B, C, H, W] from :func:`input_gradients`.
        masks: [B, H, W], true (or 1) where the region must not matter, e.g. a decoy.
    """
    return _C.rrr_loss(gradients, masks)


def prototype_rrr_loss(gradients: Tensor, targets: Tensor, prototypes: Tensor) -> Tensor:
    """Prototype RRR, without annotations: the RRR term with weights 1 - prototypes[targets_i].

    Args:
        gradients: [B, C, H, W] from :func:`input_gradients`.
        targets: [B] integer classes in [0, K).
        prototypes: [K, H, W] in [0, 1] (:func:`image_prototypes`).
    """
    return _C.prototype_rrr_loss(gradients, _targets(targets), prototypes)


def centre_distance(masks: Tensor) -> Tensor:
    """Distance of each mask's centroid from the image centre in half image sides: [B, H, W] bool -> [B] (NaN if empty)."""
    return _C.centre_distance(masks)


def mass_share(maps: Tensor, masks: Tensor) -> Tensor:
    """Share of each map's mass inside its mask: maps [B, H, W] >= 0, masks [B, H, W] bool -> [B]."""
    return _C.mass_share(maps, masks)


def pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """Whether each map's maximum lies inside its mask: [B, H, W] x 2 -> [B] bool."""
    return _C.pointing_game(maps, masks)


def decoy_following(predicted: Tensor, labels: Tensor, decoy_labels: Tensor) -> float:
    """Among samples whose decoy encodes another class than their label, the share predicted
    as the decoy's class (NaN when there is none)."""
    return _C.decoy_following(_targets(predicted), _targets(labels), _targets(decoy_labels))


def curve_auc(curves: Tensor) -> Tensor:
    """Area under curves [B, S+1] sampled evenly on [0, 1] (trapezoid rule) -> [B]."""
    return _C.curve_auc(curves)


def deletion_insertion_curves(forward: Forward, x: Tensor, targets: Tensor, maps: Tensor,
                              baseline: Optional[Tensor] = None, steps: int = 16) -> Tuple[Tensor, Tensor]:
    """Deletion and insertion curves (Petsiuk et al. 2018): pixels ranked by maps [B, H, W]
    are replaced by ``baseline`` (default zeros) or inserted into it, in ``steps`` steps;
    ``forward`` (for example the model) gives logits. -> (deletion [B, steps+1],
    insertion [B, steps+1]), the softmax probability of the targets."""
    if baseline is None:
        baseline = torch.zeros_like(x)
    deletion, insertion = _C.deletion_insertion_curves(forward, x, _targets(targets), maps, baseline, steps)
    return deletion, insertion


def noisy_linear_imputation(x: Tensor, removed: Tensor, noise: float = 0.01, seed: int = 0) -> Tensor:
    """ROAD's noisy linear imputation: pixels where removed [B, H, W] is true take the
    weighted mean of their neighbours (solved jointly), plus Gaussian noise. x [B, C, H, W]."""
    return _C.noisy_linear_imputation(x, removed, noise, seed)


class RoadCurves(NamedTuple):
    """ROAD's curves, one row per image and one column per removed fraction."""

    morf: Tensor          #: [B, F] probability of the target, most relevant pixels removed
    lerf: Tensor          #: [B, F] the same, least relevant pixels removed
    morf_correct: Tensor  #: [B, F] bool: the target is still the top class
    lerf_correct: Tensor


def road_curves(forward: Forward, x: Tensor, targets: Tensor, maps: Tensor,
                fractions: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9), noise: float = 0.01,
                seed: int = 0) -> RoadCurves:
    """ROAD, RemOve And Debias (Rong et al. 2022): for each fraction the most (MoRF) or least
    (LeRF) relevant pixels by maps are imputed and the model asked again."""
    return RoadCurves(*_C.road_curves(forward, x, _targets(targets), maps, [float(f) for f in fractions], noise, seed))


def confidence_change(forward: Forward, x: Tensor, explained: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
    """Average drop / increase in confidence (Chattopadhay et al. 2018): p on x against o on
    ``explained`` (the image times its map) -> (drop [B] = max(0, p - o) / p, increase [B] bool)."""
    drop, increase = _C.confidence_change(forward, x, explained, _targets(targets))
    return drop, increase
