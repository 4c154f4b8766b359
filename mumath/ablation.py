"""The ablation's summary: per cell accuracy and why trajectories end, and the paper's claims as paired tests.

    python -m mumath.ablation <run_dir> [<out_dir>]     # default out_dir: <run_dir>/ablation

A cell is one model x benchmark x mode, read from the run's evaluation folders (`evaluate.<model>/...`,
first sample per problem, the metrics' configuration fingerprint). The paper's claims are orderings, so each
is tested on the same problems (paired): McNemar's exact test on the discordant problems for the p-value
(scipy's binomial test), and a paired bootstrap of the accuracy difference for its 95 % interval. A
comparison that does not separate (p >= 0.05) is reported as null, with the number of problems a run would
need to detect the difference with 80 % power (McNemar, Connor 1987), taking at least `MIN_EFFECT`.

`export` writes summary.json beside the params file, the manifest, each stage's stats and every cell's
trajectories (gzip), so anyone can re-grade or browse them.
"""
import gzip
import json
import math
import shutil
import sys
from collections import Counter
from pathlib import Path

from .records import read_jsonl, write_json

ALPHA, POWER, MIN_EFFECT = 0.05, 0.8, 0.05
BOOTSTRAP_SAMPLES = 10_000
# Why a trajectory ends, first match wins (TIR format failures first: a TIR answer without code did not
# use the tool; then an answer, right or wrong; then why there is none).
FINISH_REASONS = ("no_code", "answered", "truncated", "timeout", "code_error", "no_answer")
# The paper's comparisons, per benchmark: (name, (model, mode), (model, mode)); a model is the part after
# "evaluate." of its evaluation step. TIR vs CoT is added for every model.
COMPARISONS = (
    ("trained vs base (TIR)", ("two_stage", "tir"), ("base", "tir")),
    ("trained vs base (CoT)", ("two_stage", "cot"), ("base", "cot")),
    ("both stages vs stage 2 only (TIR)", ("two_stage", "tir"), ("stage2_only", "tir")),
    ("both stages vs stage 1 only (TIR)", ("two_stage", "tir"), ("stage1", "tir")),
    ("both stages (TIR) vs stage 1 only (CoT, its format)", ("two_stage", "tir"), ("stage1", "cot")),
    ("all rows vs half the stage-2 rows (TIR)", ("two_stage", "tir"), ("two_stage_half", "tir")),
)


class AblationError(ValueError):
    pass


def finish_reason(row):
    """One of FINISH_REASONS for a trajectory row (evaluate's trajectories.jsonl)."""
    executions = row.get("executions") or []
    if row.get("mode") == "tir" and not executions:
        return "no_code"
    if row.get("pred") is not None:
        return "answered"
    if row.get("finish") == "length":
        return "truncated"
    if any(execution.get("timed_out") for execution in executions):
        return "timeout"
    if any(execution.get("error") for execution in executions):
        return "code_error"
    return "no_answer"


def wilson(successes, n, z=1.96):
    if n == 0:
        return [0.0, 0.0]
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def model_of_folder(run_dir, metrics_path):
    """'evaluate.two_stage/...' -> 'two_stage'; a plain 'evaluate' folder -> 'evaluate'."""
    step = Path(metrics_path).relative_to(run_dir).parts[0]
    return step.split(".", 1)[1] if "." in step else step


def cell_rows(metrics_path, metrics):
    """First sample per problem, this configuration's rows only (as the metrics count them)."""
    rows, seen = [], set()
    for row in read_jsonl(Path(metrics_path).with_name("trajectories.jsonl")):
        if metrics.get("fingerprint") and row.get("fingerprint") != metrics["fingerprint"]:
            continue
        if row.get("sample", 0) != 0 or row["id"] in seen:
            continue
        seen.add(row["id"])
        rows.append(row)
    return rows


def collect_cells(run_dir):
    """{(model, benchmark, mode): (rows, metrics path)} for every evaluation of the run."""
    run_dir = Path(run_dir)
    cells = {}
    for path in sorted(run_dir.glob("evaluate*/**/metrics.json")):
        metrics = json.loads(path.read_text())
        if not isinstance(metrics, dict) or not {"benchmark", "mode", "n"} <= set(metrics):
            continue
        key = (model_of_folder(run_dir, path), metrics["benchmark"], metrics["mode"])
        cells[key] = (cell_rows(path, metrics), path)
    if not cells:
        raise AblationError(f"{run_dir}: no evaluation metrics (evaluate*/**/metrics.json); run the evaluate steps")
    return cells


