#!/usr/bin/env python3
"""Golden maps of the CAM methods, written from the papers' formulas with NumPy alone (no
batchcam, no PyTorch), for tests/cam/grad_cam_test.cpp. Run once; the output is committed:

    python3 tests/cam/cam_methods_golden.py > tests/cam/golden/cam_methods.json

Features A and gradients G are [B, D, h, w] (float64); each method gives a map [B, h, w]
before min-max normalisation ("raw", after ReLU) and after it ("maps", eps 1e-7).
"""
import json

import numpy as np


def relu(x):
    return np.maximum(x, 0.0)


def grad_cam(a, g):
    # Selvaraju et al. 2017, eq. 1-2: alpha_k = mean over positions of dy/dA^k.
    alpha = g.mean(axis=(2, 3), keepdims=True)
    return relu((alpha * a).sum(axis=1))


def grad_cam_pp(a, g):
    # Chattopadhay et al. 2018, eq. 19 with the exponential's derivatives: the second and
    # third derivatives are the gradient's square and cube.
    g2, g3 = g ** 2, g ** 3
    denominator = 2.0 * g2 + a.sum(axis=(2, 3), keepdims=True) * g3
    alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=denominator != 0)
    weights = (alpha * relu(g)).sum(axis=(2, 3), keepdims=True)
    return relu((weights * a).sum(axis=1))


def xgrad_cam(a, g):
    # Fu et al. 2020, eq. 11: alpha_k = sum (A^k / sum A^k) dy/dA^k.
    total = a.sum(axis=(2, 3), keepdims=True)
    numerator = (a * g).sum(axis=(2, 3), keepdims=True)
    weights = np.divide(numerator, total, out=np.zeros_like(numerator), where=total != 0)
    return relu((weights * a).sum(axis=1))


def hires_cam(a, g):
    # Draelos and Carin 2020: the element-wise product, summed over the feature maps.
    return relu((g * a).sum(axis=1))


def layer_cam(a, g):
    # Jiang et al. 2021, eq. 6-7: positive gradients as position-wise weights.
    return relu((relu(g) * a).sum(axis=1))


def normalise(m, eps=1e-7):
    lo = m.min(axis=(1, 2), keepdims=True)
    hi = m.max(axis=(1, 2), keepdims=True)
    return (m - lo) / (hi - lo + eps)


def main():
    rng = np.random.default_rng(20261129)
    b, d, h, w = 2, 3, 4, 4
    a = rng.uniform(0.0, 1.0, size=(b, d, h, w))  # post-ReLU features are non-negative
    a[1, 2] = 0.0  # a feature map that is zero everywhere (the divisions' 0/0 case)
    g = rng.normal(0.0, 1.0, size=(b, d, h, w))
    methods = {"grad-cam": grad_cam, "grad-cam++": grad_cam_pp, "xgrad-cam": xgrad_cam,
               "hirescam": hires_cam, "layercam": layer_cam}
    out = {"shape": [b, d, h, w], "features": a.ravel().tolist(), "gradients": g.ravel().tolist(), "methods": {}}
    for name, method in methods.items():
        raw = method(a, g)
        out["methods"][name] = {"raw": raw.ravel().tolist(), "maps": normalise(raw).ravel().tolist()}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
