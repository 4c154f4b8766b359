"""The analysis report (step 7): `report.md` and its figures from a collected analysis (`analysis.collect`).

One renderer per report section, each returning its Markdown lines and drawing its figures through
`Figures`: `runs_table`, then per run `filter_lines`, `augment_lines`, `synthesis_lines`, `training_lines`,
then across runs `accuracy_lines`, `paper_lines`, `error_lines`. Paths are shown relative to the
repository (or to the run folder's parent for a run outside it), never as this machine's absolute path.
"""
import re
from pathlib import Path

from . import analysis_figures as draw
from .records import write_json

NOT_RUN = "not run"
REPO_ROOT = Path(__file__).resolve().parents[1]


def shown_path(path, run_dir=None):
    """A path as a report shows it: relative to the repository when inside it, else relative to the run
    folder's parent (`<run>/manifest.json`); a name that is not an absolute path (a hub id) as it is."""
    if not path or not Path(str(path)).is_absolute():
        return path
    path = Path(path).resolve()
    for base in (REPO_ROOT, Path(run_dir).resolve().parent if run_dir else None):
        if base is not None and path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    return path.name


def fmt_share(value, digits=1):
    """'36.4 % (4/11; 95 % CI 15.2-64.6)', or 'n = 0'."""
    if not value or not value["n"]:
        return "n = 0"
    low, high = value["ci95"]
    return (f"{100 * value['share']:.{digits}f} % ({value['successes']}/{value['n']}; "
            f"95 % CI {100 * low:.{digits}f}-{100 * high:.{digits}f})")


def cite(prov):
    """'manifest outputs/x/manifest.json @ 1a2b3c4d' (or 'no manifest'), the path relative (`shown_path`)."""
    if not prov["manifest"]:
        return f"{shown_path(prov['run_dir'], prov['run_dir'])} (no manifest.json)"
    commit = (prov["commit"] or "unknown commit")[:12] + (" (dirty)" if prov["dirty"] else "")
    return f"`{shown_path(prov['manifest'], prov['run_dir'])}` @ {commit}"


def _pct(value):
    return "-" if value is None else f"{100 * value:.1f}"


def _usage_line(usage):
    if not usage:
        return "teacher usage: not recorded"
    cost = usage.get("cost_usd")
    return (f"teacher usage: {usage.get('requests', 0)} requests, {usage.get('cache_hits', 0)} cache hits, "
            f"{usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion tokens"
            + (f", ${cost:.4f}" if cost is not None else ", cost: no price given"))


class Figures:
    """Draws a section's figure under the report folder and keeps the file names (run suffix when several)."""

    def __init__(self, out_dir, several_runs):
        self.out_dir, self.several_runs, self.names = Path(out_dir), several_runs, []

    def draw(self, plot, data, name, run=None):
        if run is not None and self.several_runs:
            name += "-" + re.sub(r"[^\w.-]+", "_", run["provenance"]["run"])
        self.names.append(plot(data, self.out_dir, name))
        return self.names[-1]


# ------------------------------------------------------------------------------------------ sections

def runs_table(runs):
    lines = ["# Analysis report", "",
             "Every share is given with its n and a 95 % Wilson interval. Each section cites the manifest "
             "(path @ git commit) of the run its numbers come from. Figures are PNG with an SVG beside them.", "",
             "| run | manifest | status |", "|---|---|---|"]
    return lines + [f"| {r['provenance']['run']} | {cite(r['provenance'])} | {r['provenance']['status'] or '-'} |"
                    for r in runs]


def heading(title, run, several_runs):
    return ["", f"## {title}" + (f" ({run['provenance']['run']})" if several_runs else ""), "",
            f"Source: {cite(run['provenance'])}."]


