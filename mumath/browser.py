"""Trajectory browser: every evaluation and synthesis trajectory of a run, filterable, as the model wrote it.

Two views of the same records and the same rendering:
- `write_page`: one self-contained static HTML file (CSS and script inline, nothing fetched: a
  Content-Security-Policy forbids any load), written by the analysis step as `analysis/browser.html`;
- `browser_widget`: ipywidgets in JupyterLab (`07_analysis`).

Filters: source (evaluate / synthesize), model, benchmark, mode, outcome, rounds, and a text search.
Outcome tags of a trajectory: `correct` or `wrong` (`ungraded` without a gold answer), plus `error` when an
execution raised, `timeout` when one timed out, and `no answer` when nothing could be extracted; the
`outcome` filter shows the trajectories carrying the chosen tag. A trajectory shows its question, each
generation (the model's text of each round), each code block with its execution output (error, timeout
marked), the extracted answer and the gold.

Model text is hostile: everything from the files is HTML-escaped, in element text and in attributes, and
the script only reads the escaped `data-*` attributes it filters on (it never builds HTML from data).
"""
import html
import json
import re
from collections import Counter
from pathlib import Path

from .records import read_json, read_jsonl

BLOCK = re.compile(r"```(python|output)[ \t]*\n(.*?)```", re.DOTALL)
FILTERS = ("source", "model", "benchmark", "mode", "outcome", "rounds")
OUTCOMES = ("correct", "wrong", "ungraded", "error", "timeout", "no answer")
PAGE = "browser.html"


# ------------------------------------------------------------------------------------------ records

def outcome_tags(correct, executions, pred):
    tags = ["ungraded" if correct is None else "correct" if correct else "wrong"]
    if any(e.get("error") and not e.get("timed_out") for e in executions):
        tags.append("error")
    if any(e.get("timed_out") for e in executions):
        tags.append("timeout")
    if pred is None:
        tags.append("no answer")
    return tags


def record(source, model, row, benchmark, mode):
    executions = [e for e in row.get("executions") or [] if isinstance(e, dict)]
    return {"source": source, "model": model, "benchmark": str(benchmark), "mode": str(mode),
            "id": str(row.get("id")), "sample": row.get("sample", 0), "question": str(row.get("question", "")),
            "answer": row.get("answer"), "pred": row.get("pred"), "correct": row.get("correct"),
            "rounds": int(row.get("rounds") or 0), "finish": row.get("finish"),
            "generation": str(row.get("generation") or ""), "executions": executions,
            "tags": outcome_tags(row.get("correct"), executions, row.get("pred"))}


def evaluation_records(entries, limit=None):
    """Every trajectory (all samples) of the evaluations the analysis found (`mumath.analysis`'s evaluation
    entries: metrics file, benchmark, mode, the model's role), the role standing for the model."""
    records = []
    for entry in entries:
        metrics_path = Path(entry["metrics_path"])
        fingerprint = (read_json(metrics_path, missing_ok=True) or {}).get("fingerprint")
        trajectories = metrics_path.with_name("trajectories.jsonl")
        group = [record("evaluate", entry["role"], row, entry["benchmark"], entry["mode"])
                 for row in (read_jsonl(trajectories) if trajectories.exists() else [])
                 if not fingerprint or row.get("fingerprint") == fingerprint]  # rows of another configuration: out
        records += group[:limit] if limit is not None else group
    return records


def synthesis_records(run_dir, limit=None):
    """The synthesis step's solutions (<stage>.jsonl) with their trajectories (<stage>_trajectories.jsonl)."""
    folder, records = Path(run_dir) / "synthesize", []
    for path in sorted(folder.glob("*_trajectories.jsonl")) if folder.exists() else []:
        stage = path.name[:-len("_trajectories.jsonl")]
        raw = {row.get("id"): row for row in read_jsonl(path)}
        rows = read_jsonl(folder / f"{stage}.jsonl") if (folder / f"{stage}.jsonl").exists() else []
        groups = {}
        for row in rows:
            trajectory = raw.get(row.get("id")) or {}
            merged = dict(row, generation=trajectory.get("generation", (row.get("messages") or [{}])[-1]
                                                         .get("content")),
                          executions=trajectory.get("executions") or [])
            teacher = "reference" if str(row.get("teacher") or "").startswith("reference") else "teacher"
            benchmark = str(row.get("source") or "augmented").split(":")[0]
            groups.setdefault((benchmark, teacher), []).append(
                record("synthesize", teacher, merged, benchmark, stage))
        for group in groups.values():
            records += group[:limit] if limit is not None else group
    return records


def collect_records(analysis, limit=None):
    """Evaluation then synthesis trajectories of each run of a collected analysis (`mumath.analysis.collect`,
    or `run_analysis`'s result); `limit` caps each (source, model, benchmark, mode) group."""
    records, runs = [], analysis["runs"]
    for run in runs:
        for entry in evaluation_records(run["evaluation"], limit) + \
                synthesis_records(run["provenance"]["run_dir"], limit):
            if len(runs) > 1:
                entry["model"] = f"{run['provenance']['run']}: {entry['model']}"
            records.append(entry)
    return records


