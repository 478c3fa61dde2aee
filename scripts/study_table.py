#!/usr/bin/env python3
"""Summarises a study directory of batchcam runs (one run per <variant>-s<seed>) into a
Markdown table: mean and spread over seeds of the last epoch's metrics. Every number
comes from the runs' metrics.jsonl and config.json.

usage: study_table.py STUDY_DIR "COMMAND THAT MADE IT"
"""
import json
import os
import platform
import statistics
import sys
from collections import defaultdict

study, command = sys.argv[1], sys.argv[2]
runs = defaultdict(list)
config = None
for name in sorted(os.listdir(study)):
    path = os.path.join(study, name)
    metrics_path = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(metrics_path) or "-s" not in name:
        continue
    variant = name.rsplit("-s", 1)[0]
    with open(metrics_path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    last = lines[-1]
    last["seconds_per_epoch"] = statistics.mean(m["seconds"] for m in lines)
    last["seed"] = config["seed"]
    runs[variant].append(last)


def cell(values, scale=1.0, digits=3):
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


order = ["ce"] + [f"{v}-{d}" for d in ("l1", "l2", "ssim") for v in ("proto", "batch", "both")]
label = {"ce": "CE only", "proto": "+ Prototype Loss", "batch": "+ Batch-CAM Loss", "both": "+ both"}
print("# Batch-CAM on `shapes` (SimpleCNN)\n")
print(f"Regenerate: `{command}` (then this file is rewritten).\n")
if config:
    print(f"Setting: {config['train_size']} training and {config['test_size']} test images of "
          f"{config['image_size']}x{config['image_size']}, {config['epochs']} epochs, batch {config['batch_size']}, "
          f"{config['optimizer']} lr {config['lr']}; lambda = 1 for each active loss; "
          f"seeds {sorted({r['seed'] for rs in runs.values() for r in rs})}. "
          f"Machine: {os.cpu_count()} CPU cores, {platform.machine()}. Mean ± standard deviation over seeds.\n")
print("CAM–prototype columns compare each test image's Grad-CAM (true class) with its class's image "
      "prototype: SSIM higher is better, L1/L2 lower is better. Seconds are training time per epoch "
      "(evaluation excluded).\n")
print("CAM mass on object: the share of each test CAM's mass inside the figure's ground-truth mask "
      "(higher = the map sits on the evidence; a map spread evenly would score the figure's area share).\n")
print("| variant | distance | test accuracy % | CAM–proto SSIM | CAM–proto L1 | CAM–proto L2 | CAM mass on object | s / epoch | seeds |")
print("|---|---|---|---|---|---|---|---|---|")
for key in order:
    if key not in runs:
        continue
    rs = runs[key]
    variant, _, distance = key.partition("-")
    print(f"| {label[variant]} | {distance or '–'} | {cell([r['test_accuracy'] for r in rs], 100, 2)} | "
          f"{cell([r['test_proto_ssim'] for r in rs])} | {cell([r['test_proto_l1'] for r in rs])} | "
          f"{cell([r['test_proto_l2'] for r in rs])} | {cell([r['test_object_share'] for r in rs])} | "
          f"{cell([r['seconds_per_epoch'] for r in rs], 1, 1)} | {len(rs)} |")