def cell_summary(key, rows):
    model, benchmark, mode = key
    n, correct = len(rows), sum(bool(row["correct"]) for row in rows)
    reasons = Counter(finish_reason(row) for row in rows)
    return {"model": model, "benchmark": benchmark, "mode": mode, "n": n, "correct": correct,
            "accuracy": round(correct / n, 4) if n else 0.0, "ci95": wilson(correct, n),
            "finish_reasons": {reason: round(reasons[reason] / n, 4) if n else 0.0 for reason in FINISH_REASONS},
            "finish_counts": {reason: reasons[reason] for reason in FINISH_REASONS}}


def problems_for_power(discordant_share, effect, alpha=ALPHA, power=POWER):
    """Paired problems McNemar's test needs to detect `effect` (a difference of accuracies) with `power`."""
    from scipy.stats import norm

    effect = max(abs(effect), MIN_EFFECT)
    discordant_share = min(1.0, max(discordant_share, effect * 1.5))  # p10 + p01 >= |p10 - p01|
    z_alpha, z_beta = norm.ppf(1 - alpha / 2), norm.ppf(power)
    return math.ceil((z_alpha * math.sqrt(discordant_share) + z_beta * math.sqrt(discordant_share - effect ** 2)) ** 2
                     / effect ** 2)


def paired_test(a, b, seed=0, samples=BOOTSTRAP_SAMPLES):
    """a, b: 0/1 per problem (same order). Difference, bootstrap 95 % interval, McNemar exact p-value."""
    import numpy as np
    from scipy.stats import binomtest

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    n = len(a)
    if n == 0:
        raise AblationError("a paired comparison needs problems both cells share")
    only_a, only_b = int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())
    difference = float(a.mean() - b.mean())
    p_value = float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    boot = (a[draws] - b[draws]).mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    result = {"n": n, "difference": round(difference, 4), "ci95": [round(float(low), 4), round(float(high), 4)],
              "p_value": round(p_value, 4), "only_first_correct": only_a, "only_second_correct": only_b,
              "test": "McNemar exact (binomial on discordant pairs); paired bootstrap interval"}
    if p_value < ALPHA:
        result["verdict"] = "first better" if difference > 0 else "second better"
    else:
        needed = problems_for_power((only_a + only_b) / n, difference)
        result["verdict"] = "null (does not separate)"
        result["power_note"] = (
            f"not separated at n={n}; detecting a difference of {max(abs(difference), MIN_EFFECT):.0%} with "
            f"{POWER:.0%} power needs about {needed} paired problems per cell (McNemar, discordant share "
            f"{(only_a + only_b) / n:.0%}); if the difference is near zero, more training rows (the data-scaling "
            f"comparison) are what could change it")
        result["problems_for_80pct_power"] = needed
    return result


def paired_outcomes(rows_a, rows_b):
    by_id = {row["id"]: bool(row["correct"]) for row in rows_b}
    shared = [row for row in rows_a if row["id"] in by_id]
    return [int(bool(row["correct"])) for row in shared], [int(by_id[row["id"]]) for row in shared]


def comparisons(cells, specs=COMPARISONS):
    benchmarks = sorted({benchmark for _, benchmark, _ in cells})
    models = sorted({model for model, _, _ in cells})
    wanted = list(specs) + [(f"TIR vs CoT ({model})", (model, "tir"), (model, "cot")) for model in models]
    results = []
    for benchmark in benchmarks:
        for name, (model_a, mode_a), (model_b, mode_b) in wanted:
            key_a, key_b = (model_a, benchmark, mode_a), (model_b, benchmark, mode_b)
            if key_a not in cells or key_b not in cells:
                continue
            a, b = paired_outcomes(cells[key_a][0], cells[key_b][0])
            if not a:
                continue
            results.append({"comparison": name, "benchmark": benchmark, "first": list(key_a), "second": list(key_b),
                            **paired_test(a, b)})
    return results


def stage_stats(run_dir):
    """{stage folder: its stats.json} for every training step of the run (stage1, stage2, stage2.<variant>)."""
    stats = {}
    for path in sorted(Path(run_dir).glob("stage*/stats.json")):
        stats[path.parent.name] = json.loads(path.read_text())
    return stats


def training_rows(stats):
    """Rows each stage trained on (after the length filter): {stage1: n, stage2: n} from the main stages."""
    rows = {}
    for stage in ("stage1", "stage2"):
        if stage in stats:
            rows[stage] = stats[stage]["examples"]["examples"]
    return rows


def summarize(run_dir):
    cells = collect_cells(run_dir)
    stats = stage_stats(run_dir)
    return {
        "run_dir": str(run_dir),
        "cells": [cell_summary(key, rows) for key, (rows, _) in sorted(cells.items())],
        "comparisons": comparisons(cells),
        "training_rows": training_rows(stats),
        "training": {stage: {key: s.get(key) for key in ("init_model", "data", "examples", "data_fraction", "epochs",
                                                         "steps", "learning_rate", "precision", "torch_threads",
                                                         "tokens_trained", "seconds", "tokens_per_second",
                                                         "final_loss")}
                     for stage, s in stats.items()},
        "finish_reasons_order": list(FINISH_REASONS),
        "alpha": ALPHA,
    }


