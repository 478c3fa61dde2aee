#!/usr/bin/python3
"""Loads a batchcam-exported ResNet-18 state dict into torchvision's resnet18 (conv1 and
fc shaped to match) and checks that the logits equal batchcam's within 1e-4.

usage: torchvision_check.py WEIGHTS.pt IO.pt small|standard    (exit 0 = equal)
"""
import sys

import torch
import torchvision

weights, io_path, stem = sys.argv[1], sys.argv[2], sys.argv[3]
state = torch.load(weights, weights_only=False)  # our own export (see README)
assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()), "not a plain dict"
io = torch.load(io_path, weights_only=False)
model = torchvision.models.resnet18(num_classes=10)
if stem == "small":
    model.conv1 = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    model.maxpool = torch.nn.Identity()
else:
    model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
model.load_state_dict(state, strict=True)
model.eval()
with torch.no_grad():
    diff = (model(io["x"]) - io["logits"]).abs().max().item()
print(f"max abs difference {diff:.3g}")
sys.exit(0 if diff <= 1e-4 else 1)
