#!/usr/bin/env python3
"""Tests of scripts/study.py against the real batchcam executable on a tiny shapes study:
the runs it makes, the report it writes from them, and that finished runs are not redone.

usage: study_test.py BATCHCAM_EXECUTABLE
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STUDY_SCRIPT = os.path.join(ROOT, "scripts", "study.py")
BATCHCAM = None


class StudyTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="batchcam-study-")
        with open(os.path.join(cls.dir, "preset.json"), "w") as f:
            json.dump({"dataset": "shapes", "model": "simple-cnn", "train_size": 256, "test_size": 64,
                       "epochs": 1, "batch_size": 32, "lambda_proto": 0.5, "lambda_batch": 0.5}, f)
        cls.study = {
            "title": "Tiny study",
            "output": os.path.join(cls.dir, "results.md"),
            "runs": os.path.relpath(os.path.join(cls.dir, "runs"), ROOT),
            "tables": [{
                "id": "tiny", "title": "Tiny table", "preset": os.path.join(cls.dir, "preset.json"),
                "set": {"image_size": 24}, "budget": "256 images, 1 epoch",
                "grid": {"losses": ["ce", "both"], "distances": ["l1"]},
                "rows": [{"name": "proto-heavy", "label": "+ Prototype Loss x2", "distance": "l2",
                          "set": {"lambda_proto": 1.0, "lambda_batch": 0.0, "distance_proto": "l2"}}],
                "seeds": [0, 1],
            }, {
                "id": "tiny-explain", "title": "Tiny explainers",
                "explain": {"table": "tiny", "row": "ce", "methods": ["grad-cam", "layercam"]},
                "columns": ["deletion", "insertion", "road_combined", "average_drop"],
            }, {
                "id": "big", "title": "Big table", "preset": os.path.join(cls.dir, "preset.json"),
                "budget": "more than this machine has", "needs": "a GPU", "rows": [{"name": "ce"}], "seeds": [0],
            }, {
                # Its second row is the one decision "Loss" chooses on table tiny, run once tiny has finished.
                "id": "follow", "title": "Follow-up table", "preset": os.path.join(cls.dir, "preset.json"),
                "set": {"image_size": 20}, "budget": "256 images, 1 epoch",
                "rows": [{"name": "ce", "set": {"lambda_proto": 0.0, "lambda_batch": 0.0}}, {"chosen_by": "Loss"}],
                "seeds": [0],
            }],
            "decisions": [{"title": "Loss", "tables": ["tiny"], "metrics": ["proto_ssim", "insertion"],
                           "accuracy_tolerance": 100},
                          {"title": "Explainer", "tables": ["tiny-explain"], "rows": ["grad-cam", "layercam"],
                           "metrics": ["deletion", "road_combined"]},
                          {"title": "Both", "combine": {"first": "Explainer", "second": "Loss",
                                                        "counterpart": "both-l1", "fallback": "grad-cam"}}],
            "goals": [{"title": "Goal", "row": {"chosen_by": "Loss"},
                       "checks": [{"table": "follow", "against": "ce", "rule": "drop_at_most", "points": 100}]}],
        }
        cls.study_path = os.path.join(cls.dir, "study.json")
        with open(cls.study_path, "w") as f:
            json.dump(cls.study, f)
        cls.first = cls.run_study()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir)

    @classmethod
    def run_study(cls, *extra):
        result = subprocess.run([sys.executable, STUDY_SCRIPT, cls.study_path, "--bin", BATCHCAM, *extra],
                                capture_output=True, text=True)
        if result.returncode != 0:
            raise AssertionError(f"study.py failed ({result.returncode}): {result.stderr}")
        return result.stdout

    def run_dir(self, name):
        return os.path.join(self.dir, "runs", "tiny", name)

    def config(self, name):
        with open(os.path.join(self.run_dir(name), "config.json")) as f:
            return json.load(f)

    def test_every_row_and_seed_ran_with_the_preset_the_overrides_and_the_row(self):
        self.assertIn("0 of 11 runs done, 11 to run", self.first)
        ce, both, heavy = self.config("ce-s0"), self.config("both-l1-s1"), self.config("proto-heavy-s0")
        self.assertEqual((ce["lambda_proto"], ce["lambda_batch"]), (0.0, 0.0))
        # A grid row keeps the preset's lambdas.
        self.assertEqual((both["lambda_proto"], both["lambda_batch"], both["distance_batch"]), (0.5, 0.5, "l1"))
        self.assertEqual(both["seed"], 1)
        self.assertEqual((heavy["lambda_proto"], heavy["distance_proto"]), (1.0, "l2"))
        for c in (ce, both, heavy):
            self.assertEqual((c["image_size"], c["train_size"], c["batch_size"]), (24, 256, 32))

    def test_report_cells_are_the_mean_and_spread_of_the_runs(self):
        with open(self.study["output"]) as f:
            text = f.read()
        accuracies = []
        for seed in (0, 1):
            with open(os.path.join(self.run_dir(f"both-l1-s{seed}"), "eval.json")) as f:
                accuracies.append(100 * json.load(f)["accuracy"])
        expected = f"{statistics.mean(accuracies):.2f} ± {statistics.stdev(accuracies):.2f}"
        row = next(line for line in text.splitlines() if line.startswith("| both-l1 |"))
        self.assertEqual(row.split(" | ")[3], expected)
        self.assertIn("| proto-heavy | + Prototype Loss x2 | l2 |", text)
        self.assertIn("- `both-l1` vs `ce`: test acc %", text)
        self.assertIn("**Chosen: `", text)
        self.assertNotIn("| pending", text)
        # A table that needs what this machine lacks is not run, and the report says how to run it.
        self.assertFalse(os.path.exists(os.path.join(self.dir, "runs", "big")))
        self.assertIn("Pending: no run of this table has finished. It needs a GPU", text)
        self.assertIn("--only big`", text)

    def test_a_chosen_row_runs_after_its_decision_and_the_goal_reads_it(self):
        # The first invocation planned 11 runs; once tiny had finished, decision Loss chose a row and
        # its run in table follow followed.
        self.assertIn("11 of 12 runs done, 1 to run", self.first)
        with open(self.study["output"]) as f:
            text = f.read()
        chosen = text[text.index("### Loss"):].split("**Chosen: `")[1].split("`")[0]
        with open(os.path.join(self.dir, "runs", "follow", f"{chosen}-s0", "config.json")) as f:
            follow = json.load(f)
        original = self.config(f"{chosen}-s0")
        self.assertEqual((follow["lambda_proto"], follow["lambda_batch"], follow["distance_proto"]),
                         (original["lambda_proto"], original["lambda_batch"], original["distance_proto"]))
        self.assertEqual((follow["image_size"], original["image_size"]), (20, 24), "the follow table's own set")
        follow_table = text[text.index("## Follow-up table"):]
        follow_table = follow_table[:follow_table.index("\n## ", 1)]
        label = {"both-l1": "+ both", "proto-heavy": "+ Prototype Loss x2"}[chosen]
        self.assertIn(f"\n| {chosen} | {label}, chosen by \"Loss\" |", follow_table)
        goal = text[text.index("## Goals"):]
        self.assertIn(f"Row: `{chosen}`, chosen by \"Loss\".", goal)
        # Only that the goal reads the chosen row's runs: a loss of up to 100 points is allowed.
        self.assertIn(f"`follow`, test acc %: `{chosen}` ", goal)
        self.assertIn("**Goal met.**", goal)

    def test_an_explain_table_evaluates_the_trained_runs_with_each_method(self):
        deletion = []
        for seed in (0, 1):
            with open(os.path.join(self.run_dir(f"ce-s{seed}"), "eval-layercam.json")) as f:
                e = json.load(f)
            self.assertEqual(e["cam_method"], "layercam")
            self.assertTrue(e["checkpoint"]["path"].endswith("last.pt"), e["checkpoint"])
            deletion.append(e["faithfulness"]["deletion_auc"])
            self.assertTrue(os.path.isfile(os.path.join(self.run_dir(f"ce-s{seed}"), "eval-grad-cam.json")))
        with open(self.study["output"]) as f:
            text = f.read()
        row = next(line for line in text.splitlines() if line.startswith("| layercam |"))
        self.assertEqual(row.split(" | ")[1], f"{statistics.mean(deletion):.3f} ± {statistics.stdev(deletion):.3f}")
        explainer = text[text.index("### Explainer"):text.index("### Both")]
        chosen = explainer.split("**Chosen: `")[1].split("`")[0]
        self.assertIn(chosen, ("grad-cam", "layercam"))
        self.assertIn(f"**Chosen: `{chosen}`.**", text[text.index("### Both"):], "both-l1 is eligible in Loss")

    def test_finished_runs_are_kept_and_a_changed_table_reruns_only_what_changed(self):
        second = self.run_study()
        self.assertIn("12 of 12 runs done, 0 to run", second)
        changed = json.loads(json.dumps(self.study))
        changed["tables"][0]["rows"][0]["set"]["lambda_proto"] = 2.0
        path = os.path.join(self.dir, "changed.json")
        with open(path, "w") as f:
            json.dump(changed, f)
        result = subprocess.run([sys.executable, STUDY_SCRIPT, path, "--bin", BATCHCAM, "--dry-run"],
                                capture_output=True, text=True, check=True)
        # --dry-run reports runs by whether their results exist for the config asked for.
        self.assertIn("tiny proto-heavy seed 0: to run", result.stdout)
        self.assertIn("tiny ce seed 0: done", result.stdout)

    def test_bad_study_files_fail_with_one_line_naming_the_problem(self):
        bad = os.path.join(self.dir, "bad.json")
        with open(bad, "w") as f:
            f.write('{"title": "x"')
        result = subprocess.run([sys.executable, STUDY_SCRIPT, bad, "--bin", BATCHCAM], capture_output=True, text=True)
        self.assertEqual(result.returncode, 1)
        self.assertTrue(result.stderr.startswith(f"study: error: {bad}:"), result.stderr)
        result = subprocess.run([sys.executable, STUDY_SCRIPT, self.study_path, "--only", "nope"],
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn("--only: no table nope", result.stderr)


class GoalTest(unittest.TestCase):
    """A goal's checks on made-up measurements (no runs)."""

    @staticmethod
    def study():
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        import study
        return study

    def test_each_rule_and_the_verdict(self):
        study = self.study()
        tables = {
            # x is 1.0 below ref; the standard error of the difference is sqrt(1/3 + 1/3) = 0.816.
            "decoy": ChooseTest.table({"x": [{"accuracy": v} for v in (96.0, 97.0, 98.0)],
                                       "ref": [{"accuracy": v} for v in (97.0, 98.0, 99.0)]}),
            # x is 0.3 below ce (as floats, 0.30000000000001 below): a loss of 0.3 is allowed.
            "clean": ChooseTest.table({"x": [{"accuracy": 98.8}, {"accuracy": 98.9}],
                                       "ce": [{"accuracy": 99.1}, {"accuracy": 99.2}]}),
        }
        spec = {"title": "G", "row": "x", "checks": [
            {"table": "decoy", "against": "ref", "rule": "not_clearly_below"},
            {"table": "clean", "against": "ce", "rule": "drop_at_most", "points": 0.3}]}
        lines = study.goal(spec, {}, tables)
        self.assertEqual(lines[0], "Row: `x`.")
        self.assertIn("difference -1.00 points; the rule allows a loss of at most twice its standard error, "
                      "1.63 points: **met**.", lines[2])
        self.assertIn("difference -0.30 points; the rule allows a loss of at most 0.3 points: **met**.", lines[3])
        self.assertEqual(lines[-1], "**Goal met.**")
        spec["checks"][1]["points"] = 0.2
        self.assertEqual(study.goal(spec, {}, tables)[-1], "**Goal not met.**")
        spec["checks"][1]["points"] = 0.3
        tables["decoy"] = ChooseTest.table({"x": [{"accuracy": v} for v in (94.0, 95.0, 96.0)],
                                            "ref": [{"accuracy": v} for v in (97.0, 98.0, 99.0)]})
        lines = study.goal(spec, {}, tables)
        self.assertIn("difference -3.00 points; the rule allows a loss of at most twice its standard error, "
                      "1.63 points: **not met**.", lines[2])
        self.assertEqual(lines[-1], "**Goal not met.**")
        # A failed check decides, even while another still waits for its runs.
        tables["clean"] = ChooseTest.table({"x": [], "ce": [{"accuracy": 99.1}]})
        self.assertEqual(study.goal(spec, {}, tables)[-1], "**Goal not met.**")
        tables["decoy"] = ChooseTest.table({"x": [{"accuracy": 99.0}], "ref": [{"accuracy": 98.0}]})
        lines = study.goal(spec, {}, tables)
        self.assertIn("one run a side", lines[2])
        self.assertEqual(lines[-1], "Pending: not every check has its runs yet.")

    def test_a_metric_where_lower_is_better_counts_a_rise_as_a_loss(self):
        study = self.study()
        tables = {"t": ChooseTest.table({"x": [{"follows_decoy": 0.5}], "ref": [{"follows_decoy": 0.1}]})}
        spec = {"title": "G", "row": "x", "checks": [
            {"table": "t", "against": "ref", "metric": "follows_decoy", "rule": "drop_at_most", "points": 0.3}]}
        lines = study.goal(spec, {}, tables)
        self.assertIn("difference +0.400 (lower is better)", lines[2])
        self.assertEqual(lines[-1], "**Goal not met.**")
        tables = {"t": ChooseTest.table({"x": [{"follows_decoy": 0.1}], "ref": [{"follows_decoy": 0.5}]})}
        self.assertEqual(study.goal(spec, {}, tables)[-1], "**Goal met.**")

    def test_a_goal_naming_what_does_not_exist_is_refused(self):
        study = self.study()
        # As measurements() gives them: every key, None where not measured.
        tables = {"t": ChooseTest.table({"x": [{"accuracy": 99.0, "seconds": None}],
                                         "ce": [{"accuracy": 99.0, "seconds": None}]})}
        good = {"table": "t", "against": "ce", "rule": "drop_at_most", "points": 0.3}
        for check, message in ((dict(good, table="u"), "no table 'u'"),
                               (dict(good, against="y"), "table t has no row 'y'"),
                               (dict(good, rule="close"), "unknown rule 'close'"),
                               ({k: v for k, v in good.items() if k != "points"}, "needs a number 'points'"),
                               (dict(good, metric="seconds"), None),
                               (dict(good, metric="speed"), "metric 'speed'")):
            spec = {"title": "G", "row": "x", "checks": [check]}
            if message is None:
                with self.assertRaisesRegex(study.StudyError, "no values of seconds"):
                    study.goal(spec, {}, tables)
                continue
            with self.assertRaisesRegex(study.StudyError, message):
                study.goal(spec, {}, tables)


