"""The ablation summary (`mumath/ablation.py`): finish reasons, paired tests, the summary.json writer."""
import gzip
import json

import pytest

from mumath.ablation import (FINISH_REASONS, AblationError, export, finish_reason, paired_test,
                             problems_for_power)


def row(id_, correct, mode="tir", pred="1", finish="eos", executions=None):
    if executions is None:
        executions = [{"error": None, "timed_out": False}] if mode == "tir" else []
    return {"id": id_, "sample": 0, "correct": correct, "mode": mode, "pred": pred, "finish": finish,
            "executions": executions, "fingerprint": "f"}


def test_finish_reasons_name_why_a_trajectory_ended():
    assert finish_reason(row(1, False, executions=[])) == "no_code"
    assert finish_reason(row(1, True, mode="cot")) == "answered"
    assert finish_reason(row(1, False, pred=None, finish="length")) == "truncated"
    assert finish_reason(row(1, False, pred=None, executions=[{"error": "x", "timed_out": True}])) == "timeout"
    assert finish_reason(row(1, False, pred=None, executions=[{"error": "NameError", "timed_out": False}])) \
        == "code_error"
    assert finish_reason(row(1, False, pred=None)) == "no_answer"


def test_paired_test_separates_a_clear_difference_and_reports_a_null_with_power():
    first = [1] * 40 + [0] * 60
    second = [0] * 40 + [0] * 60
    clear = paired_test(first, second)
    assert clear["difference"] == 0.4 and clear["p_value"] < 1e-6 and clear["verdict"] == "first better"
    assert clear["ci95"][0] > 0.25 and clear["ci95"][1] < 0.55
    same = [1, 0] * 50
    swapped = [0, 1] * 2 + [1, 0] * 48  # 2 discordant each way: no difference
    null = paired_test(same, swapped)
    assert null["difference"] == 0 and null["p_value"] == 1.0 and null["verdict"].startswith("null")
    assert null["problems_for_80pct_power"] > 100 and "paired problems" in null["power_note"]
    # mirrored: the sign flips, the p-value does not
    mirrored = paired_test(second, first)
    assert mirrored["difference"] == -0.4 and mirrored["p_value"] == clear["p_value"]
    assert mirrored["verdict"] == "second better"


def test_problems_for_power_shrinks_with_the_effect():
    assert problems_for_power(0.3, 0.05) > problems_for_power(0.3, 0.15) > problems_for_power(0.3, 0.3)


def write_cell(run_dir, step, benchmark, mode, outcomes):
    folder = run_dir / step / benchmark / mode
    folder.mkdir(parents=True)
    rows = [row(f"{benchmark}-{index}", bool(correct), mode=mode) for index, correct in enumerate(outcomes)]
    rows.append(dict(row(f"{benchmark}-0", True, mode=mode), fingerprint="old"))  # another configuration
    (folder / "trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = {"benchmark": benchmark, "mode": mode, "n": len(outcomes), "fingerprint": "f"}
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_export_writes_cells_comparisons_and_training_rows(tmp_path):
    run = tmp_path / "run"
    for step, outcomes in (("evaluate.base", [0] * 30), ("evaluate.two_stage", [1] * 12 + [0] * 18)):
        for mode in ("cot", "tir"):
            write_cell(run, step, "gsm8k", mode, outcomes)
    for stage, rows in (("stage1", 1200), ("stage2", 1100)):
        (run / stage).mkdir()
        (run / stage / "stats.json").write_text(json.dumps({"examples": {"examples": rows}, "tokens_per_second": 80.0}))
    (run / "manifest.json").write_text("{}")
    summary = export(run, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["training_rows"] == {"stage1": 1200, "stage2": 1100}
    cell = next(c for c in saved["cells"] if c["model"] == "two_stage" and c["mode"] == "tir")
    assert (cell["n"], cell["correct"]) == (30, 12), "the other configuration's row is not counted"
    assert set(cell["finish_reasons"]) == set(FINISH_REASONS) and cell["finish_reasons"]["answered"] == 1.0
    assert cell["ci95"][0] < 0.4 < cell["ci95"][1]
    trained = next(c for c in saved["comparisons"] if c["comparison"] == "trained vs base (TIR)")
    assert trained["difference"] == 0.4 and trained["verdict"] == "first better"
    assert any(c["comparison"] == "TIR vs CoT (base)" for c in saved["comparisons"])
    with gzip.open(tmp_path / "out" / "trajectories" / "two_stage-gsm8k-tir.jsonl.gz", "rt") as file:
        assert len(file.read().splitlines()) == 31
    assert (tmp_path / "out" / "accuracy.png").exists() and summary["figure"] == "accuracy.png"


def test_a_run_without_evaluations_fails_clearly(tmp_path):
    with pytest.raises(AblationError, match="no evaluation metrics"):
        export(tmp_path, tmp_path / "out")


def test_holdout_problems_are_never_training_seeds(tmp_path):
    from mumath.ablation import write_holdout
    from mumath.data import load_many

    out, used = write_holdout(tmp_path / "holdout.jsonl", seeds_per_benchmark=300, problems=50)
    held = [json.loads(line) for line in out.read_text().splitlines()]
    seeds = {record["id"] for record in load_many(["gsm8k:train"], "train", None, 300, 0)}
    assert used == 300 and len(held) == 50 and not seeds & {row["id"] for row in held}
    assert all("####" in row["answer"] for row in held)
