#!/usr/bin/python3
"""Saves a randomly initialised torchvision resnet18's state dict as Python users do, and
its logits on a random input: as a plain dict (torch.save(dict(model.state_dict()))), or
with "ordered" as the OrderedDict that model.state_dict() returns.

usage: torchvision_weights.py WEIGHTS.pt IO.pt CLASSES SIZE [ordered]
"""
import sys

import torch
import torchvision

weights, io_path, classes, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ordered = sys.argv[5:] == ["ordered"]
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=classes)
with torch.no_grad():
    model(torch.randn(8, 3, size, size))  # non-trivial BatchNorm statistics
model.eval()
x = torch.randn(2, 3, size, size)
with torch.no_grad():
    logits = model(x)
torch.save(model.state_dict() if ordered else dict(model.state_dict()), weights)
torch.save({"x": x, "logits": logits}, io_path)
