"""Metrics, resume and maj@k."""
import json

import pytest

from mumath.backends import Sampling
from mumath.evaluate import EvalConfig, compute_metrics, evaluate_records, read_jsonl, wilson_interval
from mumath.executor import SandboxPool
from tests.test_tir import ScriptedBackend


def row(id_, sample, correct, pred="1"):
    return {"id": id_, "sample": sample, "correct": correct, "pred": pred, "executions": [], "rounds": 1,
            "finish": "eos", "prompt_tokens": 1, "completion_tokens": 1}


def test_wilson_interval():
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(0, 0) == (0.0, 0.0)


def test_majority_vote_groups_equivalent_answers():
    rows = [row("a", 0, True, "0.5"), row("a", 1, True, "1/2"), row("a", 2, True, "\\frac{1}{2}"),
            row("b", 0, True, "3"), row("b", 1, False, "4"), row("b", 2, False, "4")]
    metrics = compute_metrics(rows, n_samples=3)
    assert metrics["accuracy"] == 1.0 and metrics["maj@3"] == 0.5 and metrics["pass@3"] == 1.0


def test_resume_skips_finished_problems_and_survives_a_torn_line(tmp_path):
    records = [{"id": f"q{i}", "question": f"Q{i}", "answer": str(i), "meta": {}} for i in range(3)]
    out = tmp_path / "gsm8k" / "tir"
    out.mkdir(parents=True)
    done = dict(row("q0", 0, True, "0"), question="Q0", answer="0", generation="\\boxed{0}")
    (out / "trajectories.jsonl").write_text(json.dumps(done) + "\n" + '{"id": "q1", "sam')
    backend = ScriptedBackend({f"Q{i}": [(f"\\boxed{{{i}}}", "eos")] for i in (1, 2)})
    with SandboxPool(workers=1, timeout=2) as pool:
        metrics = evaluate_records(backend, pool, records, EvalConfig(mode="cot"), out, "gsm8k",
                                   progress=False)
    assert backend.calls == [2], "only the two unfinished problems were generated"
    rows = read_jsonl(out / "trajectories.jsonl")
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"] and metrics["accuracy"] == 1.0
    assert json.loads((out / "metrics.json").read_text())["n"] == 3


def test_maj_at_k_needs_sampling():
    with pytest.raises(ValueError, match="temperature"):
        EvalConfig(n_samples=4, sampling=Sampling(temperature=0.0))
