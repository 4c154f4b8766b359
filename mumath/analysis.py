"""Analysis (step 7): read a run's outputs (or several runs'), write figures and a one-page report.

It reads only what the steps wrote, never re-runs anything:

| section       | files read (under each run folder)                                                   |
|---------------|---------------------------------------------------------------------------------------|
| provenance    | ``manifest.json`` (its path and git commit are cited next to every number)            |
| filter        | ``filter/funnel.json``, ``filter/dropped.jsonl``, ``filter/contamination.json``       |
| augmentation  | ``augment/stats.json``, ``augment/rejected.jsonl``                                    |
| synthesis     | ``synthesize/stats.json``, ``synthesize/<stage>.jsonl``                               |
| evaluation    | every ``**/metrics.json`` with a benchmark and a mode, its ``trajectories.jsonl`` and |
|               | ``config.json`` beside it (wherever the evaluate step puts them)                      |
| training      | ``stage1/``, ``stage2/``: ``log.jsonl`` (loss, learning rate per step), ``stats.json`` |

Accuracy is recomputed from the trajectories (first sample of each problem, the metrics' configuration
fingerprint when there is one), so the report's numbers can be checked against the rows they come from;
without trajectories the metrics file's own counts are used. Every share comes with its n and a 95 % Wilson
interval. A step whose outputs are absent is reported as "not run"; nothing here fails on a missing step.
"""
import json
import re
from collections import Counter
from pathlib import Path

import yaml

from .config import step_folders, step_of
from .evaluate import wilson_interval
from .records import read_jsonl, write_json

PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")
NOT_RUN = "not run"
STAGE_DIRS = ("stage1", "stage2")
ROLES = (("stage2", "stage-2"), ("stage1", "stage-1"))  # a model path naming a stage folder is that stage's


class AnalysisError(ValueError):
    pass


# ------------------------------------------------------------------------------------------ reading