def export(run_dir, out_dir, params_file=None):
    """summary.json, the figure, params, manifest, stage stats and gzip trajectories -> out_dir."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(run_dir)
    for name in ("manifest.json",):
        if (run_dir / name).exists():
            shutil.copy(run_dir / name, out_dir / name)
    if params_file:
        shutil.copy(params_file, out_dir / Path(params_file).name)
    for stage, stats in stage_stats(run_dir).items():
        write_json(out_dir / "training" / f"{stage}-stats.json", stats)
    for (model, benchmark, mode), (_, path) in collect_cells(run_dir).items():
        target = out_dir / "trajectories" / f"{model}-{benchmark}-{mode}.jsonl.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name("trajectories.jsonl"), "rb") as source, gzip.open(target, "wb") as sink:
            shutil.copyfileobj(source, sink)
    summary["figure"] = plot_cells(summary["cells"], out_dir)
    write_json(out_dir / "summary.json", summary)
    return summary


def plot_cells(cells, out_dir):
    """One bar per cell with its 95 % interval, grouped by benchmark and mode -> accuracy.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(c["benchmark"], c["mode"]) for c in cells})
    models = sorted({c["model"] for c in cells})
    figure, axes = plt.subplots(figsize=(2.2 * len(groups) + 2, 3.2))
    width = 0.8 / max(1, len(models))
    for index, model in enumerate(models):
        xs, ys, errors = [], [], [[], []]
        for position, group in enumerate(groups):
            cell = next((c for c in cells if (c["benchmark"], c["mode"]) == group and c["model"] == model), None)
            if cell is None:
                continue
            xs.append(position + index * width)
            ys.append(cell["accuracy"])
            errors[0].append(cell["accuracy"] - cell["ci95"][0])
            errors[1].append(cell["ci95"][1] - cell["accuracy"])
        axes.bar(xs, ys, width, yerr=errors, capsize=2, label=model)
    axes.set_xticks([position + 0.4 - width / 2 for position in range(len(groups))],
                    [f"{benchmark}\n{mode}" for benchmark, mode in groups])
    axes.set_ylabel("accuracy (95 % CI)")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out_dir / "accuracy.png", dpi=110)
    plt.close(figure)
    return "accuracy.png"


def write_holdout(out, seeds_per_benchmark, problems=200, seed=0, data_dir=None, benchmark="gsm8k:train"):
    """Training problems the ablation's synthesize step does NOT draw (it draws `seeds_per_benchmark` of
    `benchmark` with `seed`): `problems` of the others, seeded, in the raw GSM8K format -> `out` (JSONL).
    The learning-rate / epoch sweep scores on these (params/ablation-sweep.yaml), never on a test set."""
    import random

    from .data import load_many

    name, _, split = benchmark.partition(":")
    everything = load_many([benchmark], "train", data_dir, None, seed)
    used = {record["id"] for record in load_many([benchmark], "train", data_dir, seeds_per_benchmark, seed)}
    unused = [record for record in everything if record["id"] not in used]
    if len(unused) < problems:
        raise AblationError(f"{benchmark}: only {len(unused)} problems are not seeds; asked for {problems}")
    chosen = sorted(random.Random(seed + 1).sample(range(len(unused)), problems))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as file:
        for index in chosen:
            record = unused[index]
            file.write(json.dumps({"id": record["id"], "question": record["question"],
                                   "answer": record["meta"]["answer"]}) + "\n")
    return out, len(used)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["holdout"]:
        if len(argv) not in (3, 4):
            print("usage: python -m mumath.ablation holdout <out.jsonl> <seeds_per_benchmark> [<problems>]",
                  file=sys.stderr)
            return 2
        out, used = write_holdout(argv[1], int(argv[2]), int(argv[3]) if len(argv) > 3 else 200)
        print(f"wrote {out}: problems of gsm8k:train outside the {used} seeds")
        return 0
    if not 1 <= len(argv) <= 3:
        print("usage: python -m mumath.ablation <run_dir> [<out_dir>] [<params file>]", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    summary = export(run_dir, argv[1] if len(argv) > 1 else run_dir / "ablation", argv[2] if len(argv) > 2 else None)
    for cell in summary["cells"]:
        print(f"{cell['model']:>16} {cell['benchmark']:>8} {cell['mode']:>4}: {cell['correct']}/{cell['n']} "
              f"{cell['ci95']}")
    for comparison in summary["comparisons"]:
        print(f"{comparison['benchmark']:>8} {comparison['comparison']}: {comparison['difference']:+.3f} "
              f"{comparison['ci95']} p={comparison['p_value']} -> {comparison['verdict']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