# ------------------------------------------------------------------------------------------ rendering

def esc(value):
    return html.escape("" if value is None else str(value), quote=True)


def segments(generation, executions):
    """The generation cut into rounds: [[('text'|'code'|'output', text, execution or None), ...], ...].

    A round ends after each execution output (the interpreter's text; the model resumes after it). The
    k-th code block is paired with the k-th execution, the order the tool loop ran them in."""
    rounds, current, position, code_index = [], [], 0, 0
    for match in BLOCK.finditer(generation):
        if match.start() > position and generation[position:match.start()].strip():
            current.append(("text", generation[position:match.start()], None))
        kind, body = match.group(1), match.group(2)
        if kind == "python":
            execution = executions[code_index] if code_index < len(executions) else None
            current.append(("code", body, execution))
            code_index += 1
        else:
            current.append(("output", body, None))
            rounds.append(current)
            current = []
        position = match.end()
    if generation[position:].strip():
        current.append(("text", generation[position:], None))
    if current or not rounds:
        rounds.append(current)
    return rounds


def render_trajectory(entry):
    """The body of one trajectory (HTML, every piece of text escaped)."""
    parts = [f'<div class="q"><b>question</b><pre>{esc(entry["question"])}</pre></div>']
    for number, pieces in enumerate(segments(entry["generation"], entry["executions"]), 1):
        parts.append(f'<div class="round"><div class="label">generation {number}</div>')
        for kind, text, execution in pieces:
            if kind == "text":
                parts.append(f'<pre class="text">{esc(text)}</pre>')
            elif kind == "code":
                status = ""
                if execution is not None and execution.get("timed_out"):
                    status = '<span class="tag timeout">timeout</span>'
                elif execution is not None and execution.get("error"):
                    status = '<span class="tag error">error</span>'
                parts.append(f'<div class="label">code {status}</div><pre class="code">{esc(text)}</pre>')
            else:
                parts.append(f'<div class="label">output</div><pre class="output">{esc(text)}</pre>')
        parts.append("</div>")
    parts.append(f'<div class="verdict">extracted answer: <code class="pred">{esc(entry["pred"])}</code> · gold: '
                 f'<code class="gold">{esc(entry["answer"])}</code> · finish: {esc(entry["finish"])} · '
                 f'rounds: {entry["rounds"]}</div>')
    return "\n".join(parts)


def summary_line(entry):
    tags = " ".join(f'<span class="tag {esc(tag.replace(" ", "-"))}">{esc(tag)}</span>' for tag in entry["tags"])
    question = entry["question"].replace("\n", " ")
    return (f'{tags} <b>{esc(entry["id"])}</b>{"#" + esc(entry["sample"]) if entry["sample"] else ""} '
            f'<span class="meta">{esc(entry["source"])} · {esc(entry["model"])} · {esc(entry["benchmark"])} · '
            f'{esc(entry["mode"])} · rounds {entry["rounds"]}</span> '
            f'<span class="qshort">{esc(question[:140])}</span>')


