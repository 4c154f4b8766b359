"""Analysis (step 7): a small but realistic run folder, written by the package's own writers, analysed.

The augment, synthesize, filter and evaluate outputs come from the real functions (a scripted teacher /
model, the real sandbox, the real Teacher accounting, filter and manifest); contamination.json and the
training files (log.jsonl, stats.json) follow the formats of run_filter and of the training branch's
mumath/sft.py (building a decontamination index needs the test sets; training is not on main yet).
"""
import json
import math
import re
from pathlib import Path

import pytest

from mumath import analysis
from mumath.augment import augment, augment_stats
from mumath.backends import Completion, cut_at_stop
from mumath.evaluate import EvalConfig, evaluate_records
from mumath.executor import SandboxPool
from mumath.filter import FilterConfig, filter_rows, input_files
from mumath.manifest import Manifest
from mumath.records import RecordsError, read_jsonl, write_json, write_jsonl
from mumath.synthesize import run_synthesize
from mumath.teacher import Teacher
from mumath.tir import OUTPUT_MARKER

SEEDS = [{"id": "gsm8k/train/0", "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
          "answer": "7", "source": "gsm8k/train", "meta": {}},
         {"id": "gsm8k/train/1", "question": "A box holds 12 pens. How many pens are in 5 boxes?",
          "answer": "60", "source": "gsm8k/train", "meta": {}}]
PROBLEMS = [{"id": f"gsm8k/test/{i}", "question": f"What is {i} plus {i}?", "answer": str(2 * i), "meta": {}}
            for i in range(1, 6)]


class FunctionBackend:
    """A stand-in model: reply(prompt) -> text; honours stop strings like a server."""
    identity = "scripted:fake-teacher"

    def __init__(self, reply):
        self.reply = reply

    def format_prompt(self, messages):
        return messages[-1]["content"]

    def complete(self, prompts, sampling, stop=(), on_result=None):
        out = []
        for prompt in prompts:
            text, stopped = cut_at_stop(self.reply(prompt), stop)
            finish = "stop" if stopped else "eos"
            out.append(Completion(text, finish, len(prompt.split()), len(text.split())))
            if on_result:
                on_result(len(out) - 1, out[-1])
        return out


def augment_reply(prompt):
    if prompt.startswith("Rephrase"):
        return "Rephrased question: Tom buys 4 more apples and has 3. How many now?" if "Tom" in prompt \
            else "Rephrased question: Five boxes hold 13 pens each?"  # numbers changed: rejected
    if "New question" in prompt and "Write a new math question" in prompt:
        return "New question: Tom has 5 apples and buys 6 more. How many?"
    return "New question: something about X again"  # bf_trans that keeps X: rejected


def split(prompt):
    """(the question turn, what the model wrote so far): every template ends with this sentence."""
    head, _, generation = prompt.partition("within \\boxed{}.")
    return head, generation


def solution_reply(prompt):
    """CoT: a boxed 7. TIR: apple questions debug a ZeroDivisionError, the others answer 60 without code."""
    head, generation = split(prompt)
    if "interleaving" not in head:
        return "Adding the numbers gives the total: \\boxed{7}."
    if "apples" in head and not generation:
        return "I will add the apples with a short program in Python.\n```python\nprint(3 / 0)\n```\n```output\n"
    if "ZeroDivisionError" in generation and generation.count("```python") == 1:
        return "Division was wrong; add instead.\n```python\nprint(3 + 4)\n```\n```output\n"
    if OUTPUT_MARKER in generation:
        return "So the answer is \\boxed{7}."
    return "Directly: \\boxed{60}."