def read_json(path):
    """A JSON file's content, None when the file does not exist; a broken file is an error naming it."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise AnalysisError(f"{path}: not valid JSON (line {error.lineno}): {error.msg}") from error


def share(successes, n):
    """{successes, n, share, ci95} for a proportion, with the 95 % Wilson interval."""
    low, high = wilson_interval(successes, n)
    return {"successes": successes, "n": n, "share": successes / n if n else None, "ci95": [low, high]}


def fmt_share(value, digits=1):
    """'36.4 % (4/11; 95 % CI 15.2-64.6)', or 'n = 0'."""
    if not value or not value["n"]:
        return "n = 0"
    low, high = value["ci95"]
    return (f"{100 * value['share']:.{digits}f} % ({value['successes']}/{value['n']}; "
            f"95 % CI {100 * low:.{digits}f}-{100 * high:.{digits}f})")


def provenance(run_dir):
    """Where a run's numbers come from: its manifest's path and the git commit it ran at."""
    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "manifest.json")
    if manifest is None:
        return {"run": run_dir.name, "run_dir": str(run_dir), "manifest": None, "commit": None, "dirty": None,
                "status": None, "params": {}}
    git = manifest.get("git") or {}
    return {"run": manifest.get("run", run_dir.name), "run_dir": str(run_dir),
            "manifest": str(run_dir / "manifest.json"), "commit": git.get("commit"), "dirty": git.get("dirty"),
            "status": manifest.get("status"), "params": manifest.get("params") or {}}


def cite(prov):
    """'manifest outputs/x/manifest.json @ 1a2b3c4d' (or 'no manifest')."""
    if not prov["manifest"]:
        return f"{prov['run_dir']} (no manifest.json)"
    commit = (prov["commit"] or "unknown commit")[:12] + (" (dirty)" if prov["dirty"] else "")
    return f"`{prov['manifest']}` @ {commit}"


# ------------------------------------------------------------------------------------------ filter

def filter_section(run_dir, examples_per_filter=2):
    """The funnel, why rows were dropped (with a few examples) and the contamination report; None if not run."""
    folder = Path(run_dir) / "filter"
    funnel = read_json(folder / "funnel.json")
    if funnel is None:
        return None
    dropped = read_jsonl(folder / "dropped.jsonl")
    reasons, examples = Counter(), {}
    for row in dropped:
        key = (row.get("stage", "?"), row.get("filter", "?"))
        reasons[key] += 1
        if len(examples.setdefault(key, [])) < examples_per_filter:
            examples[key].append({"id": row.get("id"), "detail": row.get("detail")})
    return {"funnel": funnel, "dropped": {f"{stage}/{name}": count for (stage, name), count in reasons.items()},
            "examples": {f"{stage}/{name}": rows for (stage, name), rows in examples.items()},
            "contamination": read_json(folder / "contamination.json"),
            "stats": read_json(folder / "stats.json"),
            "files": [str(folder / "funnel.json"), str(folder / "dropped.jsonl")]}


# ------------------------------------------------------------------------------------------ augmentation

def reason_kind(reason):
    """'numbers changed: [3, 5] -> [4, 5]' -> 'numbers changed' (the reason without its particulars)."""
    return re.split(r"[:\d\[(]", str(reason), maxsplit=1)[0].strip() or str(reason)


def augment_section(run_dir):
    """Per method: kept, rejected and why; None if the augment step did not run."""
    folder = Path(run_dir) / "augment"
    stats = read_json(folder / "stats.json")
    if stats is None:
        return None
    rejected = read_jsonl(folder / "rejected.jsonl")
    methods = {}
    for method, entry in (stats.get("methods") or {}).items():
        if not isinstance(entry, dict):
            continue  # 'seeds', 'total'
        kept, bad = entry.get("kept", 0), entry.get("rejected", 0)
        methods[method] = {"kept": kept, "rejected": bad, "kept_share": share(kept, kept + bad),
                           "reasons": dict(Counter(reason_kind(row.get("reason")) for row in rejected
                                                   if row.get("method") == method).most_common())}
    return {"methods": methods, "seeds": (stats.get("methods") or {}).get("seeds"),
            "total": (stats.get("methods") or {}).get("total"), "usage": stats.get("usage") or {},
            "teacher": stats.get("teacher"), "files": [str(folder / "stats.json"), str(folder / "rejected.jsonl")]}


# ------------------------------------------------------------------------------------------ synthesis

def synthesis_section(run_dir):
    """Per stage (and per augmentation method): solutions, correct, tool use, errors fixed, prefix CoT."""
    folder = Path(run_dir) / "synthesize"
    stats = read_json(folder / "stats.json")
    stage_files = sorted(path for path in folder.glob("*.jsonl") if not path.stem.endswith("_trajectories")) \
        if folder.exists() else []
    rows = [row for path in stage_files for row in read_jsonl(path) if "stage" in row]
    if stats is None and not rows:
        return None
    stages = {}
    for stage in sorted({row["stage"] for row in rows}):
        group = [row for row in rows if row["stage"] == stage]
        stages[stage] = _solution_stats(group)
        methods = sorted({row.get("method") or "seed" for row in group})
        stages[stage]["by_method"] = {method: _solution_stats([r for r in group if (r.get("method") or "seed")
                                                               == method]) for method in methods}
    if not stages and stats:  # rows gone, statistics kept: report what stats.json says
        stages = {stage: {"solutions": entry.get("solutions"), "from_stats_json": entry}
                  for stage, entry in (stats.get("stages") or {}).items()}
    return {"stages": stages, "usage": (stats or {}).get("usage") or {}, "teacher": (stats or {}).get("teacher"),
            "files": [str(folder / "stats.json")] + [str(path) for path in stage_files]}


def _solution_stats(group):
    graded = [row for row in group if row.get("correct") is not None]
    with_code = [row for row in group if row.get("executions")]
    errors = sum(row.get("execution_errors", 0) or 0 for row in group)
    return {
        "solutions": len(group),
        "boxed": share(sum(bool(row.get("boxed")) for row in group), len(group)),
        "correct": share(sum(bool(row["correct"]) for row in graded), len(graded)),
        "with_code": share(len(with_code), len(group)),
        "executions": sum(row.get("executions", 0) or 0 for row in group),
        "execution_errors": errors,
        "errors_fixed": sum(row.get("errors_fixed", 0) or 0 for row in group),
        "timeouts": sum(row.get("timeouts", 0) or 0 for row in group),
        "prefix_cot": share(sum(bool(row.get("prefix_cot")) for row in group), len(group))
        if any(row.get("prefix_cot") is not None for row in group) else None,
        "mean_rounds": sum(row.get("rounds", 0) or 0 for row in group) / len(group) if group else None,
    }


# ------------------------------------------------------------------------------------------ evaluation

def metrics_files(run_dir):
    """Every evaluation metrics file under the run (any depth), skipping this step's own outputs."""
    found = []
    for path in sorted(Path(run_dir).rglob("metrics.json")):
        if "analysis" in path.relative_to(run_dir).parts[:1]:
            continue
        metrics = read_json(path)
        if isinstance(metrics, dict) and {"benchmark", "mode", "n"} <= set(metrics):
            found.append((path, metrics))
    return found


def model_of(metrics_path, metrics, prov):
    """The evaluated model's name, from the metrics, the config.json beside them, or the run's manifest."""
    model = metrics.get("model")
    if model is None:
        settings = (read_json(Path(metrics_path).with_name("config.json")) or {}).get("settings") or {}
        model = settings.get("model")
    if isinstance(model, dict):
        model = model.get("model") or model.get("identity")
    if model is None:
        model = ((prov["params"].get("evaluate") or {}).get("model"))
    return str(model) if model is not None else "unknown"


def model_role(model):
    """base / stage-1 / stage-2, from the model's path (a run's `<run>/stage2/final` is its stage-2 model);
    a variant's folder names it: `<run>/stage2.from_base/final` is 'stage-2 [from_base]'."""
    parts = re.split(r"[\\/]", model)
    for folder, role in ROLES:
        for part in parts:
            if step_of(part) == folder:
                return role + (f" [{part.split('.', 1)[1]}]" if "." in part else "")
    return "base"


def evaluation_rows(metrics_path, metrics):
    """The trajectory rows the metrics describe: first sample per problem, same configuration fingerprint."""
    rows, seen = [], set()
    fingerprint = metrics.get("fingerprint")
    for row in read_jsonl(Path(metrics_path).with_name("trajectories.jsonl")):
        if fingerprint and row.get("fingerprint") != fingerprint:
            continue  # a row of another configuration (trust-run keeps them out; older layouts may not)
        if row.get("sample", 0) != 0 or row.get("id") in seen:
            continue
        seen.add(row.get("id"))
        rows.append(row)
    return rows