STYLE = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222}
#filters{position:sticky;top:0;background:#f4f4f8;padding:.5em;border:1px solid #ccd;z-index:1}
#filters label{margin-right:.8em;font-size:.9em}
details.traj{border:1px solid #ddd;margin:.3em 0;padding:.2em .5em;border-radius:4px}
details.traj[open]{background:#fcfcff}
summary{cursor:pointer}
pre{white-space:pre-wrap;word-break:break-word;margin:.2em 0;padding:.3em;border-radius:3px}
pre.code{background:#eef4ff;border-left:3px solid #36c}
pre.output{background:#f3f3f3;border-left:3px solid #999}
pre.text{background:#fff}
.round{border-left:2px solid #cce;margin:.4em 0;padding-left:.5em}
.label{font-size:.75em;color:#666;margin-top:.3em}
.tag{font-size:.75em;padding:0 .4em;border-radius:3px;background:#ddd}
.tag.correct{background:#bfe8bf}.tag.wrong{background:#f3c0c0}.tag.error{background:#f6d7a0}
.tag.timeout{background:#e0c0f0}.tag.no-answer{background:#eee}
.meta{color:#555;font-size:.85em}.qshort{color:#333;font-size:.85em}
.verdict{margin:.4em 0;font-size:.9em}
"""

SCRIPT = """
(function(){
  var names = %s;
  var items = Array.prototype.slice.call(document.querySelectorAll('details.traj'));
  function apply(){
    var want = {}; names.forEach(function(n){ want[n] = document.getElementById('f-' + n).value; });
    var text = document.getElementById('f-text').value.toLowerCase(); var shown = 0;
    items.forEach(function(item){
      var ok = names.every(function(n){
        if (!want[n]) return true;
        if (n === 'outcome') return item.dataset.outcome.split('|').indexOf(want[n]) >= 0;
        return item.dataset[n] === want[n];
      });
      if (ok && text) ok = item.textContent.toLowerCase().indexOf(text) >= 0;
      item.hidden = !ok; if (ok) shown++;
    });
    document.getElementById('count').textContent = shown + ' of ' + items.length + ' trajectories';
  }
  names.concat(['text']).forEach(function(n){
    var el = document.getElementById('f-' + n); el.addEventListener('input', apply); el.addEventListener('change', apply);
  });
  apply();
})();
"""


def filter_values(records):
    """The choices of each filter (sorted; outcome in its fixed order), for the page and the widget."""
    values = {name: sorted({str(entry[name]) for entry in records}, key=lambda v: (len(v), v) if name == "rounds"
                           else v) for name in FILTERS if name != "outcome"}
    present = {tag for entry in records for tag in entry["tags"]}
    values["outcome"] = [tag for tag in OUTCOMES if tag in present]
    return {name: values[name] for name in FILTERS}


def render_page(records, title="Trajectories", note=""):
    """The whole page: filters, then one collapsible block per trajectory."""
    selects = []
    for name, choices in filter_values(records).items():
        options = "".join(f'<option value="{esc(value)}">{esc(value)}</option>' for value in choices)
        selects.append(f'<label>{name} <select id="f-{name}"><option value="">all</option>{options}</select></label>')
    blocks = []
    for entry in records:
        data = " ".join(f'data-{name}="{esc(entry[name])}"' for name in FILTERS if name != "outcome")
        blocks.append(f'<details class="traj" {data} data-outcome="{esc("|".join(entry["tags"]))}">'
                      f'<summary>{summary_line(entry)}</summary>{render_trajectory(entry)}</details>')
    counts = Counter(tag for entry in records for tag in entry["tags"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{STYLE}</style></head><body>
<h1>{esc(title)}</h1>
<p class="meta">{esc(note)} Outcomes: {esc(", ".join(f"{tag} {counts[tag]}" for tag in OUTCOMES if counts[tag]) or "none")}.
Click a trajectory to open it.</p>
<div id="filters">{" ".join(selects)} <label>text <input id="f-text" type="search" placeholder="id or words"></label>
<b id="count"></b></div>
<div id="list">
{chr(10).join(blocks) or '<p>No trajectories in this run (evaluation and synthesis not run).</p>'}
</div>
<script>{SCRIPT % json.dumps(list(FILTERS))}</script>
</body></html>
"""


def write_page(analysis, path, limit=200, title=None):
    """The static page of a collected analysis's trajectories; returns {path, trajectories, limit}."""
    records = collect_records(analysis, limit)
    names = [run["provenance"]["run"] for run in analysis["runs"]]
    note = (f"Runs: {', '.join(names)}. "
            + (f"At most {limit} trajectories per source, model, benchmark and mode (parameter browser_limit)."
               if limit is not None else "All trajectories."))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(records, title or "Trajectories: " + ", ".join(names), note))
    return {"path": str(path), "trajectories": len(records), "limit": limit}


# ------------------------------------------------------------------------------------------ JupyterLab

def browser_widget(records, list_rows=12):
    """ipywidgets: a dropdown per filter, a text search, the matching trajectories, the chosen one shown."""
    import ipywidgets as widgets

    dropdowns = {name: widgets.Dropdown(options=[("all", "")] + [(v, v) for v in choices], value="",
                                        description=name, layout=widgets.Layout(width="220px"))
                 for name, choices in filter_values(records).items()}
    search = widgets.Text(placeholder="id or words", description="text")
    chooser = widgets.Select(options=[], rows=list_rows, layout=widgets.Layout(width="100%"))
    count, shown = widgets.Label(), widgets.HTML()

    def matches(entry):
        for name, dropdown in dropdowns.items():
            wanted = dropdown.value
            if wanted and (wanted not in entry["tags"] if name == "outcome" else str(entry[name]) != wanted):
                return False
        text = search.value.lower()
        return not text or text in (entry["id"] + " " + entry["question"] + " " + entry["generation"]).lower()

    def label(entry):
        return (f"{','.join(entry['tags'])} | {entry['id']} | {entry['model']} | {entry['benchmark']} | "
                f"{entry['mode']} | {entry['rounds']} rounds")

    def refresh(*_):
        chosen = [index for index, entry in enumerate(records) if matches(entry)]
        chooser.options = [(label(records[index]), index) for index in chosen]
        count.value = f"{len(chosen)} of {len(records)} trajectories"
        show()

    def show(*_):
        index = chooser.value
        shown.value = "" if index is None else f"<style>{STYLE}</style>{render_trajectory(records[index])}"

    for control in [*dropdowns.values(), search]:
        control.observe(refresh, names="value")
    chooser.observe(show, names="value")
    refresh()
    box = widgets.VBox([widgets.HBox(list(dropdowns.values())[:3]), widgets.HBox(list(dropdowns.values())[3:]),
                        widgets.HBox([search, count]), chooser, shown])
    box.dropdowns, box.search, box.chooser, box.shown, box.count = dropdowns, search, chooser, shown, count
    return box