def eval_reply(prompt):
    """Problems 1-3: right (1 via code); 4: a NameError, then no answer at all; 5: a wrong answer."""
    head, generation = split(prompt)
    number = int(re.search(r"What is (\d+) plus", head).group(1))
    if "Python" not in head:  # cot
        return f"\\boxed{{{2 * number}}}"
    if OUTPUT_MARKER in generation:
        return "It failed and I stop here." if "Error" in generation else f"So \\boxed{{{2 * number}}}."
    if number == 1:
        return "Add with Python.\n```python\nprint(1 + 1)\n```\n```output\n"
    if number == 4:
        return "Try code.\n```python\nprint(a / b)\n```\n```output\n"
    if number == 5:
        return "\\boxed{11}"
    return f"\\boxed{{{2 * number}}}"


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, timeout=5) as sandbox:
        yield sandbox


def make_run(root, pool, name="toy", model="embedded", with_training=True, with_filter=True):
    """A run folder as the steps write it, with a manifest."""
    run_dir = Path(root) / name
    params_file = Path(root) / f"{name}.yaml"
    params_file.write_text(f"run: {name}\nsteps: {{evaluate: {{model: {model}}}}}\n")
    run_dir.mkdir(parents=True)
    manifest = Manifest(run_dir, params_file, name, {"evaluate": {"model": model}})
    teacher = Teacher(FunctionBackend(augment_reply), run_dir / "cache" / "teacher.jsonl", 0.15, 0.60)
    teacher.step = "augment"
    methods = {"rephrase": 1, "alter": 1, "fobar": 1, "bf_trans": 1}
    records, rejected = augment(SEEDS, teacher, methods)
    write_jsonl(run_dir / "augment" / "questions.jsonl", records)
    write_jsonl(run_dir / "augment" / "rejected.jsonl", rejected)
    write_json(run_dir / "augment" / "stats.json", {"methods": augment_stats(SEEDS, methods, records, rejected),
                                                    "teacher": teacher.identity, "usage": teacher.usage.to_dict()})
    synth_teacher = Teacher(FunctionBackend(solution_reply), run_dir / "cache" / "teacher2.jsonl")
    run_synthesize(run_dir, synth_teacher, pool, include_seeds=False, stages={"cot": 1, "tir": 1}, max_rounds=3)
    evaluate_records(FunctionBackend(eval_reply), pool, PROBLEMS, EvalConfig(mode="tir", max_rounds=3),
                     run_dir / "evaluate" / "gsm8k" / "tir", benchmark="gsm8k", progress=False)
    evaluate_records(FunctionBackend(eval_reply), pool, PROBLEMS[:3], EvalConfig(mode="cot"),
                     run_dir / "evaluate" / "gsm8k" / "cot", benchmark="gsm8k", progress=False)
    if with_filter:  # the real filter (no tokenizer, no test sets here), then a decontamination report as
        # run_filter writes it when a GSM8K test question overlapped (building the index needs the test sets)
        filter_rows(input_files(run_dir / "synthesize"), run_dir / "filter", FilterConfig(max_tokens=None),
                    progress=False)
        write_json(run_dir / "filter" / "contamination.json", {
            "ngram": 13, "checked": True, "unavailable": {}, "contaminated_for": [],
            "benchmarks": {"gsm8k": {"test_questions": 1319, "rows": 1, "questions": 1, "kept_rows": 0,
                                     "action": "dropped", "by_match": {"exact": 1}, "examples": []}}})
    if with_training:  # the training step's formats (mumath/sft.py on the train branch)
        for stage, losses in (("stage1", [2.5, 2.1, 1.8]), ("stage2", [1.9, 1.5])):
            write_jsonl(run_dir / stage / "log.jsonl",
                        [{"step": i + 1, "epoch": 0.5 * (i + 1), "loss": loss, "learning_rate": 1e-4 * (1 - i / 4),
                          "grad_norm": 1.0, "time": 0.0} for i, loss in enumerate(losses)]
                        + [{"step": len(losses), "train_runtime": 3.0, "train_loss": 2.0, "time": 0.0}])
            write_json(run_dir / stage / "stats.json", {"init_model": "embedded", "finetune": "lora",
                                                        "steps": len(losses), "tokens_trained": 1234,
                                                        "tokens_per_second": 50.0, "seconds": 3.0})
    manifest.finish("completed")
    return run_dir


