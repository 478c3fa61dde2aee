#!/usr/bin/env python3
"""The same work as `batchcam bench` in PyTorch (Python), for the C++/Python ratios.

Models, losses and Grad-CAM mirror the C++ code: SimpleCNN (src/models/simple_cnn.cpp),
ResNet-18 with the small-input stem (torchvision, conv1 3x3 stride 1, no max-pool) and
ConvNeXt-V2-atto with the small-input stem and target stage 2 (src/models/convnext_v2.cpp);
Grad-CAM with one autograd.grad call (create_graph for training), ReLU, bilinear
upsampling, per-sample min-max; Prototype and Batch-CAM losses with the L1 distance;
Adam (lr 1e-3). Batches of 128 at 1x28x28, 10 classes.

usage: python_step.py --model simple-cnn --threads 2 --repetitions 10 --warmup 2 [--profile OPS.txt]
prints one JSON object: median and all times in ms per batch for "ce", "batchcam",
"gradcam" (batched, explanation only), and the minor page faults of each repetition.
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu_twice(cin, cout, pool_first):
    layers = [nn.MaxPool2d(2)] if pool_first else []
    layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
               nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SimpleCNN(nn.Module):
    def __init__(self, cin=1, k=10, w=16):
        super().__init__()
        self.block1 = conv_bn_relu_twice(cin, w, False)
        self.block2 = conv_bn_relu_twice(w, 2 * w, True)
        self.block3 = conv_bn_relu_twice(2 * w, 4 * w, True)
        self.fc = nn.Linear(4 * w, k)

    def features(self, x):
        return self.block3(self.block2(self.block1(x)))

    def head(self, a):
        return self.fc(a.mean((2, 3)))


class ResNet18(nn.Module):
    def __init__(self, cin=1, k=10):
        super().__init__()
        import torchvision
        self.net = torchvision.models.resnet18(num_classes=k)
        self.net.conv1 = nn.Conv2d(cin, 64, 3, 1, 1, bias=False)
        self.net.maxpool = nn.Identity()

    def features(self, x):
        n = self.net
        return n.layer4(n.layer3(n.layer2(n.layer1(n.relu(n.bn1(n.conv1(x)))))))

    def head(self, a):
        return self.net.fc(torch.flatten(self.net.avgpool(a), 1))


class LayerNorm2d(nn.Module):  # channels-first LayerNorm, as ChannelsFirstLayerNorm
    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c)), eps

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).square().mean(1, keepdim=True)
        return self.weight.view(1, -1, 1, 1) * ((x - mean) / torch.sqrt(var + self.eps)) + self.bias.view(1, -1, 1, 1)


class GRN(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x):
        gx = x.square().sum((1, 2), keepdim=True).sqrt()
        nx = gx / (gx.mean(-1, keepdim=True) + 1e-6)
        return self.gamma * (x * nx) + self.beta + x


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        h = self.dwconv(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)
        h = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(h))))).permute(0, 3, 1, 2)
        return x + h


class ConvNeXtV2Atto(nn.Module):
    def __init__(self, cin=1, k=10, depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)):
        super().__init__()
        self.down = nn.ModuleList([nn.Sequential(nn.Conv2d(cin, dims[0], 3, padding=1), LayerNorm2d(dims[0]))] +
                                  [nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2))
                                   for i in range(1, 4)])
        self.stages = nn.ModuleList([nn.Sequential(*[Block(dims[i]) for _ in range(depths[i])]) for i in range(4)])
        self.norm = nn.LayerNorm(dims[3], eps=1e-6)
        self.fc = nn.Linear(dims[3], k)

    def features(self, x):  # up to the default target layer at 28 px, stages.2
        for i in range(3):
            x = self.stages[i](self.down[i](x))
        return x

    def head(self, a):
        return self.fc(self.norm(self.stages[3](self.down[3](a)).mean((2, 3))))


MODELS = {"simple-cnn": SimpleCNN, "resnet18": ResNet18, "convnext-v2-atto": ConvNeXtV2Atto}


def grad_cam(a, logits, y, create_graph, size=(28, 28), eps=1e-7):
    score = logits.gather(1, y[:, None]).sum()
    (g,) = torch.autograd.grad(score, a, retain_graph=True, create_graph=create_graph)
    with torch.set_grad_enabled(create_graph):
        raw = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))
        up = F.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        flat = up.flatten(1)
        lo = flat.min(1, keepdim=True)[0][:, :, None]
        hi = flat.max(1, keepdim=True)[0][:, :, None]
        return (up - lo) / (hi - lo + eps)


def l1(a, b):
    return (a - b).abs().flatten(1).mean(1)


def cam_losses(maps, y, prototypes, k):
    proto = l1(maps, prototypes.index_select(0, y)).mean()
    onehot = F.one_hot(y, k).to(maps.dtype)
    counts = onehot.sum(0)
    q = (onehot.t() @ maps.flatten(1) / counts.clamp_min(1.0)[:, None]).view(k, maps.size(1), maps.size(2))
    per_sample = l1(maps, q.index_select(0, y))
    batch = (per_sample * (counts.index_select(0, y) > 1).to(maps.dtype)).sum() / maps.size(0)
    return proto, batch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="simple-cnn", choices=sorted(MODELS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repetitions", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--channels-last", action="store_true",
                   help="keep activations in channels-last (NHWC) memory, as batchcam does")
    p.add_argument("--profile", metavar="FILE",
                   help="also write torch.profiler's operator table (self CPU time) of each piece of work here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    k = 10
    model = MODELS[args.model]()
    model.train()
    x = torch.randn(args.batch, 1, 28, 28)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.arange(args.batch) % k
    prototypes = torch.rand(k, 28, 28)

    def ce_step():
        opt.zero_grad()
        loss = F.cross_entropy(model.head(model.features(x)), y)
        loss.backward()
        opt.step()
        loss.item()

    def batchcam_step():
        opt.zero_grad()
        a = model.features(x)
        logits = model.head(a)
        maps = grad_cam(a, logits, y, create_graph=True)
        proto, batch = cam_losses(maps, y, prototypes, k)
        loss = F.cross_entropy(logits, y) + proto + batch
        loss.backward()
        opt.step()
        loss.item()

    def explain():
        model.eval()
        a = model.features(x)
        grad_cam(a, model.head(a), y, create_graph=False)
        model.train()

    work = {"ce": ce_step, "batchcam": batchcam_step, "gradcam": explain}
    for _ in range(args.warmup):
        for f in work.values():
            f()
    times = {name: [] for name in work}
    faults = {name: [] for name in work}
    for _ in range(args.repetitions):  # interleaved, like the C++ side
        for name, f in work.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            f()
            times[name].append(1e3 * (time.perf_counter() - start))
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    if args.profile:  # after the timed rounds, so that the profiler's overhead does not touch them
        with open(args.profile, "w") as out:
            for name, f in work.items():
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                    for _ in range(args.repetitions):
                        f()
                out.write(f"== {args.model} {name}: {args.repetitions} repetitions, {args.threads} threads\n")
                out.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25) + "\n")
    print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "median_ms": {n: statistics.median(t) for n, t in times.items()}, "ms": times,
                      "page_faults": faults}))


if __name__ == "__main__":
    main()
