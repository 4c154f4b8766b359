"""Metrics, resume and maj@k."""
import json

import pytest

from mumath.backends import Sampling
from mumath.evaluate import (EvalConfig, answer_settings, compute_metrics, config_fingerprint, evaluate_records,
                             read_jsonl, wilson_interval)
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
    backend = ScriptedBackend({f"Q{i}": [(f"\\boxed{{{i}}}", "eos")] for i in (1, 2)})
    with SandboxPool(workers=1, timeout=2) as pool:
        fingerprint = config_fingerprint(answer_settings(EvalConfig(mode="cot"), backend, pool))
        done = dict(row("q0", 0, True, "0"), question="Q0", answer="0", generation="\\boxed{0}",
                    fingerprint=fingerprint)
        (out / "trajectories.jsonl").write_text(json.dumps(done) + "\n" + '{"id": "q1", "sam')
        metrics = evaluate_records(backend, pool, records, EvalConfig(mode="cot"), out, "gsm8k",
                                   progress=False)
    assert backend.calls == [2], "only the two unfinished problems were generated"
    rows = read_jsonl(out / "trajectories.jsonl")
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"] and metrics["accuracy"] == 1.0
    assert json.loads((out / "metrics.json").read_text())["n"] == 3


def test_maj_at_k_needs_sampling():
    with pytest.raises(ValueError, match="temperature"):
        EvalConfig(n_samples=4, sampling=Sampling(temperature=0.0))


RECORDS = [{"id": f"q{i}", "question": f"Q{i}", "answer": str(i), "meta": {}} for i in range(3)]


def answering(records, text="\\boxed{{{answer}}}"):
    """A scripted model that answers every question correctly, as often as it is asked."""
    class Model(ScriptedBackend):
        def complete(self, prompts, sampling, stop=(), on_result=None):
            for record in records:
                self.scripts[record["question"]] = [(text.format(answer=record["answer"]), "eos")] * 10
            return super().complete(prompts, sampling, stop, on_result)

    return Model({})


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=1, timeout=3) as sandbox:
        yield sandbox


@pytest.mark.parametrize("change", [
    {"few_shot": 1},
    {"sampling": Sampling(max_new_tokens=64)},
    {"max_rounds": 2},
    {"carry_state": True},
    {"model_identity": {"backend": "transformers", "files": "another-checkpoint"}},
])
def test_a_changed_configuration_is_never_resumed_from(tmp_path, pool, change):
    """Changing anything that decides an answer re-generates every problem; the old rows are kept apart."""
    out = tmp_path / "gsm8k" / "cot"
    first = answering(RECORDS)
    evaluate_records(first, pool, RECORDS, EvalConfig(mode="cot"), out, "gsm8k", progress=False)
    again = answering(RECORDS)
    evaluate_records(again, pool, RECORDS, EvalConfig(mode="cot"), out, "gsm8k", progress=False)
    assert again.calls == [], "same configuration: nothing to do"

    changed = answering(RECORDS)
    metrics = evaluate_records(changed, pool, RECORDS, EvalConfig(mode="cot", **change), out, "gsm8k",
                               progress=False)
    assert changed.calls == [3], "every problem is generated again under the new configuration"
    rows = read_jsonl(out / "trajectories.jsonl")
    assert len(rows) == 3 and len({r["fingerprint"] for r in rows}) == 1 == len({metrics["fingerprint"]})
    assert rows[0]["fingerprint"] == json.loads((out / "config.json").read_text())["fingerprint"]
    assert len(read_jsonl(out / "superseded.jsonl")) == 3, "the old configuration's rows are kept, apart"
    assert metrics["n"] == 3 and metrics["accuracy"] == 1.0


def test_changed_prompt_files_are_a_new_configuration(tmp_path, pool):
    from mumath.prompts import PROMPT_DIR

    prompts = tmp_path / "prompts"
    prompts.mkdir()
    for file in PROMPT_DIR.iterdir():
        (prompts / file.name).write_text(file.read_text())
    out = tmp_path / "out"
    evaluate_records(answering(RECORDS), pool, RECORDS, EvalConfig(mode="cot", prompt_dir=str(prompts)), out,
                     progress=False)
    (prompts / "cot.txt").write_text("{question}\nSolve it carefully; end with \\\\boxed{}.")
    model = answering(RECORDS)
    evaluate_records(model, pool, RECORDS, EvalConfig(mode="cot", prompt_dir=str(prompts)), out, progress=False)
    assert model.calls == [3]


def test_a_changed_question_under_the_same_id_is_redone(tmp_path, pool):
    out = tmp_path / "out"
    evaluate_records(answering(RECORDS), pool, RECORDS, EvalConfig(mode="cot"), out, progress=False)
    edited = [dict(RECORDS[0], question="Q0 edited", answer="5")] + RECORDS[1:]
    model = answering(edited)
    metrics = evaluate_records(model, pool, edited, EvalConfig(mode="cot"), out, progress=False)
    assert model.calls == [1] and metrics["n"] == 3 and metrics["accuracy"] == 1.0


