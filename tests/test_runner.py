"""The papermill runner: validation before anything runs, manifests, reuse, failures, no secrets."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mumath.config import ParamsError, load_params
from mumath.manifest import sha256_file
from mumath.records import read_jsonl

REPO = Path(__file__).resolve().parent.parent
CANARY = "sk-mumath-canary-0123456789"


def write_params(tmp_path, **params):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def tiny(run="tiny", with_data_steps=False, model="embedded"):
    evaluation = dict(benchmarks=["gsm8k", "svamp"], limit=1, modes=["tir"], max_rounds=1, few_shot=1,
                      generation={"max_new_tokens": 24})
    steps = {"evaluate": {"model": model}}
    if with_data_steps:
        steps["augment"] = dict(methods={"rephrase": 1, "fobar": 1}, generation={"max_new_tokens": 24})
        steps["synthesize"] = dict(stages={"tir": 1}, generation={"max_new_tokens": 24}, max_rounds=1)
        steps["filter"] = dict(decontaminate_benchmarks=["gsm8k", "svamp"])
        return dict(run=run, seed=0, teacher={"model": "embedded"}, seeds={"benchmarks": ["gsm8k:train"],
                    "per_benchmark": 1}, sandbox={"workers": 1}, evaluation=evaluation, steps=steps)
    return dict(run=run, seed=0, sandbox={"workers": 1}, evaluation=evaluation, steps=steps)


@pytest.mark.parametrize("params,message", [
    (dict(run="x", steps={"evaluate": {"benchmark": ["gsm8k"]}}), "parameter 'steps.evaluate.benchmark': unknown"),
    (dict(run="x", modle="embedded", steps={"evaluate": {}}), "parameter 'modle' is not a shared setting"),
    (dict(run="x", steps={"evaluate": {"evaluation": {"limit": "ten"}}}),
     "'steps.evaluate.evaluation.limit': Input should be a valid integer"),
    (dict(run="x", steps={"evaluate": {"evaluation": {"generation": {"temperature": "hot"}}}}),
     "'steps.evaluate.evaluation.generation.temperature': Input should be a valid number"),
    (dict(run="x", steps={"evaluate": {"evaluation": {"modes": "tir"}}}),
     "'steps.evaluate.evaluation.modes': Input should be a valid list"),
    (dict(run="x", seed="zero", steps={"evaluate": {}}), "parameter 'seed': Input should be a valid integer"),
    (dict(run="x", steps={"evaluate": {"evaluation": {"limit": -3}}}),
     "'steps.evaluate.evaluation.limit': Input should be greater than or equal to 1, got -3"),
    (dict(run="x", evaluation={"limit": 0}, steps={"evaluate": {}}),
     "parameter 'evaluation.limit': Input should be greater than or equal to 1, got 0"),
    (dict(run="x", limit=5, steps={"evaluate": {}, "stage1": {}}),
     r"'limit' is not a shared setting .*'evaluation.limit' in the top-level group 'evaluation'"),
    (dict(run="x", steps={"evaluate": {"limit": 5}}), "'steps.evaluate.limit': unknown"),
    (dict(run="x", training={"limit": 5}, steps={"stage1": {}}), "'training.limit': unknown"),
    (dict(run="x", teacher_model="gpt-4o", steps={"augment": {}}),
     "it is a notebook's name for 'teacher.model'; in a params file write it inside its group"),
    (dict(run="x", steps={"stage1": {"training": {"finetune": "qlora4"}}}),
     "'steps.stage1.training.finetune': Input should be 'full', 'lora' or 'qlora'"),
    (dict(run="x", steps={"stage1": {"training": 3}}), "'steps.stage1.training': should be a mapping"),
    (dict(run="x", training={"epochz": 1}, steps={"evaluate": {}}), "parameter 'training.epochz': unknown"),
    (dict(steps={"evaluate": {}}), "missing parameter 'run'"),
    (dict(run="x"), "missing parameter 'steps'"),
    (dict(run="x", steps={"evalute": {}}), "unknown step 'steps.evalute'"),
])
def test_bad_params_are_named_with_the_file(tmp_path, params, message):
    path = write_params(tmp_path, **params)
    with pytest.raises(ParamsError, match=message) as error:
        load_params(path)
    assert str(path) in str(error.value)


def test_cli_fails_before_running_anything(tmp_path):
    path = write_params(tmp_path, run="never", steps={"evaluate": {"limt": 1}})
    out = subprocess.run([sys.executable, "-m", "mumath", "run", str(path), "--outputs", str(tmp_path / "o")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "steps.evaluate.limt" in out.stderr and str(path) in out.stderr
    assert not (tmp_path / "o").exists()


def test_check_refuses_a_negative_limit_naming_file_and_key(tmp_path):
    path = write_params(tmp_path, run="x", evaluation={"limit": -1}, steps={"evaluate": {}})
    out = subprocess.run([sys.executable, "-m", "mumath", "check", str(path)], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 2 and str(path) in out.stderr and "'evaluation.limit'" in out.stderr, out.stderr


@pytest.mark.parametrize("where", ["step", "shared"])
def test_secret_parameters_are_refused_as_secrets(tmp_path, where):
    """Refused because it is a credential (not merely an unknown key), and the value is never echoed."""
    from mumath.runner import run

    params = dict(run="x", steps={"evaluate": {}})
    if where == "step":
        params["steps"]["evaluate"]["api_key"] = CANARY
    else:
        params["hf_token"] = CANARY
    path = write_params(tmp_path, **params)
    with pytest.raises(ParamsError, match="looks like a secret; secrets come from the environment") as error:
        run(path, outputs=tmp_path / "o")
    assert CANARY not in str(error.value) and not (tmp_path / "o").exists()


# Params files whose input the repository does not ship: the user downloads it (the released MuMath-Code
# corpus) or a script writes it first (the sweep's held-out training problems). `check` must refuse them by
# naming the missing file, never pass them and never fail on something else.
NEEDS_INPUT = {"paper-7b-mumath-code-data.yaml": "mumath-code/train.jsonl",
               "ablation-sweep.yaml": "gsm8k-train-holdout.jsonl"}


def test_shipped_params_files_are_valid():
    """Every params file resolves offline: benchmarks, data (the shipped copy), prompts."""
    from mumath.check import check_plan

    for path in sorted((REPO / "params").glob("*.yaml")):
        if path.name in NEEDS_INPUT:
            with pytest.raises(ParamsError, match=re.escape(NEEDS_INPUT[path.name])):
                check_plan(path, load_params(path)[1])
            continue
        notes = check_plan(path, load_params(path)[1])
        assert notes and all("benchmark_data" in note for note in notes if "rows from" in note)


def run_cli(path, outputs, *extra):
    env = dict(os.environ, OPENAI_API_KEY=CANARY)
    return subprocess.run([sys.executable, "-m", "mumath", "run", str(path), "--outputs", str(outputs), *extra],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # five runs of the runner (three kernels for the first, then reuse and re-runs)
def test_full_run_manifest_reuse_and_no_secrets(tmp_path, data_dir, embedded_dir):
    path = write_params(tmp_path, data_dir=str(data_dir), **tiny(with_data_steps=True))
    first = run_cli(path, tmp_path / "out")
    assert first.returncode == 0, first.stderr[-3000:]
    run_dir = tmp_path / "out" / "tiny"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed" and list(manifest["steps"]) == ["augment", "synthesize", "filter", "evaluate"]
    assert all(step["status"] == "completed" for step in manifest["steps"].values())
    questions = [json.loads(line) for line in open(run_dir / "augment" / "questions.jsonl")]
    assert {q["method"] for q in questions} <= {"rephrase", "fobar"} and any(q["method"] == "fobar" for q in questions)
    solutions = [json.loads(line) for line in open(run_dir / "synthesize" / "tir.jsonl")]
    assert len(solutions) == 1 + len(questions) and all(s["messages"][1]["role"] == "assistant" for s in solutions)
    assert (run_dir / "cache" / "teacher.jsonl").exists()
    assert manifest["git"]["commit"] and manifest["packages"]["transformers"] and manifest["hardware"]["cpus"]
    funnel = json.loads((run_dir / "filter" / "funnel.json").read_text())
    assert funnel["stages"]["tir"]["input"] == len(solutions) and (run_dir / "filter" / "stage2.jsonl").exists()
    assert manifest["seeds"] == {"augment": 0, "synthesize": 0, "evaluate": 0} and manifest["params"]["evaluate"]["limit"] == 1
    data_file = str(Path(data_dir, "gsm8k", "test.jsonl.gz").resolve())
    assert manifest["inputs"][data_file] == sha256_file(data_file)
    assert manifest["steps"]["evaluate"]["data"]["mumath/benchmark_data/gsm8k/test.jsonl.gz"] == "shipped"
    assert str(path.resolve()) in manifest["inputs"]
    for benchmark in ("gsm8k", "svamp"):
        metrics = json.loads((run_dir / "evaluate" / benchmark / "tir" / "metrics.json").read_text())
        assert metrics["n"] == 1 and metrics["contaminated"] is False
    executed = run_dir / "06_evaluate.ipynb"
    table_cell = next(c for c in json.loads(executed.read_text())["cells"] if "table = pd.DataFrame" in "".join(c["source"]))
    assert any("text/html" in output.get("data", {}) for output in table_cell["outputs"]), "the accuracy table was shown"
    for text in (first.stdout, first.stderr):
        assert "KeyboardInterrupt" not in text and "without encryption" not in text, "a clean run prints no alarm"
    for file in run_dir.rglob("*"):
        if file.is_file():
            assert CANARY not in file.read_text(errors="ignore"), f"secret leaked into {file}"

    stamp = executed.stat().st_mtime
    again = run_cli(path, tmp_path / "out")
    assert again.returncode == 0 and "reusing" in again.stdout
    assert executed.stat().st_mtime == stamp
    assert {step["status"] for step in json.loads((run_dir / "manifest.json").read_text())["steps"].values()} == {"reused"}

    trajectories = run_dir / "evaluate" / "gsm8k" / "tir" / "trajectories.jsonl"
    trajectories.write_text(trajectories.read_text()[:-20])  # torn by a kill after the step finished
    torn = run_cli(path, tmp_path / "out", "--only", "evaluate")
    assert torn.returncode == 0 and "evaluate: finished before" not in torn.stdout, "torn outputs are never reused"
    assert "incomplete" in torn.stdout and "trajectories.jsonl" in torn.stdout
    metrics = json.loads((run_dir / "evaluate" / "gsm8k" / "tir" / "metrics.json").read_text())
    assert metrics["n"] == 1 and len(read_jsonl(trajectories)) == 1, "metrics recomputed from what is on disk"

    forced = run_cli(path, tmp_path / "out", "--force", "--only", "augment")
    assert forced.returncode == 0, forced.stderr[-3000:]
    usage = json.loads((run_dir / "augment" / "stats.json").read_text())["usage"]
    assert usage["requests"] == 0 and usage["cache_hits"] > 0, "a forced re-run pays no teacher call"
    downstream = run_cli(path, tmp_path / "out", "--only", "synthesize")
    assert downstream.returncode == 0 and "synthesize: finished before" not in downstream.stdout, \
        "augment changed: synthesize re-runs"
    assert "inputs changed" in downstream.stdout


@pytest.mark.slow
def test_failing_step_keeps_its_notebook_and_earlier_outputs(tmp_path, data_dir, embedded_dir):
    run_dir = tmp_path / "out" / "broken"
    run_dir.mkdir(parents=True)
    (run_dir / "earlier.txt").write_text("keep me")
    params = tiny(run="broken", model=str(tmp_path / "no-such-model"))
    path = write_params(tmp_path, **params)
    result = run_cli(path, tmp_path / "out")
    assert result.returncode == 1
    assert f"error: step failed: ModelNotFoundError: model folder {tmp_path / 'no-such-model'} does not exist" \
        in result.stderr, "the real exception, not a slice of papermill's traceback"
    assert (run_dir / "earlier.txt").read_text() == "keep me"
    assert (run_dir / "06_evaluate.ipynb").exists(), "the partly executed notebook stays for inspection"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["steps"]["evaluate"]["status"] == "failed"
    assert manifest["steps"]["evaluate"]["error"].startswith("ModelNotFoundError: model folder")


def test_a_failing_step_reports_the_notebooks_exception():
    from papermill.exceptions import PapermillExecutionError

    from mumath.runner import describe_failure

    error = PapermillExecutionError(cell_index=3, exec_count=3, source="run_evaluation(...)", ename="DataError",
                                    evalue="unknown benchmark 'gsm8kk'; known: ['gsm8k']",
                                    traceback=["\x1b[0;31m---------\x1b[0m", "DataError: ..."] * 40)
    assert describe_failure(error) == "DataError: unknown benchmark 'gsm8kk'; known: ['gsm8k']"


# --- check: what the parameters point at, before anything runs ------------------------------------------

def check_cli(path, capsys):
    from mumath.runner import main

    code = main(["check", str(path)])
    return code, capsys.readouterr()


@pytest.mark.parametrize("evaluate,message", [
    ({"evaluation": {"benchmarks": ["gsm8kk"]}},
     "'steps.evaluate.evaluation.benchmarks': 'gsm8kk': unknown benchmark 'gsm8kk'; known:"),
    ({"evaluation": {"benchmarks": ["gsm8k:validation"]}}, "has no split 'validation'"),
    ({"evaluation": {"benchmarks": ["mine"]}, "extra_benchmarks": {"mine": {"splits": {"test": {"local": "/nope/x.jsonl"}},
                                                           "question": "q", "answer": "a"}}},
     "no local copy \\(looked in: /nope/x.jsonl\\)"),
    ({"evaluation": {"benchmarks": ["mine"]}, "extra_benchmarks": {"mine": {"splits": {"test": {"local": "/x.jsonl"}},
                                                           "question": "q", "answer": "a",
                                                           "answer_parser": "after_hsh"}}},
     "'after_hsh' is not one of"),
    ({"prompt_dir": "/no/such/prompts"}, "prompt folder /no/such/prompts does not exist"),
])
def test_check_resolves_what_it_can_without_a_model(tmp_path, capsys, evaluate, message):
    path = write_params(tmp_path, run="x", steps={"evaluate": evaluate})
    code, out = check_cli(path, capsys)
    assert code == 2 and re.search(message, out.err) and str(path) in out.err


def test_check_reads_local_rows_and_names_the_bad_line(tmp_path, capsys):
    data = tmp_path / "mine.jsonl"
    data.write_text('{"q": "1", "a": "#### 1"}\n{"q": "2", "answer": "#### 2"}\n')
    entry = {"splits": {"test": {"local": str(data)}}, "question": "q", "answer": "a", "answer_parser": "after_hash"}
    path = write_params(tmp_path, run="x", steps={"evaluate": {"evaluation": {"benchmarks": ["mine"]},
                                                              "extra_benchmarks": {"mine": entry}}})
    code, out = check_cli(path, capsys)
    assert code == 2 and f"{data}:2: field 'a' missing" in out.err
    data.write_text('{"q": "1", "a": "#### 1"}\n')
    code, out = check_cli(path, capsys)
    assert code == 0 and "mine: 1 rows from" in out.out


def test_check_finds_missing_prompt_templates(tmp_path, capsys):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "tir.txt").write_text("{question}")
    path = write_params(tmp_path, run="x", steps={"evaluate": {"prompt_dir": str(prompts),
                                                              "evaluation": {"modes": ["tir", "cot"]}}})
    code, out = check_cli(path, capsys)
    assert code == 2 and "lacks ['cot.txt']" in out.err


# --- reuse: same parameters, notebook, package code and inputs, and intact outputs ------------------------

@pytest.fixture
def finished_run(tmp_path):
    """A run folder where augment and synthesize finished (their outputs on disk, their manifest entries)."""
    from mumath.manifest import folder_hashes
    from mumath.runner import step_fingerprint

    run_dir = tmp_path / "run"
    (run_dir / "augment").mkdir(parents=True)
    (run_dir / "augment" / "questions.jsonl").write_text('{"id": "q", "question": "What is 1+1?"}\n')
    (run_dir / "synthesize").mkdir()
    (run_dir / "synthesize" / "tir.jsonl").write_text('{"id": "q/tir/0"}\n{"id": "q/tir/1"}\n')
    params = {"stages": {"tir": 1}}
    entry = {"status": "completed", "fingerprint": step_fingerprint("synthesize", params, run_dir),
             "outputs": folder_hashes(run_dir / "synthesize"), "recorded_inputs": []}
    return run_dir, params, entry


def test_reuse_when_nothing_changed(finished_run):
    from mumath.runner import reuse_verdict

    run_dir, params, entry = finished_run
    assert reuse_verdict(run_dir, "synthesize", params, entry) == (True, None)
    assert reuse_verdict(run_dir, "synthesize", {"stages": {"tir": 2}}, entry)[0] is False


def test_no_reuse_after_an_upstream_step_changed(finished_run):
    from mumath.runner import reuse_verdict

    run_dir, params, entry = finished_run
    (run_dir / "augment" / "questions.jsonl").write_text('{"id": "q", "question": "What is 2+2?"}\n')
    reusable, why = reuse_verdict(run_dir, "synthesize", params, entry)
    assert not reusable and "inputs changed" in why


def test_no_reuse_after_a_recorded_input_changed(finished_run, tmp_path):
    from mumath.runner import reuse_verdict, step_fingerprint

    run_dir, params, entry = finished_run
    data = tmp_path / "seeds.jsonl"
    data.write_text("{}\n")
    entry["recorded_inputs"] = [str(data)]
    entry["fingerprint"] = step_fingerprint("synthesize", params, run_dir, [str(data)])
    assert reuse_verdict(run_dir, "synthesize", params, entry)[0]
    data.write_text('{"changed": 1}\n')
    assert not reuse_verdict(run_dir, "synthesize", params, entry)[0]


def test_no_reuse_after_the_package_code_changed(finished_run, tmp_path, monkeypatch):
    import shutil

    import mumath.manifest
    from mumath.runner import reuse_verdict

    run_dir, params, entry = finished_run
    package = tmp_path / "mumath"
    shutil.copytree(Path(mumath.manifest.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(mumath.manifest, "__file__", str(package / "manifest.py"))
    assert reuse_verdict(run_dir, "synthesize", params, entry)[0], "an identical copy is the same code"
    (package / "grading.py").write_text((package / "grading.py").read_text() + "\n# changed\n")
    assert not reuse_verdict(run_dir, "synthesize", params, entry)[0]


@pytest.mark.parametrize("damage", ["torn", "missing", "edited"])
def test_no_reuse_of_torn_or_incomplete_outputs(finished_run, damage):
    from mumath.runner import reuse_verdict

    run_dir, params, entry = finished_run
    output = run_dir / "synthesize" / "tir.jsonl"
    if damage == "torn":
        output.write_text(output.read_text()[:-8])
    elif damage == "missing":
        output.unlink()
    else:
        output.write_text('{"id": "q/tir/0"}\n')
    reusable, why = reuse_verdict(run_dir, "synthesize", params, entry)
    assert not reusable and "tir.jsonl" in why


def test_a_new_steps_inputs_are_found_without_declaring_them(finished_run):
    """Any step's fingerprint covers the output folders of every step before it in config.STEPS."""
    from mumath.runner import input_hashes

    run_dir, _, _ = finished_run
    assert set(input_hashes(run_dir, "filter")) == {"augment/", "synthesize/"}
    assert set(input_hashes(run_dir, "augment")) == set()


