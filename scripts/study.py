#!/usr/bin/env python3
"""Runs a study and writes its report.

A study file (see studies/) lists tables; each table is a grid of `batchcam train` runs made
from one preset in configs/ (plus the table's overrides), one run per row and seed, or
(with "explain") the `batchcam eval --method M` of another table's trained runs, one row per
CAM method. A row {"chosen_by": DECISION} is the row that decision chose, as its tables define
it; it runs once the decision's tables have finished. This script runs every run that has no
result yet (a run cut short is resumed from its last.pt), then writes one Markdown file from
the runs' eval.json, metrics.jsonl and config.json: the tables (mean and standard deviation
over seeds), a comparison with CE only, the choice of defaults the study file asks for, and
whether its goals are met. No number in the report is typed by hand.

usage: scripts/study.py STUDY.json [--only ID[,ID...]] [--report-only] [--dry-run]
                                   [--bin PATH] [--threads N]
Standard library only (python3 of Debian 12).
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Row shorthands of a grid: the lambdas of each loss combination.
LOSSES = {"ce": (False, False), "proto": (True, False), "batch": (False, True), "both": (True, True)}
LOSS_LABELS = {"ce": "CE only", "proto": "+ Prototype Loss", "batch": "+ Batch-CAM Loss", "both": "+ both"}

# Columns: key -> (header, digits, better: +1 higher, -1 lower, 0 neither).
COLUMNS = {
    "accuracy": ("test acc %", 2, +1),
    "follows_decoy": ("decoy decides", 3, -1),
    "decoy_share_predicted": ("CAM (pred.) mass on decoy", 3, -1),
    "decoy_pointing_predicted": ("CAM (pred.) points at decoy", 3, -1),
    "decoy_share": ("CAM (true) mass on decoy", 3, -1),
    "decoy_pointing": ("CAM (true) points at decoy", 3, -1),
    "object_share": ("CAM mass on object", 3, +1),
    "object_pointing": ("CAM points at object", 3, +1),
    # By the object's distance from the image centre, in half image sides (eval.json's
    # object.by_distance_from_centre): near [0, 0.2), middle [0.2, 0.4), far [0.4, ...).
    "near_share": ("mass on object, near centre", 3, +1),
    "middle_share": ("mass on object, middle", 3, +1),
    "far_share": ("mass on object, far", 3, +1),
    "near_pointing": ("points at object, near centre", 3, +1),
    "middle_pointing": ("points at object, middle", 3, +1),
    "far_pointing": ("points at object, far", 3, +1),
    "proto_l1": ("CAM-proto L1", 3, -1),
    "proto_l2": ("CAM-proto L2", 3, -1),
    "proto_ssim": ("CAM-proto SSIM", 3, +1),
    "input_ssim": ("CAM-input SSIM", 3, +1),
    "deletion": ("deletion AUC", 3, -1),
    "insertion": ("insertion AUC", 3, +1),
    "road_morf": ("ROAD MoRF", 3, -1),
    "road_lerf": ("ROAD LeRF", 3, +1),
    "road_combined": ("ROAD (LeRF-MoRF)/2", 3, +1),
    "average_drop": ("avg drop %", 1, -1),
    "increase": ("increase %", 1, +1),
    "seconds": ("train s/epoch", 1, -1),
    "ms_per_image": ("ms/img", 3, -1),
    "ms_per_image_cam": ("ms/img + CAM", 3, -1),
}
DEFAULT_COLUMNS = ["accuracy", "proto_l1", "proto_l2", "proto_ssim", "input_ssim", "deletion", "insertion",
                   "seconds", "ms_per_image", "ms_per_image_cam"]
# Keys of config.json that do not change what a run computes.
IGNORED_KEYS = {"out_dir", "run_name", "data_dir", "threads", "device", "log_every"}


class StudyError(Exception):
    pass


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise StudyError(f"{path}: {e}")


def shared_data_dir(dataset):
    """../shared/data/<files> beside the checkout when present (else batchcam's default)."""
    files = {"mnist": "mnist", "decoy-mnist": "mnist", "fashion-mnist": "fashion-mnist",
             "decoy-fashion": "fashion-mnist"}.get(dataset)
    if files is None:
        return None
    path = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", files))
    return path if os.path.isdir(path) else None


def expand_rows(table, preset, study=None):
    """The table's rows: {name, label, distance, set}; a grid expands to loss x distance; a row
    chosen by a decision is left out while the decision is pending."""
    rows = []
    grid = table.get("grid")
    if grid:
        lam_p = preset.get("lambda_proto") or 1.0
        lam_b = preset.get("lambda_batch") or 1.0
        for loss in grid["losses"]:
            if loss not in LOSSES:
                raise StudyError(f"table {table['id']}: unknown loss '{loss}' (expected one of {', '.join(LOSSES)})")
            proto, batch = LOSSES[loss]
            settings = {"lambda_proto": lam_p if proto else 0.0, "lambda_batch": lam_b if batch else 0.0}
            if loss == "ce":
                rows.append({"name": "ce", "label": LOSS_LABELS[loss], "distance": "-", "set": settings})
                continue
            for d in grid["distances"]:
                rows.append({"name": f"{loss}-{d}", "label": LOSS_LABELS[loss], "distance": d,
                             "set": dict(settings, distance_proto=d, distance_batch=d)})
    for row in table.get("rows", []):
        if "chosen_by" in row:
            chosen = chosen_row(study, row["chosen_by"], table)
            if isinstance(chosen, dict):
                rows.append(dict(chosen, label=f"{chosen['label']}, chosen by \"{row['chosen_by']}\""))
            continue
        rows.append({"name": row["name"], "label": row.get("label", row["name"]),
                     "distance": row.get("distance", "-"), "set": row.get("set", {})})
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):
        raise StudyError(f"table {table['id']}: two rows share a name")
    return rows


