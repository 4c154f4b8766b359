"""`python -m mumath grade`: re-grading prediction files of each format (mumath/grade.py)."""
import json

import pytest

from mumath.grade import GradeError, grade_file
from mumath.records import read_jsonl
from mumath.runner import main


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def gsm8k(data_dir):
    from mumath.data import load_benchmark

    return load_benchmark("gsm8k", "test", data_dir, limit=3)


def tora_rows(gsm8k):
    a, b, c = gsm8k
    return [  # ToRA's evaluation output: idx, question, gt, gt_cot, code, pred, score
        {"idx": 0, "question": a["question"], "gt": a["answer"], "gt_cot": "...",
         "code": [f"Adding up gives \\boxed{{{a['answer']}.00}}."], "pred": [f"{a['answer']}.00"], "score": [False]},
        {"idx": 1, "question": b["question"], "gt": b["answer"], "gt_cot": "...",
         "code": [f"So the answer is \\boxed{{{b['answer']}}}."], "pred": [b["answer"]], "score": [True]},
        {"idx": 2, "question": c["question"], "gt": c["answer"], "gt_cot": "...",
         "code": ["I am not sure, maybe \\boxed{-1}."], "pred": ["-1"], "score": [False]},
    ]


def test_tora_format_lists_the_disagreements(tmp_path, gsm8k, data_dir, capsys):
    path = write(tmp_path / "tora.jsonl", tora_rows(gsm8k))
    code = main(["grade", str(path), "--format", "tora", "--benchmark", "gsm8k", "--data-dir", str(data_dir)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "accuracy (our grader): 2/3 = 66.7% [95% CI" in printed
    assert "accuracy (the file's verdicts): 1/3" in printed
    assert "disagreements: 1 (1 we accept and the file rejects, 0 the other way)" in printed
    assert "tora.jsonl:1 [0]" in printed
    verdicts = read_jsonl(tmp_path / "tora.jsonl.verdicts.jsonl")
    assert [v["correct"] for v in verdicts] == [True, True, False]
    assert [v["disagree"] for v in verdicts] == [True, False, False]
    assert all(v["gold_from"] == "benchmark" for v in verdicts)


def test_qwen_format_with_samples_reports_voting(tmp_path, gsm8k):
    a, b, _ = gsm8k
    rows = [{"idx": 0, "question": a["question"], "gt": a["answer"], "gt_cot": "",
             "code": [f"\\boxed{{{a['answer']}}}", "\\boxed{1}", f"\\boxed{{{a['answer']}}}"],
             "pred": [a["answer"], "1", a["answer"]], "score": [True, False, True]},
            {"idx": 1, "question": b["question"], "gt": b["answer"], "gt_cot": "",
             "code": ["\\boxed{2}", "\\boxed{2}", f"\\boxed{{{b['answer']}}}"],
             "pred": ["2", "2", b["answer"]], "score": [False, False, True]}]
    result, graded, _ = grade_file(write(tmp_path / "qwen.jsonl", rows), "qwen")
    assert result["accuracy"] == 0.5 and result["disagreements"] == 0 and result["gold_from_benchmark"] == 0
    assert result["voting"]["by_k"][3]["maj"] == 0.5 and result["voting"]["by_k"][3]["pass"] == 1.0
    # extracted answers instead of generations
    result, _, _ = grade_file(tmp_path / "qwen.jsonl", "qwen", answers_only=True)
    assert result["accuracy"] == 0.5


def test_mumath_trajectories_gather_samples(tmp_path, gsm8k):
    a = gsm8k[0]
    rows = [{"id": a["id"], "sample": s, "question": a["question"], "answer": a["answer"], "generation": g,
             "pred": None, "correct": c}
            for s, (g, c) in enumerate([(f"\\boxed{{{a['answer']}}}", True), ("no answer here", True)])]
    result, graded, _ = grade_file(write(tmp_path / "t.jsonl", rows), "mumath")
    assert result["n"] == 1 and result["correct"] == 1 and len(graded[0]["samples"]) == 2
    assert graded[0]["samples"][1]["correct"] is False and graded[0]["samples"][1]["file_verdict"] is True
    assert result["voting"]["by_k"][2]["pass"] == 1.0


def test_generic_jsonl_with_named_fields_and_benchmark_gold(tmp_path, gsm8k, data_dir):
    a, b, _ = gsm8k
    rows = [{"problem": a["question"], "response": f"The answer is {a['answer']}.", "label": "999"},
            {"problem": b["question"], "response": "The answer is 0.", "label": b["answer"]}]
    path = write(tmp_path / "mine.jsonl", rows)
    fields = {"question": "problem", "prediction": "response", "gold": "label"}
    result, graded, out = grade_file(path, "jsonl", fields=fields, out=tmp_path / "v.jsonl")
    assert result["correct"] == 0 and "file_n" not in result  # the file's gold 999 is wrong, no verdicts
    result, graded, out = grade_file(path, "jsonl", benchmark="gsm8k", data_dir=data_dir, fields=fields)
    assert result["correct"] == 1 and graded[0]["gold"] == a["answer"] and graded[0]["file_gold"] == "999"


def test_bad_files_name_the_line(tmp_path, capsys):
    path = write(tmp_path / "bad.jsonl", [{"idx": 0, "question": "q", "gt": "1", "code": ["\\boxed{1}"]},
                                          {"idx": 1, "gt": "2", "code": ["\\boxed{2}"]}])
    with pytest.raises(GradeError, match=r"bad.jsonl:2: field 'question' missing"):
        grade_file(path, "tora")
    nogold = write(tmp_path / "nogold.jsonl", [{"question": "q", "prediction": "1"}])
    assert main(["grade", str(nogold), "--format", "jsonl"]) == 2
    assert "nogold.jsonl:1: no gold answer" in capsys.readouterr().err