def wilson(k, n, z=1.96):
    """The Wilson score interval, written out independently of the package."""
    p = k / n
    centre = (2 * n * p + z * z) / (2 * (n + z * z))
    half = z * math.sqrt(z * z + 4 * n * p * (1 - p)) / (2 * (n + z * z))
    return max(0.0, centre - half), min(1.0, centre + half)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, pool):
    return make_run(tmp_path_factory.mktemp("runs"), pool)


@pytest.fixture(scope="module")
def analysed(toy_run):
    return analysis.run_analysis(toy_run)


def test_report_numbers_equal_those_from_the_trajectories(toy_run, analysed):
    result = analysed
    report = Path(result["report"]).read_text()
    rows = read_jsonl(toy_run / "evaluate" / "gsm8k" / "tir" / "trajectories.jsonl")
    k, n = sum(row["correct"] for row in rows), len(rows)
    assert (k, n) == (3, 5)  # the scripted model: 3 right, 1 error without answer, 1 wrong
    low, high = wilson(k, n)
    line = next(line for line in report.splitlines() if "| gsm8k | tir |" in line)
    assert f"| {n} | {k} | {100 * k / n:.1f} | {100 * low:.1f}-{100 * high:.1f} |" in line
    assert "trajectories" in line and "base: `scripted:fake-teacher`" in line  # what answered, from config.json
    manifest = json.loads((toy_run / "manifest.json").read_text())
    # the manifest is cited relative to the run folder's parent, never by this machine's absolute path
    assert f"`{toy_run.name}/manifest.json` @ {manifest['git']['commit'][:12]}" in report
    assert str(toy_run.parent) not in report
    cot = next(line for line in report.splitlines() if "| gsm8k | cot |" in line)
    assert "| 3 | 3 | 100.0 |" in cot
    # the grid: one row per model, one column per benchmark and mode, the same numbers
    header = next(line for line in report.splitlines() if line.startswith("| model | "))
    assert "gsm8k cot" in header and "gsm8k tir" in header
    grid = next(line for line in report.splitlines() if line.startswith("| base | "))
    assert f"{100 * k / n:.1f} [{100 * low:.1f}-{100 * high:.1f}] ({k}/{n})" in grid


def test_report_sections_figures_and_error_analysis(toy_run, analysed):
    result = analysed
    out = toy_run / "analysis"
    for figure in result["figures"]:
        assert (out / figure).stat().st_size > 0 and (out / figure).with_suffix(".svg").stat().st_size > 0
    assert {"funnel.png", "augment.png", "synthesis.png", "training.png", "accuracy.png", "errors.png"} \
        <= set(result["figures"])
    report = Path(result["report"]).read_text()
    assert "not run" not in report
    # augmentation: rephrase keeps 1 of 2 (the other changed its numbers), bf_trans keeps none (X left)
    assert re.search(r"\| rephrase \| 1 \| 1 \| 50\.0 % \(1/2; 95 % CI [\d.]+-[\d.]+\) \| numbers changed \(1\) \|",
                     report)
    assert "| bf_trans | 0 | 2 |" in report and "still mentions the unknown X (2)" in report
    # synthesis: every apple question's TIR solution fixed its ZeroDivisionError
    rows = read_jsonl(toy_run / "synthesize" / "tir.jsonl")
    fixed = sum(row["errors_fixed"] for row in rows)
    assert fixed == sum(row["execution_errors"] for row in rows) >= 1
    tir = next(line for line in report.splitlines() if line.startswith("| tir |") and "CI" in line)  # not the funnel
    assert f"| {sum(row['executions'] for row in rows)} | {fixed} | {fixed} | 0 |" in tir
    prefix = sum(bool(row["prefix_cot"]) for row in rows)
    low, high = wilson(prefix, len(rows))
    assert tir.endswith(f"({prefix}/{len(rows)}; 95 % CI {100 * low:.1f}-{100 * high:.1f}) |")
    errors = result["runs"][0]["evaluation"]
    tir_entry = next(e for e in errors if e["mode"] == "tir")["errors"]
    assert tir_entry["by_exception"] == {"NameError": 1}
    assert tir_entry["no_answer"]["successes"] == 1 and tir_entry["executions"] == 2
    assert tir_entry["failing"][0]["last_error"].startswith("NameError")  # errors first
    assert "NameError 1" in report and "no extracted answer" in report
    # the paper's table, cited, marked as the paper's
    assert "The paper's numbers, at the paper's scale (not ours)" in report and "2405.07551" in report
    assert "| MuMath-Code-CL-7B | 82.6 | 52.4 |" in report
    # training and filter
    assert "| stage1 | embedded | lora | 3 | 3 | 2.5000 | 1.8000 |" in report
    assert "gsm8k: 1 rows / 1 questions overlap its 1319 test questions (dropped)" in report
    funnel = json.loads((toy_run / "filter" / "funnel.json").read_text())
    for stage, steps in funnel["stages"].items():
        assert f"| {stage} | " + " | ".join(str(steps[f]) for f in funnel["filters"]) + " |" in report
    kept = "; ".join(f"{stage} {method} {steps['cap']}/{steps['input']}" for stage, methods in funnel["by_method"].items()
                     for method, steps in methods.items())
    assert f"Kept / in per augmentation method: {kept}." in report
    dropped = read_jsonl(toy_run / "filter" / "dropped.jsonl")
    assert dropped and all(f"{row['stage']}/{row['filter']}" in report for row in dropped)


