"""Analysis (step 7): read a run's outputs (or several runs'), write figures and a one-page report.

This module collects (one `*_section` per step's outputs, `collect` for all runs) and is the step's entry
point (`run_analysis`); `analysis_figures` draws, `analysis_report` writes report.md, one renderer per
section. It reads only what the steps wrote, never re-runs anything:

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
import re
from collections import Counter
from pathlib import Path

import yaml

from .analysis_report import fmt_share, write_report  # noqa: F401 (fmt_share: the notebook's tables)
from .config import step_folders, step_of
from .evaluate import wilson_interval
from .records import read_json, read_jsonl

PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")
STAGE_DIRS = ("stage1", "stage2")
ROLES = (("stage2", "stage-2"), ("stage1", "stage-1"))  # a model path naming a stage folder is that stage's


class AnalysisError(ValueError):
    pass


# ------------------------------------------------------------------------------------------ reading

def share(successes, n):
    """{successes, n, share, ci95} for a proportion, with the 95 % Wilson interval."""
    low, high = wilson_interval(successes, n)
    return {"successes": successes, "n": n, "share": successes / n if n else None, "ci95": [low, high]}


def provenance(run_dir):
    """Where a run's numbers come from: its manifest's path and the git commit it ran at."""
    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "manifest.json", missing_ok=True)
    if manifest is None:
        return {"run": run_dir.name, "run_dir": str(run_dir), "manifest": None, "commit": None, "dirty": None,
                "status": None, "params": {}}
    git = manifest.get("git") or {}
    return {"run": manifest.get("run", run_dir.name), "run_dir": str(run_dir),
            "manifest": str(run_dir / "manifest.json"), "commit": git.get("commit"), "dirty": git.get("dirty"),
            "status": manifest.get("status"), "params": manifest.get("params") or {}}


# ------------------------------------------------------------------------------------------ filter

def filter_section(run_dir, examples_per_filter=2):
    """The funnel, why rows were dropped (with a few examples) and the contamination report; None if not run."""
    folder = Path(run_dir) / "filter"
    funnel = read_json(folder / "funnel.json", missing_ok=True)
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
            "contamination": read_json(folder / "contamination.json", missing_ok=True),
            "stats": read_json(folder / "stats.json", missing_ok=True),
            "files": [str(folder / "funnel.json"), str(folder / "dropped.jsonl")]}


# ------------------------------------------------------------------------------------------ augmentation

def reason_kind(reason):
    """'numbers changed: [3, 5] -> [4, 5]' -> 'numbers changed' (the reason without its particulars)."""
    return re.split(r"[:\d\[(]", str(reason), maxsplit=1)[0].strip() or str(reason)


def augment_section(run_dir):
    """Per method: kept, rejected and why; None if the augment step did not run."""
    folder = Path(run_dir) / "augment"
    stats = read_json(folder / "stats.json", missing_ok=True)
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
    stats = read_json(folder / "stats.json", missing_ok=True)
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
        metrics = read_json(path, missing_ok=True)
        if isinstance(metrics, dict) and {"benchmark", "mode", "n"} <= set(metrics):
            found.append((path, metrics))
    return found


def model_of(metrics_path, metrics, prov):
    """The evaluated model's name, from the metrics, the config.json beside them, or the run's manifest."""
    model = metrics.get("model")
    if model is None:
        config = read_json(Path(metrics_path).with_name("config.json"), missing_ok=True) or {}
        settings = config.get("settings") or {}
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
        })
    return entries


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
        stats = read_json(folder / "stats.json", missing_ok=True)
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


def run_analysis(run_dir, runs=None, out_dir=None, failing_examples=3, record=True, browser_limit=200):
    """Step 7: analyse `runs` (default: this run) -> figures, report.md and the trajectory browser
    (browser.html, `browser_limit` trajectories per source, model, benchmark and mode; None: all; 0: no page)
    under `out_dir` (default <run_dir>/analysis); this run's model cards get their evaluation tables.
    Returns the collected analysis with the paths written."""
    from .browser import PAGE, write_page
    from .manifest import record_inputs

    if browser_limit is not None and (not isinstance(browser_limit, int) or browser_limit < 0):
        raise AnalysisError(f"parameter 'browser_limit' is {browser_limit!r}; a count >= 0 or None (all)")
    run_dirs = [Path(path) for path in (runs or [run_dir])]
    analysis = collect(run_dirs, failing_examples)
    out_dir = Path(out_dir) if out_dir else Path(run_dir) / "analysis"
    analysis["out_dir"] = str(out_dir)
    if browser_limit != 0:
        analysis["browser"] = write_page(analysis, out_dir / PAGE, browser_limit)
    analysis["figures"], analysis["report"] = write_report(analysis, out_dir)
    analysis["model_cards"] = refresh_model_cards(run_dir, analysis)
    if record:
        browsed = [path for run in run_dirs for path in sorted((run / "synthesize").glob("*_trajectories.jsonl"))] \
            if analysis.get("browser") else []
        record_inputs(run_dir, files_read(analysis) + [str(path) for path in browsed])
    return analysis


def refresh_model_cards(run_dir, analysis):
    """Rewrite the model card of each trained stage of this run with its evaluation table."""
    from .cards import stage_evaluation, write_model_card

    entries = [entry for run in analysis["runs"] for entry in run["evaluation"]]
    written = []
    for folder in step_folders(run_dir):
        if step_of(folder.name) in STAGE_DIRS and (folder / "train_config.json").exists():
            written.append(str(write_model_card(folder, run_dir, stage_evaluation(folder, entries))))
    return written