# --- run folders and the kernel ---------------------------------------------------------------------

def test_relative_run_dirs_land_under_the_projects_outputs(tmp_path, monkeypatch):
    """`make lab` opens notebooks/: a notebook run there must still write to ./outputs/<run>."""
    from mumath.config import resolve_run_dir

    import inspect

    from mumath.steps import RUNNERS

    monkeypatch.chdir(REPO / "notebooks")
    assert resolve_run_dir("outputs/notebook-dev") == REPO / "outputs" / "notebook-dev"
    assert resolve_run_dir(str(tmp_path)) == tmp_path
    for step, runner in RUNNERS.items():
        assert "resolve_run_dir(config.run_dir)" in inspect.getsource(runner), step
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        if "{run_dir}" in notebook.read_text():  # a notebook that reads the run folder itself resolves it too
            assert "run_dir = resolve_run_dir(config.run_dir)" in notebook.read_text(), notebook.name


def test_a_clean_notebook_run_prints_no_alarm(tmp_path):
    """jupyter_client interrupts even an idle kernel before shutting it down (ipykernel then logs
    'KeyboardInterrupt caught in kernel'), and ipykernel warns about unencrypted TCP: neither may appear."""
    import nbformat

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                      nbformat.v4.new_code_cell("print(x + 1)")]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, tmp_path / "n.ipynb")
    code = ("from mumath.runner import run_notebook; import sys; "
            f"run_notebook({str(tmp_path / 'n.ipynb')!r}, {str(tmp_path / 'o.ipynb')!r}, {{'x': 41}})")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "42" in (tmp_path / "o.ipynb").read_text()
    for text in (out.stdout, out.stderr):
        assert "KeyboardInterrupt" not in text and "without encryption" not in text, text[-2000:]