def evaluation_section(run_dir, prov, failing_examples=3):
    """One entry per (model, benchmark, mode): accuracy with n and interval, and its error analysis."""
    entries = []
    for path, metrics in metrics_files(run_dir):
        rows = evaluation_rows(path, metrics)
        metrics_correct = int(metrics.get("correct", round(metrics.get("accuracy", 0) * metrics["n"])))
        if rows and len(rows) == metrics["n"]:
            correct, n, source = sum(bool(row.get("correct")) for row in rows), len(rows), "trajectories"
        else:  # no trajectories, or they also hold problems of an earlier, larger sample: trust the metrics
            correct, n = metrics_correct, int(metrics["n"])
            source = f"metrics.json (trajectories.jsonl holds {len(rows)} problems)" if rows else "metrics.json"
        model = model_of(path, metrics, prov)
        entries.append({
            "run": prov["run"], "model": model, "role": model_role(model), "benchmark": metrics["benchmark"],
            "mode": metrics["mode"], "few_shot": metrics.get("few_shot"), "accuracy": share(correct, n),
            "source": source, "metrics_path": str(path), "metrics_n": metrics["n"],
            "metrics_correct": metrics_correct,
            "contaminated": metrics.get("contaminated"),
            "errors": error_analysis(rows, failing_examples) if rows else None,
            "voting": metrics.get("voting"),  # maj@k / pass@k of a sampled evaluation (n_samples > 1)
        })
    return entries


def voting_rows(entries):
    """One row per sampled evaluation and k: maj@k and pass@k with intervals, beside the greedy accuracy of
    the same model, benchmark and mode (an evaluation of one sample per problem in the same run), if any."""
    rows = []
    for entry in entries:
        if not entry.get("voting"):
            continue
        greedy = next((other for other in entries if not other.get("voting") and
                       all(other[key] == entry[key] for key in ("run", "model", "benchmark", "mode"))), None)
        for k, values in sorted(entry["voting"]["by_k"].items(), key=lambda item: int(item[0])):
            rows.append({"run": entry["run"], "role": entry["role"], "model": entry["model"],
                         "benchmark": entry["benchmark"], "mode": entry["mode"], "k": int(k),
                         "problems": entry["voting"]["problems"], "samples": entry["voting"]["samples"],
                         "greedy": greedy["accuracy"] if greedy else None,
                         "maj": values["maj"], "maj_ci95": values["maj_ci95"],
                         "pass": values["pass"], "pass_ci95": values["pass_ci95"]})
    return rows


# ------------------------------------------------------------------------------------------ errors

EXCEPTION = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning))\b")


def exception_type(error):
    """'Traceback ...\\nZeroDivisionError: division by zero' -> 'ZeroDivisionError'; else 'other'."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    for line in reversed(lines):
        match = EXCEPTION.match(line)
        if match:
            return match.group(1).rsplit(".", 1)[-1]
    return "other"


def error_analysis(rows, failing_examples=3):
    """Execution errors by exception type, timeouts, rounds used, finish reasons, no extracted answer,
    and a few failing trajectories (those with an execution error first)."""
    executions = [execution for row in rows for execution in row.get("executions") or []]
    types = Counter("timeout" if execution.get("timed_out") else exception_type(execution["error"])
                    for execution in executions if execution.get("error") or execution.get("timed_out"))
    failing = [row for row in rows if not row.get("correct")]
    failing.sort(key=lambda row: not any(e.get("error") or e.get("timed_out") for e in row.get("executions") or []))
    return {
        "problems": len(rows), "executions": len(executions),
        "execution_errors": share(sum(1 for e in executions if e.get("error") and not e.get("timed_out")),
                                  len(executions)),
        "timeouts": share(sum(1 for e in executions if e.get("timed_out")), len(executions)),
        "by_exception": dict(types.most_common()),
        "rounds": dict(sorted(Counter(row.get("rounds", 0) for row in rows).items())),
        "finish": dict(Counter(row.get("finish") or "?" for row in rows).most_common()),
        "no_answer": share(sum(1 for row in rows if row.get("pred") is None), len(rows)),
        "failing": [_failing_example(row) for row in failing[:failing_examples]],
    }


def _failing_example(row):
    errors = [e for e in row.get("executions") or [] if e.get("error") or e.get("timed_out")]
    last_error = None
    if errors:
        last_error = "timeout" if errors[-1].get("timed_out") else str(errors[-1]["error"]).strip().splitlines()[-1]
    return {"id": row.get("id"), "question": str(row.get("question", ""))[:300], "answer": row.get("answer"),
            "pred": row.get("pred"), "finish": row.get("finish"), "rounds": row.get("rounds"),
            "last_error": last_error, "generation_tail": str(row.get("generation", ""))[-600:]}


# ------------------------------------------------------------------------------------------ training

def training_section(run_dir):
    """Per training stage: loss and learning rate per step (log.jsonl) and stats.json; None if neither ran."""
    stages = {}
    for folder in step_folders(run_dir):  # stage1/, stage2/ and their variants (stage2.from_base/)
        stage = folder.name
        if step_of(stage) not in STAGE_DIRS:
            continue
        logs = [folder / "log.jsonl"] if (folder / "log.jsonl").exists() else sorted(folder.glob("*.jsonl"))
        log = [row for path in logs for row in read_jsonl(path) if isinstance(row, dict) and "step" in row]
        stats = read_json(folder / "stats.json")
        if not log and stats is None:
            continue
        curve = {key: [(row["step"], row[key]) for row in log if isinstance(row.get(key), (int, float))]
                 for key in ("loss", "learning_rate", "grad_norm")}
        stages[stage] = {"curve": curve, "stats": stats or {},
                         "files": [str(path) for path in logs] + ([str(folder / "stats.json")] if stats else [])}
    return stages or None


# ------------------------------------------------------------------------------------------ paper

def paper_results(path=PAPER_RESULTS):
    """The paper's main table (GSM8K, MATH accuracy %) with its citation; see paper_results.yaml."""
    data = yaml.safe_load(Path(path).read_text())
    for position, model in enumerate(data["models"]):
        missing = {"name", *data["benchmarks"]} - set(model)
        if missing:
            raise AnalysisError(f"{path}: models[{position}] lacks {sorted(missing)}")
    return data


