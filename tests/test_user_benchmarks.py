"""Benchmarks users bring through `extra_benchmarks`, with no code (docs/user-benchmarks.md): items without a
gold answer, multiple choice in its common shapes, and `check`'s range checks. Each failed before issue 20."""
import json

import pytest

from mumath.check import check_plan
from mumath.config import ParamsError
from mumath.data import load_benchmark
from mumath.evaluate import EvalConfig, evaluate_records, read_jsonl, warn_ungraded
from mumath.grading import is_equivalent
from tests.test_tir import ScriptedBackend


def user_benchmark(tmp_path, rows, **entry):
    """An `extra_benchmarks` entry over a JSONL file of `rows`."""
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"mine": dict({"splits": {"test": {"local": str(path)}}, "question": "question", "answer": "answer"},
                         **entry)}


def graded(records, predictions):
    return [is_equivalent(pred, record["answer"], record["meta"].get("choices"))
            for record, pred in zip(records, predictions)]


def test_mathqa_option_strings_with_lowercase_letters(tmp_path):
    rows = [{"Problem": "What is 4 * 4?", "options": "a ) 12 , b ) 16 , c ) 20 , d ) 24 , e ) none of these",
             "correct": "b"}] * 5
    extra = user_benchmark(tmp_path, rows, question="{Problem}", answer="correct", choices="options",
                           choices_in_question=True)
    records = load_benchmark("mine", extra=extra)
    assert records[0]["meta"]["choices"] == ["12", "16", "20", "24", "none of these"]
    assert records[0]["question"].endswith("Options: A) 12  B) 16  C) 20  D) 24  E) none of these")
    # The option's value, its letter in either case, or "(b)": all name option b.
    assert graded(records, ["16", "b", "B", "(b)", "12"]) == [True, True, True, True, False]


def test_mmlu_options_as_a_list_with_an_integer_index_as_gold(tmp_path):
    rows = [{"question": "2 + 8?", "choices": ["3", "5", "10", "12"], "answer": 2}] * 4
    extra = user_benchmark(tmp_path, rows, choices="choices", answer_parser="option_index",
                           choices_in_question=True)
    records = load_benchmark("mine", extra=extra)
    assert records[0]["answer"] == "C" and records[0]["meta"]["choices"] == ["3", "5", "10", "12"]
    assert "Options: A) 3  B) 5  C) 10  D) 12" in records[0]["question"]
    assert graded(records, ["10", "C", "C) 10", "2"]) == [True, True, True, False], "2 is not the gold, 10 is"


def test_an_index_gold_out_of_range_is_refused_with_its_line(tmp_path):
    extra = user_benchmark(tmp_path, [{"question": "q", "choices": ["1", "2"], "answer": "first"}],
                           choices="choices", answer_parser="option_index")
    with pytest.raises(ValueError, match=r"mine\.jsonl:1: expected the correct option's 0-based index"):
        load_benchmark("mine", extra=extra)


@pytest.mark.parametrize("options,gold", [
    ("A) 3 B) 5 C) 10", "C"), ("A) 3 B) 5 C) 10", "c"), (["a) 3", "b) 5", "c) 10"], "c"),
    ("(a) 3 (b) 5 (c) 10", "(c)"), (["3", "5", "10"], "C")])
def test_a_letter_gold_in_the_common_option_shapes(tmp_path, options, gold):
    extra = user_benchmark(tmp_path, [{"question": "2 + 8?", "options": options, "answer": gold}] * 3,
                           choices="options")
    records = load_benchmark("mine", extra=extra)
    assert records[0]["meta"]["choices"] == ["3", "5", "10"]
    assert graded(records, ["10", gold, "5"]) == [True, True, False]


def test_items_without_gold_are_ungraded_not_wrong(tmp_path):
    rows = [{"question": "Q0", "answer": "4"}, {"question": "Q1", "answer": ""}, {"question": "Q2", "answer": None},
            {"question": "Q3", "answer": "7"}]
    extra = user_benchmark(tmp_path, rows)
    records = load_benchmark("mine", extra=extra)
    assert [record["answer"] for record in records] == ["4", None, None, "7"]
    model = ScriptedBackend({f"Q{i}": [("\\boxed{4}", "eos")] for i in range(4)})
    from mumath.executor import SandboxPool

    with SandboxPool(workers=1, timeout=2, preimport=[]) as pool:
        metrics = evaluate_records(model, pool, records, EvalConfig(mode="cot"), tmp_path / "out", "mine",
                                   progress=False)
    verdicts = [row["correct"] for row in read_jsonl(tmp_path / "out" / "trajectories.jsonl")]
    assert sorted(verdicts, key=str) == sorted([True, None, None, False], key=str)
    assert metrics["n"] == 2 and metrics["accuracy"] == 0.5 and metrics["ungraded"] == 2
    with pytest.warns(UserWarning, match="2 item\\(s\\) have no gold answer"):
        warn_ungraded([dict(metrics, mode="cot")])


def test_check_warns_about_ungraded_items(tmp_path):
    extra = user_benchmark(tmp_path, [{"question": "Q0", "answer": "4"}, {"question": "Q1", "answer": ""}])
    notes = check_plan(tmp_path / "p.yaml", {"evaluate": {"benchmarks": ["mine"], "extra_benchmarks": extra}})
    assert any("WARNING mine: 1 of 2 rows have no gold answer" in note for note in notes), notes


@pytest.mark.parametrize("name,value", [("limit", -1), ("limit", 0), ("n_samples", 0), ("top_p", 1.5),
                                        ("exec_workers", 0), ("max_new_tokens", -5)])
def test_check_refuses_out_of_range_values_naming_file_and_key(tmp_path, name, value):
    with pytest.raises(ParamsError, match=rf"p\.yaml: parameter 'steps\.evaluate\.{name}': .*out of range"):
        check_plan(tmp_path / "p.yaml", {"evaluate": {name: value}})
    check_plan(tmp_path / "p.yaml", {"evaluate": {"limit": None, "top_p": 1.0, "temperature": 0.0}})