# --- step variants: the same notebook twice in one run (ablation arms, base vs trained evaluation) ------

def test_variants_load_in_recipe_order_with_their_own_parameters(tmp_path):
    path = tmp_path / "p.yaml"  # recipe order across stages, file order within one
    path.write_text(yaml.safe_dump(dict(run="x", steps={
        "evaluate.base": {"model": "embedded"}, "stage2.from_base": {"init_model": "embedded"},
        "evaluate": {"model": "{run_dir}/stage2/final"}, "stage2": {}, "stage1": {}}), sort_keys=False))
    _, plan = load_params(path)
    assert list(plan) == ["stage1", "stage2.from_base", "stage2", "evaluate.base", "evaluate"]
    assert plan["stage2.from_base"]["init_model"] == "embedded" and plan["evaluate.base"]["model"] == "embedded"


@pytest.mark.parametrize("step,message", [
    ("augment.more", "step 'augment' takes no variants"),
    ("evaluate.", "unknown step 'steps.evaluate.'"),
    ("evaluate.a/b", "unknown step 'steps.evaluate.a/b'"),
    ("evaluat.base", "unknown step 'steps.evaluat.base'"),
])
def test_bad_variants_are_refused_by_name(tmp_path, step, message):
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_params(write_params(tmp_path, run="x", steps={step: {}}))