def waits_for_a_choice(table, by_id):
    """Whether the table has rows chosen by a decision, or explains a table that has."""
    if "explain" in table:
        table = by_id.get(table["explain"].get("table"), {})
    return any("chosen_by" in row for row in table.get("rows", []))


# What chosen_row returns for a decision that has been made but found no eligible row.
NO_ELIGIBLE_ROW = "no eligible row"


def chosen_row(study, title, table):
    """The row the decision `title` chose, as the first of its tables that has it defines it;
    None while the decision is pending, NO_ELIGIBLE_ROW when no row qualified. The decision is
    made on the tables that do not wait for a choice themselves."""
    decisions = {d["title"]: d for d in (study or {}).get("decisions", [])}
    if title not in decisions:
        raise StudyError(f"table {table['id']}: chosen_by names no decision ('{title}')")
    decision = decisions[title]
    first = decisions.get(decision["combine"].get("first"), {}) if "combine" in decision else decision
    ids = first.get("tables", [])
    by_id = {t["id"]: t for t in study["tables"]}
    if any(waits_for_a_choice(by_id.get(t, {}), by_id) for t in ids):
        raise StudyError(f"table {table['id']}: decision '{title}' is made on tables with chosen rows")
    independent = {t["id"] for t in study["tables"] if not waits_for_a_choice(t, by_id)}
    tables = collect(study, independent)
    winner = decided(decision, study, tables)
    if winner is None or winner == NO_ELIGIBLE_ROW:
        return winner
    for source in (by_id[t] for t in ids if t in by_id):
        if "explain" in source:
            continue
        preset = load_json(os.path.join(ROOT, source["preset"])) if "preset" in source else {}
        found = next((r for r in expand_rows(source, preset) if r["name"] == winner), None)
        if found:
            return found
    raise StudyError(f"table {table['id']}: decision '{title}' chose '{winner}', which none of its tables "
                     f"trains as a row")


def run_config(study, table, preset, row, seed):
    config = dict(preset)
    config.update(table.get("set", {}))
    config.update(row["set"])
    config["seed"] = seed
    config["out_dir"] = os.path.join(ROOT, study["runs"], table["id"])
    config["run_name"] = f"{row['name']}-s{seed}"
    if "data_dir" not in config:
        data_dir = shared_data_dir(config.get("dataset", "shapes"))
        if data_dir:
            config["data_dir"] = data_dir
    return config


def distance_label(config):
    """The distance(s) of the losses a run has switched on, for a row that does not name one."""
    defaults = {"proto": 1.0, "batch": 0.0}  # batchcam train's, for a key the config leaves out
    used = [config.get(f"distance_{loss}", "l1") for loss in ("proto", "batch")
            if config.get(f"lambda_{loss}", defaults[loss]) > 0]
    return "/".join(dict.fromkeys(used)) or "-"


def same_run(requested, saved):
    """Whether a saved config.json computes what `requested` asks for."""
    for key, value in requested.items():
        if key in IGNORED_KEYS:
            continue
        if key not in saved or saved[key] != value:
            if isinstance(value, (int, float)) and isinstance(saved.get(key), (int, float)) \
                    and abs(saved[key] - value) <= 1e-12 * max(1.0, abs(value)):
                continue
            return False
    return True


def explained_runs(study, table):
    """The runs of an `explain` table: each seed of another table's row, once per CAM method;
    the row carries the method and the evaluation file it writes into the trained run."""
    spec = table["explain"]
    source = next((t for t in study["tables"] if t["id"] == spec.get("table")), None)
    if source is None or "explain" in source:
        raise StudyError(f"table {table['id']}: explain.table must name a table of trained runs, "
                         f"got '{spec.get('table')}'")
    preset = load_json(os.path.join(ROOT, source["preset"])) if "preset" in source else {}
    row = next((r for r in expand_rows(source, preset, study) if r["name"] == spec.get("row")), None)
    if row is None:
        raise StudyError(f"table {table['id']}: table {source['id']} has no row '{spec.get('row')}'")
    table.setdefault("seeds", source["seeds"])
    if "needs" in source:
        table.setdefault("needs", source["needs"])
    runs = []
    for method in spec["methods"]:
        explained = {"name": method, "label": row["label"], "distance": "-", "method": method,
                     "eval_file": f"eval-{method}.json"}
        for seed in table["seeds"]:
            config = run_config(study, source, preset, row, seed)
            runs.append((table, explained, seed, config, os.path.join(config["out_dir"], config["run_name"])))
    return runs