def filter_lines(run, figures):
    section = run["filter"]
    if section is None:
        return [f"Filter: {NOT_RUN} (no `filter/funnel.json`)."]
    funnel = section["funnel"]
    filters = funnel.get("filters", [])
    lines = ["", f"![filter funnel]({figures.draw(draw.plot_filter, funnel, 'funnel', run)})", "",
             "| stage | " + " | ".join(filters) + " |", "|---|" + "---|" * len(filters)]
    for stage, steps in (funnel.get("stages") or {}).items():
        lines.append(f"| {stage} | " + " | ".join(str(steps.get(f, "-")) for f in filters) + " |")
    by_method = funnel.get("by_method") or {}
    if any(by_method.values()):
        lines += ["", "Kept / in per augmentation method: " + "; ".join(
            f"{stage} {method} {list(steps.values())[-1]}/{steps.get('input', 0)}"
            for stage, methods in by_method.items() for method, steps in methods.items()) + "."]
    if section["dropped"]:
        lines += ["", "Dropped rows by stage/filter: " + ", ".join(
            f"{key} {count}" for key, count in sorted(section["dropped"].items())) + "."]
    return lines + contamination_lines(section["contamination"])


def contamination_lines(contamination):
    if not contamination:
        return []
    flagged = {name: entry for name, entry in (contamination.get("benchmarks") or {}).items() if entry.get("rows")}
    lines = [f"Decontamination ({contamination.get('ngram')}-gram): " + (
        "; ".join(f"{name}: {e['rows']} rows / {e.get('questions', '?')} questions overlap its "
                  f"{e.get('test_questions', '?')} test questions ({e.get('action', '?')})"
                  for name, e in flagged.items()) or "no overlap with any checked benchmark") + "."]
    if contamination.get("unavailable"):
        lines.append("Not checked (unavailable): " + ", ".join(
            f"{name} ({reason})" for name, reason in contamination["unavailable"].items()) + ".")
    if contamination.get("contaminated_for"):
        lines.append(f"**Contaminated for**: {', '.join(contamination['contaminated_for'])}.")
    return lines


def augment_lines(run, figures):
    section = run["augment"]
    if section is None:
        return [f"Augmentation: {NOT_RUN} (no `augment/stats.json`)."]
    lines = ["", f"![augmentation]({figures.draw(draw.plot_augment, section, 'augment', run)})", "",
             f"{section['seeds']} seeds; {section['total']} new questions. {_usage_line(section['usage'])}.",
             "", "| method | kept | rejected | kept share | rejection reasons |", "|---|---|---|---|---|"]
    for method, entry in section["methods"].items():
        reasons = ", ".join(f"{reason} ({count})" for reason, count in entry["reasons"].items()) or "-"
        lines.append(f"| {method} | {entry['kept']} | {entry['rejected']} | {fmt_share(entry['kept_share'])} | "
                     f"{reasons} |")
    return lines


def synthesis_lines(run, figures):
    section = run["synthesis"]
    if section is None:
        return [f"Synthesis: {NOT_RUN} (no `synthesize/stats.json` or solution rows)."]
    lines = []
    if any("boxed" in entry for entry in section["stages"].values()):
        lines += ["", f"![synthesis]({figures.draw(draw.plot_synthesis, section, 'synthesis', run)})"]
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
    return lines