def test_a_variant_writes_its_own_folder_and_sees_earlier_stages_only(tmp_path):
    """evaluate.base's inputs: stage folders (variants too), not its sibling evaluate/; its notebook and
    output folder are its own."""
    from mumath.config import executed_notebook_name, step_output_dir
    from mumath.runner import input_hashes

    run_dir = tmp_path / "run"
    for folder in ("stage1", "stage2", "stage2.from_base", "evaluate", "evaluate.base", "not-a-step"):
        (run_dir / folder).mkdir(parents=True)
        (run_dir / folder / "out.txt").write_text(folder)
    assert set(input_hashes(run_dir, "evaluate.base")) == {"stage1/", "stage2/", "stage2.from_base/"}
    assert set(input_hashes(run_dir, "stage2.from_base")) == {"stage1/"}
    assert step_output_dir(run_dir, "evaluate.base") == run_dir / "evaluate.base"
    assert executed_notebook_name("stage2.from_base") == "05_stage2.from_base.ipynb"


def test_the_runner_gives_a_variant_its_step_name(tmp_path, monkeypatch):
    import mumath.runner

    seen = {}
    monkeypatch.setattr(mumath.runner, "run_notebook", lambda notebook, output, parameters, log_output=True:
                        seen.setdefault(Path(output).name, (Path(notebook).name, parameters)))
    path = write_params(tmp_path, run="v", steps={"evaluate": {"evaluation": {"limit": 1}},
                                                  "evaluate.base": {"evaluation": {"limit": 2}}})
    mumath.runner.run(path, outputs=tmp_path / "out", log_output=False)
    assert seen["06_evaluate.ipynb"][1]["step_name"] == "evaluate"
    notebook, parameters = seen["06_evaluate.base.ipynb"]
    assert notebook == "06_evaluate.ipynb" and parameters["step_name"] == "evaluate.base" and parameters["limit"] == 2
    manifest = json.loads((tmp_path / "out" / "v" / "manifest.json").read_text())
    assert manifest["steps"]["evaluate.base"]["status"] == "completed"
    assert manifest["steps"]["evaluate.base"]["git"] == manifest["git"]  # the commit each step ran at