def plan(study, only):
    """Every run of the study: (table, row, seed, config, run_dir)."""
    runs = []
    for table in study["tables"]:
        if only and table["id"] not in only:
            continue
        if "explain" in table:
            runs += explained_runs(study, table)
            continue
        preset = load_json(os.path.join(ROOT, table["preset"])) if "preset" in table else {}
        for row in expand_rows(table, preset, study):
            for seed in table["seeds"]:
                config = run_config(study, table, preset, row, seed)
                row["distance"] = row["distance"] if row["distance"] != "-" else distance_label(config)
                runs.append((table, row, seed, config, os.path.join(config["out_dir"], config["run_name"])))
    return runs


def finished(config, run_dir, row=None):
    """Whether run_dir holds the results of the run `config` asks for (and, for a row of an
    `explain` table, its evaluation by the row's method, made after the run's own)."""
    own = os.path.join(run_dir, "eval.json")
    done = os.path.isfile(own) and same_run(config, load_json(os.path.join(run_dir, "config.json")))
    if not done or not row or "eval_file" not in row:
        return done
    path = os.path.join(run_dir, row["eval_file"])
    return os.path.isfile(path) and os.path.getmtime(path) >= os.path.getmtime(own)


def execute(runs, binary, threads, only):
    # A table that `needs` something this machine may lack (a GPU) runs only when --only names it.
    runnable = [r for r in runs if "needs" not in r[0] or r[0]["id"] in only]
    # Training runs first: an `explain` row evaluates one of them.
    todo = sorted((r for r in runnable if not finished(r[3], r[4], r[1])), key=lambda r: "eval_file" in r[1])
    skipped = len(runs) - len(runnable)
    print(f"study: {len(runnable) - len(todo)} of {len(runnable)} runs done, {len(todo)} to run"
          + (f"; {skipped} skipped (their tables need what a plain run does not assume)" if skipped else ""),
          flush=True)
    for i, (table, row, seed, config, run_dir) in enumerate(todo, 1):
        if "eval_file" in row:
            explain(table, row, seed, config, run_dir, binary, f"[{i}/{len(todo)}]")
            continue
        saved = os.path.join(run_dir, "config.json")
        resume = os.path.isfile(os.path.join(run_dir, "last.pt")) and os.path.isfile(saved) \
            and same_run(config, load_json(saved)) and not os.path.isfile(os.path.join(run_dir, "eval.json"))
        extra = ["--threads", str(threads)] if threads else []
        if resume:
            command = [binary, "train", "--resume", run_dir, "--quiet"] + extra
        else:
            if os.path.isdir(run_dir):
                shutil.rmtree(run_dir)
            os.makedirs(config["out_dir"], exist_ok=True)
            request = os.path.join(config["out_dir"], f".{config['run_name']}.request.json")
            with open(request, "w") as f:
                json.dump(config, f, indent=2)
            command = [binary, "train", "--config", request, "--quiet"] + extra
        print(f"study: [{i}/{len(todo)}] {table['id']} {row['name']} seed {seed}"
              f"{' (resumed)' if resume else ''}", flush=True)
        start = time.monotonic()
        result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise StudyError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()}")
        accuracy = load_json(os.path.join(run_dir, "eval.json"))["accuracy"]
        print(f"study:   {time.monotonic() - start:.0f} s, test accuracy {100 * accuracy:.2f}%", flush=True)


def explain(table, row, seed, config, run_dir, binary, counter):
    """One row of an `explain` table: `batchcam eval` of the trained run's last.pt (the model its
    own eval.json describes) with the row's CAM method."""
    if not finished(config, run_dir):
        raise StudyError(f"table {table['id']}: {run_dir} has no finished run; run table "
                         f"{table['explain']['table']} first")
    command = [binary, "eval", os.path.join(run_dir, "last.pt"), "--method", row["method"],
               "--out", os.path.join(run_dir, row["eval_file"])]
    print(f"study: {counter} {table['id']} {row['name']} seed {seed}", flush=True)
    start = time.monotonic()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise StudyError(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()}")
    print(f"study:   {time.monotonic() - start:.0f} s", flush=True)


