"""Scripts a SimpleCNN-like module for batchcam's TorchScript contract and saves it.

    scripted_cnn.py OUT.pt [--weights STATE_DICT.pt] [--batchnorm-head | --dropout-head] [--classes K]

--weights loads a state dict exported by `batchcam export` (the built-in SimpleCNN's names),
so both models start from the same weights. --batchnorm-head puts a BatchNorm1d after the
target layer, which mixes samples in training mode (batchcam must refuse it); --dropout-head
a Dropout there, which is random but per-sample (batchcam must accept it).
"""
import argparse
import os
import sys

import torch
from torch import nn

# The blocks of batchcam's SimpleCNN, as the benchmark's Python side builds them.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from python_step import conv_bn_relu_twice as block  # noqa: E402


class Net(nn.Module):
    def __init__(self, channels: int, classes: int, width: int, batchnorm_head: bool, dropout_head: bool):
        super().__init__()
        self.block1 = block(channels, width, False)
        self.block2 = block(width, 2 * width, True)
        self.block3 = block(2 * width, 4 * width, True)
        self.norm = nn.BatchNorm1d(4 * width) if batchnorm_head else nn.Dropout(0.5) if dropout_head else nn.Identity()
        self.fc = nn.Linear(4 * width, classes)

    @torch.jit.export
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.block3(self.block2(self.block1(x)))

    @torch.jit.export
    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(a.mean((2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--weights")
    parser.add_argument("--batchnorm-head", action="store_true")
    parser.add_argument("--dropout-head", action="store_true")
    parser.add_argument("--classes", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = Net(1, args.classes, 16, args.batchnorm_head, args.dropout_head)
    if args.weights:
        net.load_state_dict(torch.load(args.weights, weights_only=False))  # our own export (see README)
    torch.jit.script(net).save(args.out)


if __name__ == "__main__":
    main()