# ------------------------------------------------------------------------------------------ all of it

def collect(run_dirs, failing_examples=3):
    """Every section for every run folder (absent steps -> None)."""
    runs = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise AnalysisError(f"parameter 'runs': {run_dir} is not a run folder")
        prov = provenance(run_dir)
        runs.append({"provenance": prov, "filter": filter_section(run_dir), "augment": augment_section(run_dir),
                     "synthesis": synthesis_section(run_dir), "training": training_section(run_dir),
                     "evaluation": evaluation_section(run_dir, prov, failing_examples)})
    names = [run["provenance"]["run"] for run in runs]
    for run in runs:  # two runs of the same name (outputs of two clones) are told apart by their folder
        if names.count(run["provenance"]["run"]) > 1:
            run["provenance"]["run"] = run["provenance"]["run_dir"]
            for entry in run["evaluation"]:
                entry["run"] = run["provenance"]["run_dir"]
    return {"runs": runs, "paper": paper_results()}


def files_read(analysis):
    """Every file the analysis read (for the manifest's input hashes)."""
    files = []
    for run in analysis["runs"]:
        if run["provenance"]["manifest"]:
            files.append(run["provenance"]["manifest"])
        for section in ("filter", "augment", "synthesis"):
            files += (run[section] or {}).get("files", [])
        for stage in (run["training"] or {}).values():
            files += stage["files"]
        for entry in run["evaluation"]:
            files.append(entry["metrics_path"])
            trajectories = Path(entry["metrics_path"]).with_name("trajectories.jsonl")
            if trajectories.exists():
                files.append(str(trajectories))
    return [path for path in dict.fromkeys(files) if Path(path).exists()]


def accuracy_table(analysis):
    """Flat rows for a DataFrame: run, model, benchmark, mode, n, accuracy %, interval, where from."""
    table = []
    for run in analysis["runs"]:
        for entry in run["evaluation"]:
            accuracy = entry["accuracy"]
            table.append({"run": entry["run"], "role": entry["role"], "model": entry["model"],
                          "benchmark": entry["benchmark"], "mode": entry["mode"], "n": accuracy["n"],
                          "correct": accuracy["successes"],
                          "accuracy %": None if accuracy["share"] is None else round(100 * accuracy["share"], 1),
                          "ci95 low %": round(100 * accuracy["ci95"][0], 1),
                          "ci95 high %": round(100 * accuracy["ci95"][1], 1),
                          "contaminated": entry["contaminated"], "metrics": entry["metrics_path"]})
    return table


def run_analysis(run_dir, runs=None, out_dir=None, failing_examples=3, record=True):
    """Step 7: analyse `runs` (default: this run) -> figures and report.md under `out_dir`
    (default <run_dir>/analysis). Returns the collected analysis with the paths written."""
    from .manifest import record_inputs

    run_dirs = [Path(path) for path in (runs or [run_dir])]
    analysis = collect(run_dirs, failing_examples)
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "analysis"
    analysis["out_dir"] = str(out_dir)
    analysis["figures"], analysis["report"] = write_report(analysis, out_dir)
    if record:
        record_inputs(run_dir, files_read(analysis))
    return analysis


# ------------------------------------------------------------------------------------------ figures