def measurements(run_dir, eval_file="eval.json"):
    """The columns of one run; from eval_file (an `explain` table's evaluation by another CAM
    method) and, for the training time, metrics.jsonl."""
    e = load_json(os.path.join(run_dir, eval_file))
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        epochs = [json.loads(line) for line in f if line.strip()]
    road = e["faithfulness"].get("road") or {}  # absent before ROAD, null when skipped
    confidence = e["faithfulness"].get("confidence") or {}
    percent = lambda v: None if v is None else 100 * v
    bands = e["object"].get("by_distance_from_centre") or [{}] * 3  # absent before the bands
    band = lambda i, key: bands[i].get(key) if i < len(bands) else None
    return {
        "accuracy": 100 * e["accuracy"],
        "follows_decoy": e["decoy"].get("follows_decoy"),
        "decoy_share_predicted": e["decoy"].get("predicted_class_cam_mass_share"),
        "decoy_pointing_predicted": e["decoy"].get("predicted_class_pointing_game"),
        "decoy_share": e["decoy"]["cam_mass_share"],
        "decoy_pointing": e["decoy"]["pointing_game"],
        "object_share": e["object"]["cam_mass_share"],
        "object_pointing": e["object"]["pointing_game"],
        "near_share": band(0, "cam_mass_share"),
        "middle_share": band(1, "cam_mass_share"),
        "far_share": band(2, "cam_mass_share"),
        "near_pointing": band(0, "pointing_game"),
        "middle_pointing": band(1, "pointing_game"),
        "far_pointing": band(2, "pointing_game"),
        "proto_l1": e["prototype_reconstruction"]["l1"],
        "proto_l2": e["prototype_reconstruction"]["l2"],
        "proto_ssim": e["prototype_reconstruction"]["ssim"],
        "input_ssim": e["input_reconstruction"]["ssim"],
        "deletion": e["faithfulness"]["deletion_auc"],
        "insertion": e["faithfulness"]["insertion_auc"],
        "road_morf": road.get("morf"),
        "road_lerf": road.get("lerf"),
        "road_combined": road.get("combined"),
        "average_drop": percent(confidence.get("average_drop")),
        "increase": percent(confidence.get("increase")),
        "seconds": statistics.mean(m["seconds"] for m in epochs),
        "ms_per_image": e["timing"]["ms_per_image"],
        "ms_per_image_cam": e["timing"]["ms_per_image_with_cam"],
    }


# Columns that cannot be negative: batchcam 0.1 wrote -1 there when a metric was not available.
NON_NEGATIVE = {"follows_decoy", "decoy_share_predicted", "decoy_pointing_predicted", "decoy_share",
                "decoy_pointing", "object_share", "object_pointing", "deletion", "insertion", "ms_per_image", "ms_per_image_cam",
                "road_morf", "road_lerf", "average_drop", "increase"}


def values(results, key):
    """The defined values of one column (null where batchcam could not compute it)."""
    return [r[key] for r in results
            if r[key] is not None and not (key in NON_NEGATIVE and r[key] < 0)]


def mean(results, key):
    v = values(results, key)
    return statistics.mean(v) if v else None


def cell(results, key):
    v = values(results, key)
    digits = COLUMNS[key][1]
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


def collect(study, only=None):
    """{table id: (table, [(row, [measurements per finished seed])], a config)}."""
    tables = {}
    for table, row, seed, config, run_dir in plan(study, only):
        entry = tables.setdefault(table["id"], (table, [], None))
        rows = entry[1]
        if not rows or rows[-1][0]["name"] != row["name"]:
            rows.append((row, []))
        if finished(config, run_dir, row):
            rows[-1][1].append(measurements(run_dir, row.get("eval_file", "eval.json")))
            tables[table["id"]] = (table, rows, load_json(os.path.join(run_dir, "config.json")))
    return tables


def columns_of(table, rows):
    columns = table.get("columns")
    if columns:
        return columns
    columns = list(DEFAULT_COLUMNS)
    every = [r for _, rs in rows for r in rs]
    for extra in ("decoy_pointing", "decoy_share", "decoy_pointing_predicted", "decoy_share_predicted",
                  "follows_decoy", "object_share"):
        if values(every, extra):
            columns.insert(1, extra)
    return columns


def standard_error(a, b, key):
    """The standard error of the difference of the means of a and b (Welch); None where either
    side has fewer than 2 runs."""
    va, vb = values(a, key), values(b, key)
    if len(va) < 2 or len(vb) < 2:
        return None
    return (statistics.variance(va) / len(va) + statistics.variance(vb) / len(vb)) ** 0.5


def difference(a, b, key):
    """Mean of a minus mean of b, and whether it is clear: more than twice its standard error
    (Welch); None where either side has fewer than 2 runs."""
    va, vb = values(a, key), values(b, key)
    if not va or not vb:
        return None, None
    diff = statistics.mean(va) - statistics.mean(vb)
    error = standard_error(a, b, key)
    return diff, None if error is None else abs(diff) > 2 * error


def comparison(rows, columns=()):
    """Lines comparing each Batch-CAM row with CE only: difference of means, marked clear when
    it exceeds twice its standard error, else within noise; over the usual keys and the table's
    own columns (training time only where the table shows it)."""
    keys = ["accuracy", "follows_decoy", "proto_ssim", "input_ssim", "deletion", "insertion"]
    keys += ["seconds"] if not columns or "seconds" in columns else []
    keys += [c for c in columns if c not in keys]
    base = next((rs for row, rs in rows if row["name"] == "ce" and rs), None)
    if base is None:
        return []
    lines = []
    for row, rs in rows:
        if row["name"] == "ce" or not rs:
            continue
        parts = []
        for key in keys:
            diff, clear = difference(rs, base, key)
            if diff is None:
                continue
            unit = " pt" if key == "accuracy" else ""
            verdict = " (within noise)" if clear is False else ""
            parts.append(f"{COLUMNS[key][0]} {diff:+.{COLUMNS[key][1]}f}{unit}{verdict}")
        lines.append(f"- `{row['name']}` vs `ce`: " + ", ".join(parts))
    if any(len(rs) < 2 for _, rs in rows if rs):
        lines.append("- One seed: these differences carry no noise estimate.")
    return lines