class ChooseTest(unittest.TestCase):
    """The defaults rule on made-up measurements (no runs)."""

    @staticmethod
    def table(rows):
        return ({"id": "t"}, [({"name": name}, [dict(m) for m in ms]) for name, ms in rows.items()], {})

    def test_the_best_mean_rank_among_rows_that_keep_accuracy_wins(self):
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        import study
        rows = {
            "ce": [{"accuracy": 99.0, "proto_ssim": 0.1, "deletion": 0.3}],
            # Best explanations but 1 point less accurate than CE only: not eligible.
            "a": [{"accuracy": 98.0, "proto_ssim": 0.9, "deletion": 0.1}],
            # Ranks: proto_ssim 2, deletion 3 -> 2.5.
            "b": [{"accuracy": 98.9, "proto_ssim": 0.8, "deletion": 0.25}],
            # Ranks: proto_ssim 3, deletion 2 -> 2.5; ties are broken by name.
            "c": [{"accuracy": 99.1, "proto_ssim": 0.5, "deletion": 0.2}, {"accuracy": 98.9, "proto_ssim": 0.5,
                                                                          "deletion": 0.2}],
        }
        decision = {"tables": ["t"], "metrics": ["proto_ssim", "deletion"], "accuracy_tolerance": 0.3}
        lines = study.choose(decision, {"t": self.table(rows)})
        self.assertIn("| a | no | 1.00 |", lines)
        self.assertIn("| b | yes | 2.50 |", lines)
        self.assertIn("| c | yes | 2.50 |", lines)
        self.assertEqual(lines[-1], "**Chosen: `b`.**")
        # A larger drop that is within noise over seeds does not rule a row out.
        noisy = dict(rows, ce=[{"accuracy": 99.0, "proto_ssim": 0.1, "deletion": 0.3},
                               {"accuracy": 97.0, "proto_ssim": 0.1, "deletion": 0.3}],
                     a=[{"accuracy": 98.0, "proto_ssim": 0.9, "deletion": 0.1},
                        {"accuracy": 96.0, "proto_ssim": 0.9, "deletion": 0.1}])
        self.assertEqual(study.choose(decision, {"t": self.table(noisy)})[-1], "**Chosen: `a`.**")
        decision["accuracy_tolerance"] = 2
        self.assertEqual(study.choose(decision, {"t": self.table(rows)})[-1], "**Chosen: `a`.**")
        self.assertEqual(study.choose(decision, {})[0], "Pending: not every table of this decision has results yet.")

    def test_a_combined_choice_takes_the_best_first_row_whose_counterpart_qualifies(self):
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        import study
        explainers = {"x": [{"deletion": 0.1}], "y": [{"deletion": 0.2}]}  # x ranks first
        training = {"proto-x": [{"accuracy": 90.0}], "proto-y": [{"accuracy": 99.0}]}  # x loses 9 points
        decisions = [{"title": "E", "tables": ["e"], "rows": ["x", "y"], "metrics": ["deletion"]},
                     {"title": "T", "tables": ["t"], "rows": ["proto-x", "proto-y"], "baseline": "proto-y",
                      "metrics": ["accuracy"], "accuracy_tolerance": 0.3}]
        both = {"title": "B", "combine": {"first": "E", "second": "T", "counterpart": "proto-{}", "fallback": "z"}}
        tables = {"e": self.table(explainers), "t": self.table(training)}
        self.assertEqual(study.combine(both, {"decisions": decisions + [both]}, tables)[-1], "**Chosen: `y`.**")
        training["proto-y"] = [{"accuracy": 99.0}]
        tables["t"] = self.table(dict(training, **{"proto-x": [{"accuracy": 99.0}]}))
        self.assertEqual(study.combine(both, {"decisions": decisions + [both]}, tables)[-1], "**Chosen: `x`.**")
        decisions[1]["baseline"] = "ce"
        tables["t"] = self.table({"ce": [{"accuracy": 99.0}], "proto-x": [{"accuracy": 90.0}],
                                  "proto-y": [{"accuracy": 90.0}]})
        self.assertEqual(study.combine(both, {"decisions": decisions + [both]}, tables)[-1], "**Chosen: `z`.**",
                         "none qualifies: the fallback")

    def test_values_equal_as_shown_share_their_rank_whatever_the_order(self):
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        import study
        # x and y tie at 3 digits (0.2001 and 0.2004 both show as 0.200); z is worse.
        rows = {"x": [{"deletion": 0.2001}], "y": [{"deletion": 0.2004}], "z": [{"deletion": 0.3}]}
        decision = {"tables": ["t"], "rows": ["y", "z", "x"], "metrics": ["deletion"]}
        lines = study.choose(decision, {"t": self.table(rows)})
        self.assertIn("| x | yes | 1.50 |", lines)
        self.assertIn("| y | yes | 1.50 |", lines)
        self.assertIn("| z | yes | 3.00 |", lines)
        self.assertEqual(lines[-1], "**Chosen: `x`.**", "a tie goes to the first name")

    def test_the_comparison_leaves_out_times_the_table_does_not_show(self):
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        import study
        unmeasured = {key: None for key in study.COLUMNS}  # as measurements() gives a run
        runs = {"ce": [dict(unmeasured, accuracy=90.0, seconds=10.0)],
                "x": [dict(unmeasured, accuracy=95.0, seconds=50.0)]}
        rows = self.table(runs)[1]
        self.assertEqual(study.comparison(rows, ["accuracy", "seconds"]),
                         ["- `x` vs `ce`: test acc % +5.00 pt, train s/epoch +40.0", "- One seed: these differences "
                          "carry no noise estimate."])
        self.assertEqual(study.comparison(rows, ["accuracy"])[0], "- `x` vs `ce`: test acc % +5.00 pt")

    def test_a_difference_is_clear_only_beyond_twice_its_standard_error(self):
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        import study
        a = [{"accuracy": v} for v in (1.0, 2.0, 3.0)]  # mean 2, variance 1
        b = [{"accuracy": v} for v in (0.0, 1.0, 2.0)]  # mean 1, variance 1
        # Standard error sqrt(1/3 + 1/3) = 0.816: a difference of 1 is within noise, of 2 clear.
        self.assertEqual(study.difference(a, b, "accuracy"), (1.0, False))
        c = [{"accuracy": v} for v in (3.0, 4.0, 5.0)]
        self.assertEqual(study.difference(c, b, "accuracy"), (3.0, True))
        self.assertEqual(study.difference(a[2:], b, "accuracy"), (2.0, None), "one run: no verdict")
        self.assertEqual(study.difference([{"accuracy": None}], b, "accuracy"), (None, None), "null: not measured")
        # A share cannot be negative: -1 there is batchcam 0.1's "not measured"; an SSIM can.
        self.assertEqual(study.values([{"decoy_share": -1}, {"decoy_share": 0.25}], "decoy_share"), [0.25])
        self.assertEqual(study.values([{"input_ssim": -0.125}], "input_ssim"), [-0.125])


if __name__ == "__main__":
    BATCHCAM = sys.argv.pop(1)
    unittest.main()
