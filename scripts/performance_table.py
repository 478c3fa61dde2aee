#!/usr/bin/env python3
"""Turns the JSON of `batchcam bench --json FILE` into the Markdown tables of
docs/performance.md. Every number comes from that one run.

usage: performance_table.py BENCH.json "COMMAND THAT MADE IT"
"""
import json
import platform
import statistics
import sys

data = json.load(open(sys.argv[1]))
command = sys.argv[2]
device = f"{data.get('device', 'cpu')}, {data.get('precision', 'fp32')}"
# From issue 15 on, the Batch-CAM step is the default (Prototype Loss, L1); earlier runs used both losses.
step = "default Batch-CAM step" if "device" in data else "CE + both losses step"
print(f"Measured by `{command}` on {platform.machine()} ({device}) with {data['threads']} threads; batch {data['batch']} "
      f"at {data['image']}, {data['repetitions']} interleaved repetitions after {data['warmup']} warm-up rounds; "
      "median [min-max] ms per batch.\n")
print(f"| model | CE step ms | {step} ms | step ratio "
      "| peak tensor memory MiB, CE / Batch-CAM | peak-memory ratio (goal <= 1.3) | peak-RSS growth ratio "
      "| batched Grad-CAM img/s | per-sample Grad-CAM img/s | batched / per-sample (goal >= 20) "
      "| per-image Grad-CAM img/s | batched / per-image |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")


def cell(s):
    return f"{s['median_ms']:.1f} [{s['min_ms']:.1f}-{s['max_ms']:.1f}]"


for name, m in data["models"].items():
    rss = f"{m['memory']['ratio']:.2f}" if "memory" in m else "-"
    t = m.get("tensor_memory")
    tensors = f"{t['ce_step_peak_bytes'] / 2**20:.1f} / {t['batchcam_step_peak_bytes'] / 2**20:.1f}" if t else "-"
    tensor_ratio = f"{t['ratio']:.2f}" if t else "-"
    per = f"{m['gradcam_per_sample_images_per_s']:.0f}" if "gradcam_per_sample_images_per_s" in m else "-"
    speed = f"{m['gradcam_speedup']:.1f}" if "gradcam_speedup" in m else "-"
    image = f"{m['gradcam_per_image_images_per_s']:.0f}" if "gradcam_per_image_images_per_s" in m else "-"
    image_speed = f"{m['gradcam_speedup_per_image']:.1f}" if "gradcam_speedup_per_image" in m else "-"
    print(f"| {name} | {cell(m['ce'])} | {cell(m['batchcam'])} | {m['step_ratio']:.3f} | {tensors} | {tensor_ratio} "
          f"| {rss} | "
          f"{m['gradcam_batched_images_per_s']:.0f} | {per} | {speed} | {image} | {image_speed} |")

if any("python" in m for m in data["models"].values()):
    version = next(m["python"]["torch"] for m in data["models"].values() if "python" in m)
    print(f"\nAgainst PyTorch {version} in Python (bench/python_step.py, same threads), median ms per batch and "
          "C++ / Python (goal <= 1.0; <= 0.8 for SimpleCNN). \"Plain\": Python as a PyTorch user runs it; "
          "\"same settings\": Python with the settings of the batchcam executable (MALLOC_MMAP_THRESHOLD_=33554432 "
          "MALLOC_TRIM_THRESHOLD_=1073741824, `--channels-last`), which leaves only the front ends to differ:\n")
    print("| model | Python CE | Python CE + Batch-CAM | Python Grad-CAM | C++/Python CE | C++/Python Batch-CAM "
          "| C++/Python Grad-CAM |")
    print("|---|---|---|---|---|---|---|")
    for name, m in data["models"].items():
        for key, ratio_key, label in (("python", "cpp_over_python", "plain"),
                                      ("python_same_settings", "cpp_over_python_same_settings", "same settings"),
                                      ("python_same_malloc", "cpp_over_python_same_malloc", "same malloc only")):
            if key not in m:
                continue
            p, r = m[key]["median_ms"], m[ratio_key]
            print(f"| {name}, {label} | {p['ce']:.1f} | {p['batchcam']:.1f} | {p['gradcam']:.1f} | {r['ce']:.3f} | "
                  f"{r['batchcam']:.3f} | {r['gradcam']:.3f} |")

print("\nMinor page faults per step (median over the repetitions; each is a fresh 4 KiB page the kernel "
      "zero-fills):\n")
has_python = any("python" in m for m in data["models"].values())
print("| model | C++ CE | C++ CE + Batch-CAM |" + (" Python plain CE | Python plain CE + Batch-CAM |" if has_python else ""))
print("|---|---|---|" + ("---|---|" if has_python else ""))
for name, m in data["models"].items():
    faults_cpp = [m[step].get("median_page_faults") for step in ("ce", "batchcam")]
    row = f"| {name} | " + " | ".join("-" if f is None else f"{f:.0f}" for f in faults_cpp) + " |"
    if has_python and "python" in m and "page_faults" in m["python"]:
        faults = m["python"]["page_faults"]
        row += f" {statistics.median(faults['ce']):.0f} | {statistics.median(faults['batchcam']):.0f} |"
    elif has_python:
        row += " - | - |"
    print(row)

pipe = data["pipeline_images_per_s"]
print(f"\nData pipeline (60,000 uint8 images of 1x28x28, batches of {data['batch']}, gather + normalise): "
      f"{pipe['plain']:,.0f} images/s; with random shift {pipe['shift']:,.0f} images/s (goal >= 50,000).")
if "mnist_epoch_seconds" in data:
    e = data["mnist_epoch_seconds"]
    print(f"\nOne MNIST epoch of SimpleCNN (60,000 images, training only, batch 128): CE only {e['ce']:.1f} s, "
          f"CE + Batch-CAM {e['batchcam']:.1f} s (ratio {e['batchcam'] / e['ce']:.3f}).")
if "training_loop" in data:
    t = data["training_loop"]
    print(f"\nThe training loop's own cost: one epoch of `batchcam train`'s loop over {t['images']:,} shapes images "
          f"({t['steps']} steps of SimpleCNN with the default Batch-CAM) took {statistics.median(t['loop_seconds']):.2f} s; "
          f"the same steps on the same batches timed alone {statistics.median(t['steps_alone_seconds']):.2f} s "
          f"(medians of {len(t['loop_seconds'])} alternations): loop / steps = {t['ratio']:.3f} (goal <= 1.10).")
if "input_gradients" in data:
    print("\nThe input-gradient terms against spurious features (docs/method.md): a training step with RRR with "
          "masks (lambda 1, shapes with the spurious patch) and with Prototype RRR (lambda 0.1), against CE only, "
          "median [min-max] ms per batch:\n")
    print("| model | CE step ms | RRR step ms | RRR / CE | Prototype RRR step ms | Prototype RRR / CE |")
    print("|---|---|---|---|---|---|")
    for name, m in data["input_gradients"].items():
        s = m["step_ms"]
        print(f"| {name} | {cell(s['ce'])} | {cell(s['rrr'])} | {m['rrr_over_ce']:.2f} | {cell(s['proto_rrr'])} "
              f"| {m['proto_rrr_over_ce']:.2f} |")