def test_absent_steps_say_not_run(tmp_path):
    run_dir = tmp_path / "empty"
    run_dir.mkdir()
    result = analysis.run_analysis(run_dir)
    report = Path(result["report"]).read_text()
    for section in ("Filter", "Augmentation", "Synthesis", "Training", "Evaluation", "Error analysis"):
        assert f"{section}: not run" in report
    assert "no manifest.json" in report and result["figures"] == []


def test_compares_runs_and_finds_metrics_anywhere(tmp_path, toy_run, pool):
    other = make_run(tmp_path, pool, name="trained", model="outputs/trained/stage2/final", with_training=False,
                     with_filter=False)
    # a later layout: evaluation under a fingerprint folder, model identity in config.json beside the metrics
    moved = other / "evaluate" / "ab12cd34" / "gsm8k" / "tir"
    moved.parent.mkdir(parents=True)
    (other / "evaluate" / "gsm8k" / "tir").rename(moved)
    write_json(moved / "config.json", {"fingerprint": "x", "settings": {"model": {"backend": "transformers",
                                                                                  "model": "/x/stage1/final"}}})
    # the answers' own identity (config.json) names the model, not the run's parameters
    write_json(other / "evaluate" / "gsm8k" / "cot" / "config.json",
               {"fingerprint": "y", "settings": {"model": {"backend": "transformers", "model": "/x/stage2/final"}}})
    result = analysis.run_analysis(tmp_path / "out", runs=[toy_run, other], out_dir=tmp_path / "out" / "analysis",
                                   record=False)
    table = analysis.accuracy_table(result)
    roles = {(row["run"], row["role"], row["mode"]) for row in table}
    assert roles == {("toy", "base", "tir"), ("toy", "base", "cot"), ("trained", "stage-1", "tir"),
                     ("trained", "stage-2", "cot")}
    report = Path(result["report"]).read_text()
    assert "## Training (trained)" in report and "Training: not run" in report
    assert (tmp_path / "out" / "analysis" / "funnel-toy.png").exists()


def test_metrics_with_more_trajectories_than_problems_use_the_metrics(tmp_path, pool):
    run_dir = tmp_path / "r"
    out = run_dir / "evaluate" / "gsm8k" / "tir"
    evaluate_records(FunctionBackend(eval_reply), pool, PROBLEMS, EvalConfig(mode="cot"), out, "gsm8k", False)
    metrics = evaluate_records(FunctionBackend(eval_reply), pool, PROBLEMS[:2], EvalConfig(mode="cot"), out,
                               "gsm8k", False)
    entry = analysis.evaluation_section(run_dir, analysis.provenance(run_dir))[0]
    assert entry["accuracy"]["n"] == metrics["n"] == 2 and entry["source"].startswith("metrics.json")


