"""The papermill runner: validation before anything runs, manifests, reuse, failures, no secrets."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mumath.config import ParamsError, load_params
from mumath.manifest import sha256_file

REPO = Path(__file__).resolve().parent.parent
CANARY = "sk-mumath-canary-0123456789"


def write_params(tmp_path, **params):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def tiny(run="tiny", with_data_steps=False, **evaluate):
    settings = dict(benchmarks=["gsm8k", "svamp"], limit=1, modes=["tir"], max_new_tokens=24, max_rounds=1,
                    exec_workers=1, few_shot=1)
    settings.update(evaluate)
    steps = {"evaluate": settings}
    if with_data_steps:
        steps["augment"] = dict(methods={"rephrase": 1, "fobar": 1}, max_new_tokens=24)
        steps["synthesize"] = dict(stages={"tir": 1}, max_new_tokens=24, max_rounds=1, exec_workers=1)
        steps["filter"] = dict(decontaminate_benchmarks=["gsm8k", "svamp"])
        return dict(run=run, seed=0, model="embedded", teacher_model="embedded", seed_benchmarks=["gsm8k:train"],
                    seeds_per_benchmark=1, steps=steps)
    return dict(run=run, seed=0, model="embedded", steps=steps)


@pytest.mark.parametrize("params,message", [
    (dict(run="x", steps={"evaluate": {"benchmark": ["gsm8k"]}}), "unknown parameter 'steps.evaluate.benchmark'"),
    (dict(run="x", modle="embedded", steps={"evaluate": {}}), r"unknown parameter\(s\) \['modle'\]"),
    (dict(run="x", steps={"evaluate": {"limit": "ten"}}), "'steps.evaluate.limit' should be int"),
    (dict(run="x", steps={"evaluate": {"temperature": "hot"}}), "'steps.evaluate.temperature' should be float"),
    (dict(run="x", steps={"evaluate": {"modes": "tir"}}), "'steps.evaluate.modes' should be list"),
    (dict(run="x", seed="zero", steps={"evaluate": {}}), "parameter 'seed' should be int"),
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


def test_secret_parameters_are_refused(tmp_path):
    from mumath.runner import run

    path = write_params(tmp_path, run="x", steps={"evaluate": {}})
    params = yaml.safe_load(path.read_text())
    params["steps"]["evaluate"]["api_key"] = CANARY
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError):
        run(path, outputs=tmp_path / "o")


def test_shipped_params_files_are_valid():
    for path in sorted((REPO / "params").glob("*.yaml")):
        load_params(path)


def run_cli(path, outputs, *extra):
    env = dict(os.environ, OPENAI_API_KEY=CANARY)
    return subprocess.run([sys.executable, "-m", "mumath", "run", str(path), "--outputs", str(outputs), *extra],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
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
    data_file = str(Path(data_dir, "gsm8k", "test.jsonl").resolve())
    assert manifest["inputs"][data_file] == sha256_file(data_file)
    assert str(path.resolve()) in manifest["inputs"]
    for benchmark in ("gsm8k", "svamp"):
        metrics = json.loads((run_dir / "evaluate" / benchmark / "tir" / "metrics.json").read_text())
        assert metrics["n"] == 1 and metrics["contaminated"] is False
    executed = run_dir / "06_evaluate.ipynb"
    assert json.loads(executed.read_text())["cells"][2]["outputs"] is not None
    for file in run_dir.rglob("*"):
        if file.is_file():
            assert CANARY not in file.read_text(errors="ignore"), f"secret leaked into {file}"

    stamp = executed.stat().st_mtime
    again = run_cli(path, tmp_path / "out")
    assert again.returncode == 0 and "reusing" in again.stdout
    assert executed.stat().st_mtime == stamp
    assert {step["status"] for step in json.loads((run_dir / "manifest.json").read_text())["steps"].values()} == {"reused"}

    forced = run_cli(path, tmp_path / "out", "--force", "--only", "synthesize")
    assert forced.returncode == 0, forced.stderr[-3000:]
    usage = json.loads((run_dir / "synthesize" / "stats.json").read_text())["usage"]
    assert usage["requests"] == 0 and usage["cache_hits"] > 0, "a forced re-run pays no teacher call"


@pytest.mark.slow
def test_failing_step_keeps_its_notebook_and_earlier_outputs(tmp_path, data_dir, embedded_dir):
    run_dir = tmp_path / "out" / "broken"
    run_dir.mkdir(parents=True)
    (run_dir / "earlier.txt").write_text("keep me")
    path = write_params(tmp_path, data_dir=str(data_dir), **tiny(run="broken", benchmarks=["no-such-benchmark"]))
    result = run_cli(path, tmp_path / "out")
    assert result.returncode == 1 and "step failed" in result.stderr
    assert (run_dir / "earlier.txt").read_text() == "keep me"
    assert (run_dir / "06_evaluate.ipynb").exists(), "the partly executed notebook stays for inspection"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["steps"]["evaluate"]["status"] == "failed"
    assert "no-such-benchmark" in manifest["steps"]["evaluate"]["error"]