def test_tir_mode_through_evaluation(tmp_path, pool):
    """The fast suite's tir evaluation: code runs for real, its output feeds the answer, metrics count it."""
    records = [{"id": "a", "question": "What is 6*7?", "answer": "42", "meta": {}},
               {"id": "b", "question": "What is 1/0?", "answer": "0", "meta": {}}]
    model = ScriptedBackend({
        "What is 6*7?": [("```python\nprint(6 * 7)\n```\n```output\n41", "stop"), ("So \\boxed{42}.", "eos")],
        "What is 1/0?": [("```python\nprint(1 / 0)\n```\n", "stop"), ("\\boxed{0}", "eos")],
    })
    out = tmp_path / "tir"
    metrics = evaluate_records(model, pool, records, EvalConfig(mode="tir", max_rounds=2), out, "toy",
                               progress=False)
    rows = {r["id"]: r for r in read_jsonl(out / "trajectories.jsonl")}
    assert rows["a"]["executions"][0]["output"] == "42" and "41" not in rows["a"]["generation"]
    assert rows["b"]["executions"][0]["error"] and "ZeroDivisionError" in rows["b"]["generation"]
    assert metrics["executions"] == 2 and metrics["execution_errors"] == 1 and metrics["accuracy"] == 1.0
    assert metrics["mean_rounds"] == 2.0 and metrics["finish"] == {"eos": 2}
    assert json.loads((out / "config.json").read_text())["settings"]["executor"]["timeout"] == 3.0


def test_choices_flow_through_evaluation(tmp_path, pool):
    """A multiple-choice record (gold letter, options in meta) is graded by letter, text or value."""
    records = [{"id": f"m{i}", "question": f"M{i}", "answer": "C", "meta": {"choices": ["3", "5", "10"]}}
               for i in range(3)]
    model = ScriptedBackend({"M0": [("\\boxed{C}", "eos")], "M1": [("\\boxed{10}", "eos")],
                             "M2": [("\\boxed{B}", "eos")]})
    metrics = evaluate_records(model, pool, records, EvalConfig(mode="cot"), tmp_path, progress=False)
    verdicts = {r["id"]: r["correct"] for r in read_jsonl(tmp_path / "trajectories.jsonl")}
    assert verdicts == {"m0": True, "m1": True, "m2": False} and metrics["correct"] == 2


def test_metrics_are_recomputed_from_what_is_on_disk(tmp_path, pool):
    out = tmp_path / "out"
    evaluate_records(answering(RECORDS), pool, RECORDS, EvalConfig(mode="cot"), out, progress=False)
    path = out / "trajectories.jsonl"
    rows = read_jsonl(path)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]) + json.dumps(rows[2])[:40])  # torn by a kill
    model = answering(RECORDS)
    metrics = evaluate_records(model, pool, RECORDS, EvalConfig(mode="cot"), out, progress=False)
    assert model.calls == [1] and metrics["n"] == 3
    assert json.loads((out / "metrics.json").read_text())["n"] == 3


class SeededBackend:
    """Answers with the seed it was asked to sample with (a stand-in for a sampler: the seed decides the draw)."""

    def format_prompt(self, messages):
        return messages[-1]["content"]

    def submit(self, prompt, sampling, stop, callback, index=0, sample_index=0):
        from mumath.completions import Completion

        callback(Completion(f"\\boxed{{{sampling.seed + index}}}", "eos", 10, 5))


def test_a_resumed_sampled_run_draws_what_an_uninterrupted_run_draws(tmp_path):
    """Each sample's seed comes from its problem and sample number, not its place in the run's to-do list."""
    records = [{"id": f"q{i}", "question": f"Q{i}", "answer": "1", "meta": {}} for i in range(3)]
    config = EvalConfig(mode="cot", n_samples=2, sampling=Sampling(temperature=0.7, seed=5))
    out = tmp_path / "gsm8k" / "cot"
    path = out / "trajectories.jsonl"
    with SandboxPool(workers=1, timeout=5) as pool:
        evaluate_records(SeededBackend(), pool, records, config, out, "gsm8k", progress=False)
        drawn = {(r["id"], r["sample"]): r["pred"] for r in read_jsonl(path)}
        assert len(set(drawn.values())) == 6, "every problem and sample gets its own seed"
        # interrupted before q1 finished: its rows are gone, the others are resumed
        path.write_text("".join(json.dumps(r) + "\n" for r in read_jsonl(path) if r["id"] != "q1"))
        evaluate_records(SeededBackend(), pool, records, config, out, "gsm8k", progress=False)
    assert {(r["id"], r["sample"]): r["pred"] for r in read_jsonl(path)} == drawn