def rank(decision, tables):
    """The rows of a decision, best first, the eligible ones, and the mean ranks; or a line
    saying why it cannot be decided yet."""
    ids = decision["tables"]
    if any(t not in tables or tables[t][2] is None for t in ids):
        return "Pending: not every table of this decision has results yet."
    baseline = decision.get("baseline", "ce")
    row_sets = [{row["name"]: rs for row, rs in tables[t][1] if rs} for t in ids]
    candidates = set(decision.get("rows") or set.intersection(*(set(rows) - {baseline} for rows in row_sets)))
    if not candidates or any(name not in rows for rows in row_sets for name in candidates):
        return "Pending: not every candidate row has results yet."
    candidates = sorted(candidates)
    tolerance = decision.get("accuracy_tolerance", 0)
    ranks = {name: [] for name in candidates}
    eligible = set(candidates)
    for rows in row_sets:
        for name in candidates:
            if name == baseline or baseline not in rows:
                continue
            drop, clear = difference(rows[name], rows[baseline], "accuracy")
            if drop is not None and drop < -tolerance and clear is not False:
                eligible.discard(name)
        for key in decision["metrics"]:
            if any(mean(rows[n], key) is None for n in candidates):
                continue  # a metric this table does not have (no decoys)
            # Scores as the table shows them (rounded), better first; equal ones share their mean rank.
            score = {n: -COLUMNS[key][2] * round(mean(rows[n], key), COLUMNS[key][1]) for n in candidates}
            for name in candidates:
                better = sum(score[n] < score[name] for n in candidates)
                equal = sum(score[n] == score[name] for n in candidates)
                ranks[name].append(better + (equal + 1) / 2)
    if not any(ranks.values()):
        return "Pending: no metric of this decision has values in its tables."
    order = sorted(candidates, key=lambda n: (n not in eligible, statistics.mean(ranks[n]), n))
    return order, eligible, ranks


def choose(decision, tables):
    """One choice of defaults: among the candidate rows (the decision's `rows`, else every row
    but the baseline, CE only unless `baseline` names another, present in all its tables) whose
    accuracy is not clearly below the baseline's in any table (a drop of at most
    `accuracy_tolerance` points, or one within twice its standard error over seeds), the best
    mean rank over the decision's metrics (rank 1 = best in that table and metric; equal values as the table rounds them
    share their mean rank)."""
    ranked = rank(decision, tables)
    if isinstance(ranked, str):
        return [ranked]
    order, eligible, ranks = ranked
    ids = decision["tables"]
    baseline = decision.get("baseline", "ce")
    baseline_label = "CE only's" if baseline == "ce" else f"`{baseline}`'s"
    tolerance = decision.get("accuracy_tolerance", 0)
    has_baseline = any(baseline in {row["name"] for row, rs in tables[t][1] if rs} for t in ids)
    eligibility = (f"A row is eligible when its test accuracy is not clearly below {baseline_label} in any of "
                   f"these tables: the drop of the mean is at most {tolerance} points, or within twice its "
                   f"standard error over seeds. ") if has_baseline else "Every row is eligible. "
    lines = [f"Rule: candidates {', '.join(f'`{n}`' for n in sorted(order))} in "
             f"{', '.join(f'`{t}`' for t in ids)}. {eligibility}Each row is ranked per table and metric "
             f"({', '.join(COLUMNS[m][0] for m in decision['metrics'])}; 1 = best; values equal as the table rounds "
             f"them share their mean rank; a metric a table does not have is left out there); the eligible row "
             f"with the lowest mean rank wins.", "",
             "| row | eligible | mean rank |", "|---|---|---|"]
    for name in order:
        lines.append(f"| {name} | {'yes' if name in eligible else 'no'} | {statistics.mean(ranks[name]):.2f} |")
    winner = next((n for n in order if n in eligible), None)
    lines += ["", f"**Chosen: `{winner}`.**" if winner else "**No row is eligible.**"]
    return lines


def combined_choice(decision, study, tables):
    """The row a `combine` decision chooses, or None while a decision it combines is pending."""
    spec = decision["combine"]
    by_title = {d["title"]: d for d in study["decisions"]}
    for key in ("first", "second"):
        if spec.get(key) not in by_title:
            raise StudyError(f"decision '{decision['title']}': combine.{key} names no decision ('{spec.get(key)}')")
    first, second = (rank(by_title[spec[k]], tables) for k in ("first", "second"))
    if isinstance(first, str) or isinstance(second, str):
        return None
    eligible = second[1]
    winner = next((n for n in first[0] if n in first[1] and spec["counterpart"].format(n) in eligible), None)
    return winner or spec["fallback"]