def save_figure(figure, out_dir, name):
    """Write `name`.png and `name`.svg under out_dir; returns the PNG's file name (the report links it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(out_dir / f"{name}.png", dpi=110)
    figure.savefig(out_dir / f"{name}.svg")
    return f"{name}.png"


def _figure(width, height):
    from matplotlib.figure import Figure  # no pyplot: no global state, works headless and in threads

    return Figure(figsize=(width, height))


def plot_funnel(funnel, out_dir, name):
    from .filter import funnel_figure  # the filter step draws the same figure: one drawing for both

    return save_figure(funnel_figure(funnel), out_dir, name)


def plot_augment(section, out_dir, name):
    methods = list(section["methods"])
    figure = _figure(max(4, 1.2 * len(methods) + 2), 3)
    axes = figure.add_subplot(1, 1, 1)
    kept = [section["methods"][m]["kept"] for m in methods]
    rejected = [section["methods"][m]["rejected"] for m in methods]
    axes.bar(methods, kept, label="kept", color="tab:green")
    axes.bar(methods, rejected, bottom=kept, label="rejected", color="tab:red")
    axes.set_ylabel("questions")
    axes.set_title("augmentation: kept and rejected per method", fontsize=9)
    axes.legend(fontsize=8)
    return save_figure(figure, out_dir, name)


def _bars_with_intervals(axes, labels, shares, color=None):
    values = [100 * (s["share"] or 0) for s in shares]
    low = [v - 100 * s["ci95"][0] for v, s in zip(values, shares)]
    high = [100 * s["ci95"][1] - v for v, s in zip(values, shares)]
    axes.bar([f"{label}\nn={s['n']}" for label, s in zip(labels, shares)], values, yerr=[low, high], capsize=3,
             color=color)


def plot_synthesis(section, out_dir, name):
    stages = list(section["stages"])
    figure = _figure(4.5 * max(1, len(stages)), 3.2)
    for position, stage in enumerate(stages, 1):
        entry = section["stages"][stage]
        axes = figure.add_subplot(1, len(stages), position)
        keys = [key for key in ("boxed", "correct", "with_code", "prefix_cot") if entry.get(key)]
        _bars_with_intervals(axes, keys, [entry[key] for key in keys], "tab:purple")
        axes.set_ylim(0, 105)
        axes.set_ylabel("% of solutions (95 % CI)")
        axes.set_title(f"synthesis, {stage}: {entry['solutions']} solutions", fontsize=9)
    return save_figure(figure, out_dir, name)


def plot_accuracy(entries, out_dir, name="accuracy"):
    """Grouped bars: one group per benchmark/mode, one bar per evaluated model, 95 % Wilson intervals."""
    groups = sorted({(e["benchmark"], e["mode"]) for e in entries})
    models = sorted({(e["run"], e["role"], e["model"]) for e in entries})
    figure = _figure(max(5, 0.9 * len(groups) * max(1, len(models)) + 2), 3.6)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(models))
    for index, model in enumerate(models):
        xs, values, low, high = [], [], [], []
        for x, group in enumerate(groups):
            entry = next((e for e in entries if (e["benchmark"], e["mode"]) == group
                          and (e["run"], e["role"], e["model"]) == model), None)
            if entry is None:
                continue
            value = 100 * (entry["accuracy"]["share"] or 0)
            xs.append(x + (index - (len(models) - 1) / 2) * width)
            values.append(value)
            low.append(value - 100 * entry["accuracy"]["ci95"][0])
            high.append(100 * entry["accuracy"]["ci95"][1] - value)
        short = model[2] if len(model[2]) <= 32 else "..." + model[2][-29:]
        label = f"{model[1]} ({short})" + (f", {model[0]}" if len({m[0] for m in models}) > 1 else "")
        axes.bar(xs, values, width, yerr=[low, high], capsize=2, label=label)
    axes.set_xticks(range(len(groups)), [f"{b}\n{m}" for b, m in groups], fontsize=7)
    axes.set_ylabel("accuracy % (95 % Wilson CI)")
    axes.set_ylim(0, 100)
    axes.set_title("accuracy per benchmark and mode (our runs)", fontsize=9)
    axes.legend(fontsize=7)
    return save_figure(figure, out_dir, name)


def plot_voting(rows, out_dir, name="voting"):
    """Accuracy as a function of k: maj@k and pass@k (95 % bootstrap bands), greedy as a line (its Wilson
    band), one panel per model, benchmark and mode."""
    panels = sorted({(r["run"], r["role"], r["benchmark"], r["mode"]) for r in rows})
    figure = _figure(4.2 * min(3, len(panels)), 3.2 * ((len(panels) + 2) // 3))
    for position, panel in enumerate(panels, 1):
        axes = figure.add_subplot((len(panels) + 2) // 3, min(3, len(panels)), position)
        group = [r for r in rows if (r["run"], r["role"], r["benchmark"], r["mode"]) == panel]
        ks = [r["k"] for r in group]
        for key, color in (("maj", "tab:blue"), ("pass", "tab:orange")):
            values = [100 * r[key] for r in group]
            axes.plot(ks, values, marker="o", color=color, label=f"{key}@k")
            axes.fill_between(ks, [100 * r[f"{key}_ci95"][0] for r in group],
                              [100 * r[f"{key}_ci95"][1] for r in group], color=color, alpha=0.2)
        greedy = group[0]["greedy"]
        if greedy:
            axes.axhline(100 * (greedy["share"] or 0), color="black", linestyle="--",
                         label=f"greedy (n={greedy['n']})")
            axes.axhspan(100 * greedy["ci95"][0], 100 * greedy["ci95"][1], color="grey", alpha=0.15)
        axes.set_xscale("log", base=2)
        axes.set_xticks(ks, [str(k) for k in ks])
        axes.set_ylim(0, 100)
        axes.set_xlabel("k (samples per problem)")
        axes.set_ylabel("accuracy % (95 % CI)")
        axes.set_title(f"{panel[1]}: {panel[2]} {panel[3]} ({group[0]['problems']} problems)", fontsize=9)
        axes.legend(fontsize=7)
    return save_figure(figure, out_dir, name)


def plot_training(training, out_dir, name):
    figure = _figure(9, 3.2)
    loss_axes, lr_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for stage, entry in training.items():
        for axes, key in ((loss_axes, "loss"), (lr_axes, "learning_rate")):
            points = entry["curve"].get(key) or []
            if points:
                axes.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=stage)
    loss_axes.set_title("training loss per step", fontsize=9)
    lr_axes.set_title("learning rate per step", fontsize=9)
    for axes in (loss_axes, lr_axes):
        axes.set_xlabel("step")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    return save_figure(figure, out_dir, name)


def plot_errors(entries, out_dir, name="errors"):
    """Left: execution errors by exception type per model and mode; right: rounds used."""
    with_rows = [e for e in entries if e["errors"]]
    keys = sorted({(e["run"], e["role"], e["mode"]) for e in with_rows})
    figure = _figure(10, 3.4)
    types_axes, rounds_axes = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    width = 0.8 / max(1, len(keys))
    for index, key in enumerate(keys):
        group = [e for e in with_rows if (e["run"], e["role"], e["mode"]) == key]
        label = f"{key[1]} {key[2]}" + (f" ({key[0]})" if len({k[0] for k in keys}) > 1 else "")
        types, rounds = Counter(), Counter()
        for entry in group:
            types.update(entry["errors"]["by_exception"])
            rounds.update({int(k): v for k, v in entry["errors"]["rounds"].items()})
        if types:
            names = sorted(types)
            types_axes.barh([f"{label}: {n}" for n in names], [types[n] for n in names])
        steps = sorted(rounds)
        rounds_axes.bar([step + (index - (len(keys) - 1) / 2) * width for step in steps], [rounds[s] for s in steps],
                        width, label=label)
    types_axes.set_title("execution errors by exception type", fontsize=9)
    types_axes.tick_params(axis="y", labelsize=7)
    rounds_axes.set_title("rounds used per problem (model calls)", fontsize=9)
    rounds_axes.set_xlabel("rounds")
    rounds_axes.xaxis.get_major_locator().set_params(integer=True)
    rounds_axes.set_ylabel("problems")
    if keys:
        rounds_axes.legend(fontsize=7)
    return save_figure(figure, out_dir, name)


# ------------------------------------------------------------------------------------------ report

def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}"


def _usage_line(usage):
    if not usage:
        return "teacher usage: not recorded"
    cost = usage.get("cost_usd")
    return (f"teacher usage: {usage.get('requests', 0)} requests, {usage.get('cache_hits', 0)} cache hits, "
            f"{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion tokens"
            + (f", ${cost:.4f}" if cost is not None else ", cost: no price given"))


def accuracy_grid(entries):
    """One row per evaluated model, one column per benchmark and mode: 'accuracy % [95 % CI] (correct/n)'
    (the ablation's table: base vs stage-1 vs stage-2 side by side)."""
    columns = sorted({(e["benchmark"], e["mode"]) for e in entries})
    models = sorted({(e["run"], e["role"], e["model"]) for e in entries}, key=lambda m: (m[0], m[1] != "base", m[1]))
    cells = {(e["run"], e["role"], e["model"], e["benchmark"], e["mode"]): e["accuracy"] for e in entries}
    several_runs = len({m[0] for m in models}) > 1
    lines = ["| model | " + " | ".join(f"{b} {m}" for b, m in columns) + " |", "|---|" + "---|" * len(columns)]
    for run, role, model in models:
        row = []
        for benchmark, mode in columns:
            a = cells.get((run, role, model, benchmark, mode))
            row.append("-" if a is None else f"{_pct(a['share'])} [{_pct(a['ci95'][0])}-{_pct(a['ci95'][1])}] "
                                             f"({a['successes']}/{a['n']})")
        name = f"{role}" + (f" ({run})" if several_runs else "")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def write_report(analysis, out_dir):
    """Figures (PNG + SVG) and report.md under out_dir; returns (figure file names, report path)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = analysis["runs"]
    multi = len(runs) > 1
    figures = []
    lines = ["# Analysis report", "",
             "Every share is given with its n and a 95 % Wilson interval. Each section cites the manifest "
             "(path @ git commit) of the run its numbers come from. Figures are PNG with an SVG beside them.", "",
             "| run | manifest | status |", "|---|---|---|"]
    lines += [f"| {r['provenance']['run']} | {cite(r['provenance'])} | {r['provenance']['status'] or '-'} |"
              for r in runs]

    def suffix(run):
        return "-" + re.sub(r"[^\w.-]+", "_", run["provenance"]["run"]) if multi else ""

    def heading(title, run):
        lines.extend(["", f"## {title}" + (f" ({run['provenance']['run']})" if multi else ""), "",
                      f"Source: {cite(run['provenance'])}."])

    for run in runs:
        heading("Filter funnel", run)
        section = run["filter"]
        if section is None:
            lines.append(f"Filter: {NOT_RUN} (no `filter/funnel.json`).")
        else:
            figures.append(plot_funnel(section["funnel"], out_dir, "funnel" + suffix(run)))
            lines += ["", f"![filter funnel]({figures[-1]})", "", "| stage | " + " | ".join(
                section["funnel"].get("filters", [])) + " |", "|---|" + "---|" * len(section["funnel"].get("filters", []))]
            for stage, steps in (section["funnel"].get("stages") or {}).items():
                lines.append(f"| {stage} | " + " | ".join(str(steps.get(f, "-")) for f in
                                                         section["funnel"].get("filters", [])) + " |")
            by_method = section["funnel"].get("by_method") or {}
            if any(by_method.values()):
                lines += ["", "Kept / in per augmentation method: " + "; ".join(
                    f"{stage} {method} {list(steps.values())[-1]}/{steps.get('input', 0)}"
                    for stage, methods in by_method.items()
                    for method, steps in methods.items()) + "."]
            if section["dropped"]:
                lines.append("")
                lines.append("Dropped rows by stage/filter: " + ", ".join(
                    f"{key} {count}" for key, count in sorted(section["dropped"].items())) + ".")
            contamination = section["contamination"]
            if contamination:
                flagged = {name: entry for name, entry in (contamination.get("benchmarks") or {}).items()
                           if entry.get("rows")}
                lines.append(f"Decontamination ({contamination.get('ngram')}-gram): " + (
                    "; ".join(f"{name}: {e['rows']} rows / {e.get('questions', '?')} questions overlap its "
                              f"{e.get('test_questions', '?')} test questions ({e.get('action', '?')})"
                              for name, e in flagged.items()) or "no overlap with any checked benchmark") + ".")
                if contamination.get("unavailable"):
                    lines.append("Not checked (unavailable): " + ", ".join(
                        f"{name} ({reason})" for name, reason in contamination["unavailable"].items()) + ".")
                if contamination.get("contaminated_for"):
                    lines.append(f"**Contaminated for**: {', '.join(contamination['contaminated_for'])}.")

        heading("Augmentation", run)
        section = run["augment"]
        if section is None:
            lines.append(f"Augmentation: {NOT_RUN} (no `augment/stats.json`).")
        else:
            figures.append(plot_augment(section, out_dir, "augment" + suffix(run)))
            lines += ["", f"![augmentation]({figures[-1]})", "",
                      f"{section['seeds']} seeds; {section['total']} new questions. {_usage_line(section['usage'])}.",
                      "", "| method | kept | rejected | kept share | rejection reasons |", "|---|---|---|---|---|"]
            for method, entry in section["methods"].items():
                reasons = ", ".join(f"{reason} ({count})" for reason, count in entry["reasons"].items()) or "-"
                lines.append(f"| {method} | {entry['kept']} | {entry['rejected']} | "
                             f"{fmt_share(entry['kept_share'])} | {reasons} |")

        heading("Synthesis", run)
        section = run["synthesis"]
        if section is None:
            lines.append(f"Synthesis: {NOT_RUN} (no `synthesize/stats.json` or solution rows).")
        else:
            if any("boxed" in entry for entry in section["stages"].values()):
                figures.append(plot_synthesis(section, out_dir, "synthesis" + suffix(run)))
                lines += ["", f"![synthesis]({figures[-1]})"]
            lines += ["", _usage_line(section["usage"]) + ".", "",
                      "| stage | solutions | final \\boxed{} | correct (graded ones) | with code | executions | "
                      "errors | errors fixed | timeouts | prefix CoT |", "|---|---|---|---|---|---|---|---|---|---|"]
            for stage, entry in section["stages"].items():
                if "boxed" not in entry:
                    lines.append(f"| {stage} | {entry['solutions']} | (rows absent; stats.json only) |||||||| ")
                    continue
                lines.append(
                    f"| {stage} | {entry['solutions']} | {fmt_share(entry['boxed'])} | {fmt_share(entry['correct'])} | "
                    f"{fmt_share(entry['with_code'])} | {entry['executions']} | {entry['execution_errors']} | "
                    f"{entry['errors_fixed']} | {entry['timeouts']} | "
                    f"{fmt_share(entry['prefix_cot']) if entry['prefix_cot'] else '-'} |")
            by_method = [(stage, method, e) for stage, entry in section["stages"].items()
                         for method, e in (entry.get("by_method") or {}).items()]
            if by_method:
                lines += ["", "| stage | method | solutions | correct (graded ones) |", "|---|---|---|---|"]
                lines += [f"| {stage} | {method} | {e['solutions']} | {fmt_share(e['correct'])} |"
                          for stage, method, e in by_method]

        heading("Training", run)
        section = run["training"]
        if section is None:
            lines.append(f"Training: {NOT_RUN} (no `stage1/` or `stage2/` log or stats).")
        else:
            figures.append(plot_training(section, out_dir, "training" + suffix(run)))
            lines += ["", f"![training curves]({figures[-1]})", "",
                      "| stage | init model | finetune | steps | logged losses | first loss | last loss | "
                      "tokens trained | tokens/s | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
            for stage, entry in section.items():
                stats, losses = entry["stats"], entry["curve"]["loss"]
                lines.append(f"| {stage} | {stats.get('init_model', '-')} | {stats.get('finetune', '-')} | "
                             f"{stats.get('steps', '-')} | {len(losses)} | "
                             f"{f'{losses[0][1]:.4f}' if losses else '-'} | {f'{losses[-1][1]:.4f}' if losses else '-'} | "
                             f"{stats.get('tokens_trained', '-')} | {stats.get('tokens_per_second', '-')} | "
                             f"{stats.get('seconds', '-')} |")

    entries = [entry for run in runs for entry in run["evaluation"]]
    lines += ["", "## Accuracy per benchmark and mode", ""]
    if not entries:
        lines.append(f"Evaluation: {NOT_RUN} (no `metrics.json` with a benchmark and a mode in any run).")
    else:
        greedy_entries = [e for e in entries if not e.get("voting")] or entries  # sampled ones: see voting
        figures.append(plot_accuracy(greedy_entries, out_dir))
        lines += [f"![accuracy]({figures[-1]})", ""] + accuracy_grid(greedy_entries) + ["",
                  "| run | model | benchmark | mode | n | correct | accuracy % | 95 % CI | from | manifest |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        by_run = {run["provenance"]["run"]: run["provenance"] for run in runs}
        for e in sorted(entries, key=lambda e: (e["run"], e["role"], e["benchmark"], e["mode"])):
            a = e["accuracy"]
            flag = " (contaminated)" if e["contaminated"] else ""
            mismatch = "" if e["source"] != "trajectories" or e["metrics_correct"] == a["successes"] else \
                f"; metrics.json says {e['metrics_correct']}"
            if e.get("voting"):
                flag += f" (first of {e['voting']['samples']} samples)"
            lines.append(f"| {e['run']} | {e['role']}: `{e['model']}` | {e['benchmark']}{flag} | {e['mode']} | {a['n']} | "
                         f"{a['successes']} | {_pct(a['share'])} | {_pct(a['ci95'][0])}-{_pct(a['ci95'][1])} | "
                         f"{e['source']}{mismatch} | {cite(by_run[e['run']])} |")
    voting = voting_rows(entries)
    if voting:
        figures.append(plot_voting(voting, out_dir))
        lines += ["", "## Majority voting and pass@k", "",
                  "k samples per problem (temperature > 0): maj@k is the share of problems whose most common "
                  "answer among k samples is right, pass@k the unbiased estimate that one of k is right "
                  "(95 % bootstrap intervals over problems); greedy is the same model's greedy evaluation, "
                  "where the run has one (95 % Wilson interval).", "", f"![accuracy as a function of k]({figures[-1]})",
                  "", "| run | model | benchmark | mode | k | maj@k % | 95 % CI | pass@k % | 95 % CI | greedy % | 95 % CI |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in voting:
            g = r["greedy"]
            lines.append(f"| {r['run']} | {r['role']} | {r['benchmark']} | {r['mode']} | {r['k']} | {_pct(r['maj'])} | "
                         f"{_pct(r['maj_ci95'][0])}-{_pct(r['maj_ci95'][1])} | {_pct(r['pass'])} | "
                         f"{_pct(r['pass_ci95'][0])}-{_pct(r['pass_ci95'][1])} | "
                         + (f"{_pct(g['share'])} | {_pct(g['ci95'][0])}-{_pct(g['ci95'][1])} |" if g else "- | - |"))
    paper = analysis["paper"]
    lines += ["", "### The paper's numbers, at the paper's scale (not ours)", "",
              f"Accuracy % as reported in {paper['citation']}. 7B-70B models trained on the paper's full data; "
              "shown for orientation, not comparable to a small run. Paper numbers for the other benchmarks "
              "(GSM-Hard, SVAMP, TabMWP, ASDiv, MAWPS) are not included.", "",
              "| model (paper) | " + " | ".join(b.upper() for b in paper["benchmarks"]) + " |",
              "|---|" + "---|" * len(paper["benchmarks"])]
    lines += [f"| {m['name']} | " + " | ".join(f"{m[b]:.1f}" for b in paper["benchmarks"]) + " |"
              for m in paper["models"]]

    lines += ["", "## Error analysis", ""]
    with_rows = [e for e in entries if e["errors"]]
    if not with_rows:
        lines.append(f"Error analysis: {NOT_RUN} (no trajectories).")
    else:
        figures.append(plot_errors(entries, out_dir))
        lines += [f"![errors]({figures[-1]})", "",
                  "| run | model | benchmark | mode | executions | execution errors | timeouts | no extracted answer | "
                  "errors by type | rounds used | finish |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for e in sorted(with_rows, key=lambda e: (e["run"], e["role"], e["benchmark"], e["mode"])):
            r = e["errors"]
            lines.append(
                f"| {e['run']} | {e['role']} | {e['benchmark']} | {e['mode']} | {r['executions']} | "
                f"{fmt_share(r['execution_errors'])} | {fmt_share(r['timeouts'])} | {fmt_share(r['no_answer'])} | "
                + (", ".join(f"{k} {v}" for k, v in r["by_exception"].items()) or "-") + " | "
                + ", ".join(f"{k}: {v}" for k, v in r["rounds"].items()) + " | "
                + ", ".join(f"{k} {v}" for k, v in r["finish"].items()) + " |")
        lines += ["", "A few failing trajectories (those with an execution error first; the notebook shows more):", ""]
        examples = [(e, example) for e in with_rows for example in e["errors"]["failing"]]
        examples.sort(key=lambda pair: (pair[1]["last_error"] is None, pair[0]["mode"] != "tir"))  # stable sort
        for e, example in examples[:max(3, len(runs))]:  # a few, to keep the report to a page
            tail = example["generation_tail"].replace("`", "'").replace("\n", " ")[-240:]
            lines.append(f"- {e['role']} {e['benchmark']}/{e['mode']} `{example['id']}`: gold "
                         f"`{example['answer']}`, extracted `{example['pred']}`, finish {example['finish']}, "
                         f"{example['rounds']} rounds" + (f", last error `{example['last_error']}`"
                                                          if example["last_error"] else "") + f"; ends: \"...{tail}\"")
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    write_json(out_dir / "analysis.json",
               {key: value for key, value in analysis.items() if key not in ("figures", "report")})
    return figures, str(report)