def test_analysis_names_a_variants_model_by_its_folder():
    from mumath.analysis import model_role

    assert model_role("/r/stage2/final") == "stage-2"
    assert model_role("/r/stage2.from_base/final") == "stage-2 [from_base]"
    assert model_role("/r/stage1.long/final") == "stage-1 [long]"
    assert model_role("embedded") == "base"


def test_a_failed_re_run_keeps_the_finished_steps_notebook_and_record(tmp_path, monkeypatch):
    """Issue 20: a bad change re-run over a finished evaluation used to overwrite its executed notebook and turn
    its entry into `failed, outputs: None` although the outputs were intact."""
    import mumath.runner

    def good(notebook, output, parameters, log_output=True):
        folder = Path(parameters["run_dir"]) / "evaluate"
        folder.mkdir(exist_ok=True)
        (folder / "metrics.json").write_text('{"accuracy": 0.5}')
        Path(output).write_text("the good run's notebook")

    def bad(notebook, output, parameters, log_output=True):
        Path(output).write_text("the failed attempt's notebook")
        raise ValueError("Sample larger than population or is negative")

    monkeypatch.setattr(mumath.runner, "run_notebook", good)
    path = write_params(tmp_path, run="r", steps={"evaluate": {"evaluation": {"limit": 1}}})
    run_dir = mumath.runner.run(path, outputs=tmp_path / "out", log_output=False)
    finished = json.loads((run_dir / "manifest.json").read_text())["steps"]["evaluate"]
    assert finished["status"] == "completed" and finished["outputs"]

    monkeypatch.setattr(mumath.runner, "run_notebook", bad)
    path = write_params(tmp_path, run="r", steps={"evaluate": {"evaluation": {"limit": 2}}})
    with pytest.raises(ValueError):
        mumath.runner.run(path, outputs=tmp_path / "out", log_output=False)
    assert (run_dir / "06_evaluate.ipynb").read_text() == "the good run's notebook"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["steps"]["evaluate"] == finished, "the finished step's entry is untouched"
    assert manifest["status"] == "failed"
    (attempt,) = manifest["failed_attempts"]
    assert attempt["step"] == "evaluate" and attempt["status"] == "failed" and "Sample larger" in attempt["error"]
    assert Path(attempt["notebook"]).read_text() == "the failed attempt's notebook"
    assert Path(attempt["notebook"]).parent == run_dir / "attempts"

    monkeypatch.setattr(mumath.runner, "run_notebook", good)  # fixed: the attempt becomes the step's record
    mumath.runner.run(path, outputs=tmp_path / "out", log_output=False)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["steps"]["evaluate"]["status"] == "completed"
    assert manifest["steps"]["evaluate"]["notebook"] == str(run_dir / "06_evaluate.ipynb")
    assert len(manifest["failed_attempts"]) == 1, "the earlier failure stays on record"
    assert (run_dir / "06_evaluate.ipynb").read_text() == "the good run's notebook"
    assert [notebook.read_text() for notebook in (run_dir / "attempts").glob("*.ipynb")] == \
        ["the failed attempt's notebook"], "the successful attempt moved into place"