def combine(decision, study, tables):
    """A choice made of two decisions: the best-ranked row of `first` whose counterpart
    (`counterpart`, a pattern with {} for the row's name) is eligible in `second`; else
    `fallback`."""
    spec = decision["combine"]
    winner = combined_choice(decision, study, tables)
    if winner is None:
        return ["Pending: a decision it combines is not decided yet."]
    return [f"Rule: the first row of \"{spec['first']}\" (in its order above, eligible there) whose "
            f"`{spec['counterpart']}` is eligible in \"{spec['second']}\"; if none, `{spec['fallback']}`.", "",
            f"**Chosen: `{winner}`.**"]


def decided(decision, study, tables):
    """The row a decision chooses; None while it is pending, NO_ELIGIBLE_ROW when no row is
    eligible."""
    if "combine" in decision:
        return combined_choice(decision, study, tables)
    ranked = rank(decision, tables)
    if isinstance(ranked, str):
        return None
    order, eligible, _ = ranked
    return next((n for n in order if n in eligible), NO_ELIGIBLE_ROW)


# The rules a goal's check can apply to the difference of means (row - against), taken in the
# metric's better direction.
GOAL_RULES = ("not_clearly_below", "drop_at_most")


def check_goal(spec, study, tables):
    """Raises StudyError for a goal that names a table, row, rule or metric that does not exist."""
    title = spec.get("title", "?")
    if "row" not in spec or not spec.get("checks"):
        raise StudyError(f"goal '{title}': needs a row and at least one check")
    ids = {t["id"] for t in study.get("tables", [])} | set(tables)
    for check in spec["checks"]:
        if check.get("table") not in ids:
            raise StudyError(f"goal '{title}': no table '{check.get('table')}'")
        if check.get("rule") not in GOAL_RULES:
            raise StudyError(f"goal '{title}': unknown rule '{check.get('rule')}' "
                             f"(expected one of {', '.join(GOAL_RULES)})")
        if check["rule"] == "drop_at_most" and not isinstance(check.get("points"), (int, float)):
            raise StudyError(f"goal '{title}': rule drop_at_most needs a number 'points'")
        key = check.get("metric", "accuracy")
        if key not in COLUMNS or COLUMNS[key][2] == 0:
            raise StudyError(f"goal '{title}': metric '{key}' is not a column with a better direction")
        planned = {r["name"] for r, _ in tables.get(check["table"], (None, []))[1]}
        names = [check.get("against")] + ([spec["row"]] if isinstance(spec["row"], str) else [])
        for name in names:
            if planned and name not in planned:
                raise StudyError(f"goal '{title}': table {check['table']} has no row '{name}'")


def goal(spec, study, tables):
    """Lines saying whether a goal is met: each check compares the goal's row with another row
    of one table on one metric, the difference taken in the metric's better direction; the goal
    is met when every check is. `not_clearly_below`: the row is better, or worse by at most twice
    the standard error of the difference over seeds; `drop_at_most`: worse by at most `points`.
    Differences are compared as the report shows them (rounded)."""
    check_goal(spec, study, tables)
    row = spec["row"]
    name = row
    if isinstance(row, dict):
        chosen = chosen_row(study, row["chosen_by"], {"id": f"goal '{spec['title']}'"})
        if chosen is None:
            return [f"Pending: decision \"{row['chosen_by']}\" has not chosen a row yet."]
        if chosen == NO_ELIGIBLE_ROW:
            return [f"Decision \"{row['chosen_by']}\" found no eligible row.", "", "**Goal not met.**"]
        name = chosen["name"]
    lines = [f"Row: `{name}`" + (f", chosen by \"{row['chosen_by']}\"." if isinstance(row, dict) else "."), ""]
    verdicts = []
    for check in spec["checks"]:
        tid, against, key, rule = check["table"], check["against"], check.get("metric", "accuracy"), check["rule"]
        rows = {r["name"]: rs for r, rs in tables.get(tid, (None, []))[1] if rs}
        header, digits, better = COLUMNS[key]
        if name not in rows or against not in rows:
            lines.append(f"- `{tid}`: pending (`{name}` or `{against}` has no finished run).")
            verdicts.append(None)
            continue
        diff, _ = difference(rows[name], rows[against], key)
        if diff is None:
            raise StudyError(f"goal '{spec['title']}': table {tid} has no values of {key}")
        unit = " points" if key == "accuracy" else ""
        said = (f"- `{tid}`, {header}: `{name}` {mean(rows[name], key):.{digits}f}, `{against}` "
                f"{mean(rows[against], key):.{digits}f}, difference {diff:+.{digits}f}{unit}"
                f"{' (lower is better)' if better < 0 else ''}; ")
        gain = round(better * diff, digits)  # > 0: the row is better
        if rule == "drop_at_most":
            met = gain >= -check["points"]
            said += f"the rule allows a loss of at most {check['points']}{unit}"
        else:
            error = standard_error(rows[name], rows[against], key)
            if error is None:
                met = gain >= 0
                said += "one run a side: no noise estimate, so it may not be worse"
            else:
                met = gain >= -round(2 * error, digits)
                said += f"the rule allows a loss of at most twice its standard error, {2 * error:.{digits}f}{unit}"
        lines.append(said + (": **met**." if met else ": **not met**."))
        verdicts.append(met)
    if False in verdicts:
        lines += ["", "**Goal not met.**"]
    elif None in verdicts:
        lines += ["", "Pending: not every check has its runs yet."]
    else:
        lines += ["", "**Goal met.**"]
    return lines