def test_helpers():
    assert analysis.exception_type("Traceback (most recent call last):\n  File x\nZeroDivisionError: division by zero") \
        == "ZeroDivisionError"
    assert analysis.exception_type("sympy.core.sympify.SympifyError: bad") == "SympifyError"
    assert analysis.exception_type("killed") == "other"
    assert analysis.reason_kind("numbers changed: ['3'] -> ['4']") == "numbers changed"
    assert analysis.reason_kind("implausible length 12 for a seed of 50") == "implausible length"
    assert analysis.model_role("outputs/q/stage2/final") == "stage-2" and analysis.model_role("embedded") == "base"
    assert analysis.fmt_share(analysis.share(0, 0)) == "n = 0"
    low, high = wilson(1, 3)
    assert analysis.share(1, 3)["ci95"] == pytest.approx([low, high])


def test_broken_json_names_the_file(tmp_path):
    (tmp_path / "augment").mkdir()
    (tmp_path / "augment" / "stats.json").write_text("{not json")
    with pytest.raises(RecordsError, match="augment/stats.json"):
        analysis.collect([tmp_path])


def test_notebook_runs_on_a_run_folder(toy_run, tmp_path):
    """07_analysis as the runner executes it (papermill, repository root as working directory)."""
    import nbformat
    import papermill

    from mumath.config import NOTEBOOK_DIR, REPO_ROOT

    executed = tmp_path / "07_analysis.ipynb"
    papermill.execute_notebook(str(NOTEBOOK_DIR / "07_analysis.ipynb"), str(executed), kernel_name="python3",
                               parameters={"run_dir": str(toy_run), "out_dir": str(tmp_path / "analysis")},
                               cwd=str(REPO_ROOT), progress_bar=False)
    text = json.dumps(nbformat.read(executed, as_version=4).cells)
    assert "MuMath-Code-CL-70B" in text and "NameError" in text
    assert (tmp_path / "analysis" / "report.md").exists() and (tmp_path / "analysis" / "accuracy.svg").exists()


def test_training_section_covers_stage_variants(tmp_path):
    from mumath.analysis import training_section

    for folder in ("stage1", "stage2.only", "stage2", "evaluate.base"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "log.jsonl").write_text('{"step": 1, "loss": 2.5}\n')
    section = training_section(tmp_path)
    assert sorted(section) == ["stage1", "stage2", "stage2.only"]
    assert section["stage2.only"]["curve"]["loss"] == [(1, 2.5)]


def test_accuracy_figure_is_a_heatmap_per_model_with_every_cell_labelled():
    from mumath.analysis_figures import accuracy_figure

    def entry(role, benchmark, mode, correct, n=4):
        return {"run": "r", "role": role, "model": f"m-{role}", "benchmark": benchmark, "mode": mode,
                "accuracy": analysis.share(correct, n)}

    entries = [entry(role, b, m, k) for role, k in (("base", 1), ("stage-2", 3))
               for b in ("gsm8k", "math500", "svamp") for m in ("cot", "tir")]
    figure = accuracy_figure(entries[:-1])  # one cell missing
    panels = [axes for axes in figure.axes if axes.get_title()]
    assert [axes.get_title().split("\n")[0] for axes in panels] == ["base", "stage-2"]
    for axes in panels:
        assert [t.get_text() for t in axes.get_yticklabels()] == ["gsm8k", "math500", "svamp"]
        assert [t.get_text() for t in axes.get_xticklabels()] == ["cot", "tir"]
        assert len(axes.texts) == 6
    assert panels[0].texts[0].get_text().startswith("25.0\n[") and panels[0].texts[0].get_text().endswith("1/4")
    assert panels[1].texts[-1].get_text() == "-"
    assert len(figure.axes) == 3  # two panels and one shared colour bar