def training_lines(run, figures):
    section = run["training"]
    if section is None:
        return [f"Training: {NOT_RUN} (no `stage1/` or `stage2/` log or stats)."]
    lines = ["", f"![training curves]({figures.draw(draw.plot_training, section, 'training', run)})", "",
             "| stage | init model | finetune | steps | logged losses | first loss | last loss | "
             "tokens trained | tokens/s | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for stage, entry in section.items():
        stats, losses = entry["stats"], entry["curve"]["loss"]
        init_model = shown_path(stats.get("init_model", "-"), run["provenance"]["run_dir"])
        lines.append(f"| {stage} | {init_model} | {stats.get('finetune', '-')} | "
                     f"{stats.get('steps', '-')} | {len(losses)} | "
                     f"{f'{losses[0][1]:.4f}' if losses else '-'} | {f'{losses[-1][1]:.4f}' if losses else '-'} | "
                     f"{stats.get('tokens_trained', '-')} | {stats.get('tokens_per_second', '-')} | "
                     f"{stats.get('seconds', '-')} |")
    return lines


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


def accuracy_lines(runs, entries, figures):
    lines = ["", "## Accuracy per benchmark and mode", ""]
    if not entries:
        return lines + [f"Evaluation: {NOT_RUN} (no `metrics.json` with a benchmark and a mode in any run)."]
    lines += [f"![accuracy]({figures.draw(draw.plot_accuracy, entries, 'accuracy')})", ""] + accuracy_grid(entries)
    lines += ["", "| run | model | benchmark | mode | n | correct | accuracy % | 95 % CI | from | manifest |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    by_run = {run["provenance"]["run"]: run["provenance"] for run in runs}
    for e in sorted(entries, key=lambda e: (e["run"], e["role"], e["benchmark"], e["mode"])):
        a, prov = e["accuracy"], by_run[e["run"]]
        flag = " (contaminated)" if e["contaminated"] else ""
        mismatch = "" if e["source"] != "trajectories" or e["metrics_correct"] == a["successes"] else \
            f"; metrics.json says {e['metrics_correct']}"
        lines.append(f"| {e['run']} | {e['role']}: `{shown_path(e['model'], prov['run_dir'])}` | "
                     f"{e['benchmark']}{flag} | {e['mode']} | {a['n']} | "
                     f"{a['successes']} | {_pct(a['share'])} | {_pct(a['ci95'][0])}-{_pct(a['ci95'][1])} | "
                     f"{e['source']}{mismatch} | {cite(prov)} |")
    return lines


def paper_lines(paper):
    lines = ["", "### The paper's numbers, at the paper's scale (not ours)", "",
             f"Accuracy % as reported in {paper['citation']}. 7B-70B models trained on the paper's full data; "
             "shown for orientation, not comparable to a small run. Paper numbers for the other benchmarks "
             "(GSM-Hard, SVAMP, TabMWP, ASDiv, MAWPS) are not included.", "",
             "| model (paper) | " + " | ".join(b.upper() for b in paper["benchmarks"]) + " |",
             "|---|" + "---|" * len(paper["benchmarks"])]
    return lines + [f"| {m['name']} | " + " | ".join(f"{m[b]:.1f}" for b in paper["benchmarks"]) + " |"
                    for m in paper["models"]]


def error_lines(entries, figures, examples_shown):
    lines = ["", "## Error analysis", ""]
    with_rows = [e for e in entries if e["errors"]]
    if not with_rows:
        return lines + [f"Error analysis: {NOT_RUN} (no trajectories)."]
    lines += [f"![errors]({figures.draw(draw.plot_errors, entries, 'errors')})", "",
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
    for e, example in examples[:examples_shown]:  # a few, to keep the report to a page
        tail = example["generation_tail"].replace("`", "'").replace("\n", " ")[-240:]
        lines.append(f"- {e['role']} {e['benchmark']}/{e['mode']} `{example['id']}`: gold "
                     f"`{example['answer']}`, extracted `{example['pred']}`, finish {example['finish']}, "
                     f"{example['rounds']} rounds" + (f", last error `{example['last_error']}`"
                                                      if example["last_error"] else "") + f"; ends: \"...{tail}\"")
    return lines


# ------------------------------------------------------------------------------------------ the report

PER_RUN_SECTIONS = (("Filter funnel", filter_lines), ("Augmentation", augment_lines),
                    ("Synthesis", synthesis_lines), ("Training", training_lines))


def browser_lines(browser):
    """The link to the trajectory browser page written beside the report (mumath/browser.py), if any."""
    if not browser:
        return []
    name = Path(browser["path"]).name
    return ["", f"Trajectory browser: [{name}]({name}) ({browser['trajectories']} trajectories; one "
                "self-contained page, open it in a browser)."]


def write_report(analysis, out_dir):
    """Figures (PNG + SVG) and report.md under out_dir; returns (figure file names, report path)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = analysis["runs"]
    several_runs = len(runs) > 1
    figures = Figures(out_dir, several_runs)
    lines = runs_table(runs) + browser_lines(analysis.get("browser"))
    for run in runs:
        for title, render in PER_RUN_SECTIONS:
            lines += heading(title, run, several_runs) + render(run, figures)
    entries = [entry for run in runs for entry in run["evaluation"]]
    lines += accuracy_lines(runs, entries, figures) + paper_lines(analysis["paper"])
    lines += error_lines(entries, figures, examples_shown=max(3, len(runs)))
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    write_json(out_dir / "analysis.json",
               {key: value for key, value in analysis.items() if key not in ("figures", "report")})
    return figures.names, str(report)