def copy_pictures(study, table, rows, output):
    """The CAM samples (samples.png: image, Grad-CAM, overlay for one test image per class) of the
    first seed of each row the table names in `pictures`, copied beside the report; Markdown lines."""
    names = table.get("pictures", [])
    seed = table["seeds"][0]
    found = [(row, os.path.join(ROOT, study["runs"], table["id"], f"{row['name']}-s{seed}", "samples.png"))
             for row, _ in rows if row["name"] in names]
    found = [(row, path) for row, path in found if os.path.isfile(path)]
    if not found:
        return []
    folder = os.path.splitext(output)[0]
    os.makedirs(folder, exist_ok=True)
    links = []
    for row, path in found:
        name = f"{table['id']}-{row['name']}-s{seed}.png"
        shutil.copyfile(path, os.path.join(folder, name))
        links.append(f"![{row['name']} seed {seed}]({os.path.basename(folder)}/{name})")
    return [f"Test images with their Grad-CAM and overlay (seed {seed}; columns: "
            + ", ".join(f"`{row['name']}`" for row, _ in found) + "):", "",
            "| " + " | ".join(row["name"] for row, _ in found) + " |", "|" + "---|" * len(found),
            "| " + " | ".join(links) + " |"]


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.machine()}, {model or 'unknown CPU'}, {os.cpu_count()} CPU cores, {platform.system()}"


def explained_table(table, rows, config, rel, seeds, done, total):
    """The Markdown of an `explain` table: one row per CAM method, the same trained models."""
    spec = table["explain"]
    out = [f"Table `{table['id']}`, regenerate: `scripts/study.py {rel} --only {table['id']}` (after table "
           f"`{spec['table']}`). The runs of row `{spec['row']}` of table `{spec['table']}` (dataset "
           f"{config['dataset']}, model {config['model']}), each evaluated by every CAM method: `batchcam eval "
           f"RUN/last.pt --method METHOD --out RUN/eval-METHOD.json`. Seeds {seeds}; mean ± standard deviation "
           f"over seeds ({done} of {total} evaluations finished).", ""]
    columns = table.get("columns") or DEFAULT_COLUMNS
    out.append("| explainer | " + " | ".join(COLUMNS[c][0] for c in columns) + " | seeds |")
    out.append("|---|" + "---|" * len(columns) + "---|")
    for row, rs in rows:
        out.append(f"| {row['name']} | " + " | ".join(cell(rs, c) if rs else "pending" for c in columns)
                   + f" | {len(rs)} |")
    return out + ([""] + table["text"] if table.get("text") else [])


