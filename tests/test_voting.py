"""maj@k and pass@k (mumath/voting.py) and their place in the evaluation metrics."""
import itertools
import json

import pytest

from mumath.evaluate import compute_metrics, majority_answer
from mumath.voting import answer_groups, bootstrap_interval, maj_at_k, pass_at_k, voting_metrics


def rows_of(problem, preds, gold):
    from mumath.grading import is_equivalent

    return [{"id": problem, "sample": s, "pred": p, "correct": is_equivalent(p, gold), "executions": [],
             "rounds": 1, "finish": "eos", "prompt_tokens": 0, "completion_tokens": 0}
            for s, p in enumerate(preds)]


def test_pass_at_k_is_the_unbiased_estimator():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert pass_at_k(5, 4, 2) == 1.0 and pass_at_k(5, 0, 3) == 0.0
    # equals the share of k-subsets holding a correct sample
    correct = [True, False, False, True, False, False]
    for k in range(1, 7):
        subsets = list(itertools.combinations(range(6), k))
        brute = sum(any(correct[i] for i in subset) for subset in subsets) / len(subsets)
        assert pass_at_k(6, 2, k) == pytest.approx(brute)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_equivalent_answers_vote_together():
    rows = rows_of("p", ["3", "1/2", "0.5", "3", "\\frac{1}{2}"], "0.5")
    labels, correct, answers = answer_groups(rows)
    assert labels == [0, 1, 1, 0, 1] and correct == [False, True]
    assert majority_answer(rows) == ("1/2", True)
    assert maj_at_k(labels, correct, 5) == 1.0
    # every 1-subset: maj@1 is the share of correct samples
    assert maj_at_k(labels, correct, 1) == pytest.approx(3 / 5)
    # 2-subsets, ties to the answer seen first: brute force
    subsets = list(itertools.combinations(range(5), 2))
    expected = sum(correct[min(labels[s[0]], labels[s[1]])]
                   for s in subsets) / len(subsets)
    assert maj_at_k(labels, correct, 2) == pytest.approx(expected)


def test_voting_metrics_curve_and_intervals():
    rows = rows_of("a", ["1", "1", "2", "1"], "1") + rows_of("b", ["5", "6", "7", "6"], "7") + \
        rows_of("c", [None, "4", "4", None], "4")
    voting = voting_metrics(rows, 4)
    assert sorted(voting["by_k"]) == [1, 2, 4]
    assert voting["by_k"][4]["maj"] == pytest.approx(2 / 3)  # a: 1 wins, b: 6 wins, c: 4 wins
    assert voting["by_k"][4]["pass"] == 1.0
    assert voting["by_k"][1]["pass"] == pytest.approx(voting["sample_accuracy"])
    low, high = voting["by_k"][2]["maj_ci95"]
    assert low <= voting["by_k"][2]["maj"] <= high
    metrics = compute_metrics(rows, 4)
    assert metrics["maj@4"] == voting["by_k"][4]["maj"] and metrics["voting"]["problems"] == 3


def test_bootstrap_interval_is_seeded_and_sensible():
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_interval(values)
    assert low < 0.3 < high and high - low < 0.25
    assert bootstrap_interval(values) == [low, high]
    # every problem alike: not a zero-width interval, the Wilson interval of 10/10 (and of 0/10)
    low, high = bootstrap_interval([1.0] * 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-3)
    low, high = bootstrap_interval([0.0] * 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-3)


def test_analysis_shows_voting_beside_greedy(tmp_path):
    """A greedy and a sampled evaluation of the same model: the report's voting section and figure."""
    from mumath.analysis import run_analysis
    from mumath.records import write_json, write_jsonl

    run_dir = tmp_path / "run"
    problems = {"a": (["1", "1", "2", "1"], "1"), "b": (["5", "6", "7", "6"], "7"), "c": (["4", "4", "3", "9"], "4")}
    sampled = [dict(row, question=pid, answer=gold, fingerprint="s", mode="tir", benchmark="gsm8k")
               for pid, (preds, gold) in problems.items() for row in rows_of(pid, preds, gold)]
    greedy = [dict(row, question=pid, answer=gold, fingerprint="g", mode="tir", benchmark="gsm8k")
              for pid, (preds, gold) in problems.items() for row in rows_of(pid, preds[:1], gold)]
    for folder, rows, n, fingerprint in (("evaluate", greedy, 1, "g"), ("evaluate.sampled", sampled, 4, "s")):
        out = run_dir / folder / "gsm8k" / "tir"
        write_jsonl(out / "trajectories.jsonl", rows)
        write_json(out / "config.json", {"fingerprint": fingerprint, "settings": {"model": {"model": "embedded"}}})
        write_json(out / "metrics.json", dict(compute_metrics(rows, n), benchmark="gsm8k", mode="tir",
                                              fingerprint=fingerprint))
    analysis = run_analysis(run_dir, record=False)
    report = (run_dir / "analysis" / "report.md").read_text()
    assert "voting.png" in analysis["figures"] and (run_dir / "analysis" / "voting.png").exists()
    section = report.split("## Majority voting and pass@k")[1]
    # greedy: a and c right (2/3); maj@4: a, c right (2/3); pass@4: all three
    assert "| 4 | 66.7 |" in section and "| 100.0 |" in section
    assert section.count("| 66.7 |") >= 2  # greedy beside maj
    assert "(first of 4 samples)" in report


def test_sampled_tir_evaluation_writes_the_curve(tmp_path):
    """k samples per problem through the evaluation (scripted model): metrics.json carries maj@k and pass@k."""
    from mumath.backends import Sampling
    from mumath.evaluate import EvalConfig, evaluate_records
    from mumath.executor import SandboxPool
    from tests.test_tir import ScriptedBackend

    def tir(value):  # one turn each, so the order in which samples ask does not change the multiset of answers
        return [(f"So the answer is \\boxed{{{value}}}.", "eos")]

    records = [{"id": "q0", "question": "Q0", "answer": "6", "meta": {}},
               {"id": "q1", "question": "Q1", "answer": "7", "meta": {}}]
    backend = ScriptedBackend({"Q0": tir(6) + tir(5) + tir(6) + tir(6), "Q1": tir(1) + tir(2) + tir(7) + tir(1)})
    config = EvalConfig(mode="tir", n_samples=4, sampling=Sampling(temperature=0.7, seed=3))
    with SandboxPool(workers=1, timeout=5) as pool:
        metrics = evaluate_records(backend, pool, records, config, tmp_path, "gsm8k", progress=False)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["voting"]["by_k"]["4"]["maj"] == 0.5 and on_disk["voting"]["by_k"]["4"]["pass"] == 1.0
    assert on_disk["maj@4"] == 0.5 and metrics["voting"]["samples"] == 4
    assert metrics["voting"]["sample_accuracy"] == pytest.approx((3 / 4 + 1 / 4) / 2)