def report(study, path_of_study, tables, output):
    rel = os.path.relpath(path_of_study, ROOT)
    out = [f"# {study['title']}", "",
           f"Regenerate everything below: `scripts/study.py {rel}` (runs what is missing, then rewrites this "
           f"file; `--only TABLE` runs one table, `--report-only` only rewrites). Runs: `{study['runs']}/`. "
           f"Machine: {machine()}. Every number comes from the runs' eval.json, metrics.jsonl and config.json.",
           ""]
    out += study.get("preamble", [])
    for tid, (table, rows, config) in tables.items():
        out += ["", f"## {table['title']}", ""]
        if config is None and "explain" in table:
            out += [f"Pending: no evaluation of this table has finished. Run it with `scripts/study.py {rel} --only "
                    f"{tid}` after table `{table['explain']['table']}`.", ""]
            continue
        base = f"preset `{table['preset']}`" if "preset" in table else "the defaults of `batchcam train`"
        if config is None:
            needs = f" It needs {table['needs']}, so a plain run of the study skips it." if "needs" in table else ""
            out += [f"Pending: no run of this table has finished.{needs} Run it with "
                    f"`scripts/study.py {rel} --only {tid}`. Runs: {base} with "
                    f"{json.dumps(table.get('set', {}))}; budget: {table['budget']}; seeds {table['seeds']}.", ""]
            out += table.get("text", [])
            continue
        seeds = sorted({s for s in table["seeds"]})
        done = sum(len(rs) for _, rs in rows)
        total = len(rows) * len(seeds)
        if "explain" in table:
            out += explained_table(table, rows, config, rel, seeds, done, total)
            continue
        out += [f"Table `{tid}`, regenerate: `scripts/study.py {rel} --only {tid}`. Runs: {base} "
                f"with {json.dumps(table.get('set', {}))}: dataset {config['dataset']}, model {config['model']}, "
                f"{config['epochs']} epochs, batch {config['batch_size']}, {config['optimizer']} lr {config['lr']}, "
                f"{config['schedule']} schedule. Budget: {table['budget']}. Seeds {seeds}; "
                f"mean ± standard deviation over seeds ({done} of {total} runs finished).", ""]
        columns = columns_of(table, rows)
        # Training time over CE only's, from the means of s/epoch, beside the s/epoch column.
        ce_seconds = next((mean(rs, "seconds") for row, rs in rows if row["name"] == "ce" and rs), None)
        over_ce = "seconds" in columns and bool(ce_seconds)
        headers = [COLUMNS[c][0] for c in columns] + (["time over CE"] if over_ce else [])
        out.append("| row | loss | distance | " + " | ".join(headers) + " | seeds |")
        out.append("|---|---|---|" + "---|" * len(headers) + "---|")
        for row, rs in rows:
            cells = [cell(rs, c) if rs else "pending" for c in columns]
            if over_ce:
                seconds = mean(rs, "seconds") if rs else None
                cells.append(f"{seconds / ce_seconds:.2f}" if seconds is not None else "pending")
            out.append(f"| {row['name']} | {row['label']} | {row['distance']} | " + " | ".join(cells)
                       + f" | {len(rs)} |")
        for spec in (r for r in table.get("rows", []) if "chosen_by" in r):
            chosen = chosen_row(study, spec["chosen_by"], table)
            if chosen is None:
                out += ["", f"Pending: the row chosen by \"{spec['chosen_by']}\" (section Defaults) runs once that "
                        f"decision is made; then run `scripts/study.py {rel} --only {tid}`."]
            elif chosen == NO_ELIGIBLE_ROW:
                out += ["", f"Decision \"{spec['chosen_by']}\" found no eligible row, so this table has no row "
                        "chosen by it."]
        pictures = copy_pictures(study, table, rows, output)
        if pictures:
            out += [""] + pictures
        lines = comparison(rows, columns)
        if lines:
            out += ["", "Difference of means against CE only (\"within noise\": less than twice the standard error "
                    "of the difference over seeds):", ""] + lines
        if table.get("text"):
            out += [""] + table["text"]
    if study.get("decisions"):
        out += ["", "## Defaults"]
        for decision in study["decisions"]:
            choice = combine(decision, study, tables) if "combine" in decision else choose(decision, tables)
            out += ["", f"### {decision['title']}", ""] + decision.get("text", []) + [""] + choice
    if study.get("goals"):
        out += ["", "## Goals"]
        for spec in study["goals"]:
            out += ["", f"### {spec['title']}", ""] + spec.get("text", []) + [""] + goal(spec, study, tables)
    out += ["", "## Columns", ""] + study.get("glossary", [])
    return "\n".join(out) + "\n"


def main():
    parser = argparse.ArgumentParser(description="Run a batchcam study and write its report.")
    parser.add_argument("study", help="study file (JSON), e.g. studies/results.json")
    parser.add_argument("--only", default="", help="comma-separated table ids to run (the report keeps every table)")
    parser.add_argument("--report-only", action="store_true", help="run nothing, only rewrite the report")
    parser.add_argument("--dry-run", action="store_true", help="list the runs still to do and exit")
    parser.add_argument("--bin", default=os.path.join(ROOT, "build", "batchcam"), help="the batchcam executable")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per run (0 = every core)")
    parser.add_argument("--output", help="write the report here instead of the study's output")
    args = parser.parse_args()
    try:
        study = load_json(args.study)
        for key in ("title", "output", "runs", "tables"):
            if key not in study:
                raise StudyError(f"{args.study}: missing key '{key}'")
        only = {t for t in args.only.split(",") if t}
        unknown = only - {t["id"] for t in study["tables"]}
        if unknown:
            raise StudyError(f"--only: no table {', '.join(sorted(unknown))} in {args.study}")
        runs = plan(study, only)
        if args.dry_run:
            for table, row, seed, config, run_dir in runs:
                state = "done" if finished(config, run_dir, row) else "to run"
                if state != "done" and "needs" in table and table["id"] not in only:
                    state = "skipped (needs " + table["needs"].split(",")[0] + "; name it with --only)"
                print(f"{table['id']} {row['name']} seed {seed}: {state}")
            return 0
        if not args.report_only:
            if not os.access(args.bin, os.X_OK):
                raise StudyError(f"{args.bin}: no batchcam executable (build it: scripts/dev build)")
            execute(runs, args.bin, args.threads, only)
            # Rows chosen by a decision whose tables have just finished: run them now.
            again = plan(study, only)
            if len(again) > len(runs):
                execute(again, args.bin, args.threads, only)
        output = args.output or os.path.join(ROOT, study["output"])
        text = report(study, os.path.abspath(args.study), collect(study), output)
        temp = output + ".tmp"
        with open(temp, "w") as f:
            f.write(text)
        os.replace(temp, output)
        print(f"study: wrote {os.path.relpath(output)}")
        return 0
    except StudyError as e:
        print(f"study: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
