"""Synthesis: real outputs only, prefix CoT, code debugging, chat-format rows, statistics."""
import pytest

from mumath.executor import SandboxPool
from mumath.prompts import user_message
from mumath.synthesize import errors_fixed, has_prefix_cot, synthesis_stats, synthesize
from tests.test_tir import ScriptedBackend

QUESTION = {"id": "q1", "question": "What is 6 times 7?", "answer": "42", "source": "gsm8k/train"}
ALTERED = {"id": "q2", "question": "What is 6 times 8?", "answer": None, "source": "augment/alter",
           "seed_id": "q1", "method": "alter"}


class SynthTeacher(ScriptedBackend):
    identity = "scripted:synth"

    def format_prompt(self, messages):
        return messages[-1]["content"]


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(workers=2, timeout=3) as sandbox:
        yield sandbox


def test_code_nested_solution_with_debugging(pool):
    teacher = SynthTeacher({
        "What is 6 times 7?": [
            ("I multiply the two numbers with Python to be safe.\n```python\nprint(6 * seven)\n```\n```output\n42 (made up)", "stop"),
            ("The variable was undefined; fix it.\n```python\nprint(6 * 7)\n```\n", "stop"),
            ("So the answer is \\boxed{42}.", "eos")],
        "What is 6 times 8?": [("Directly: \\boxed{48}", "eos")],
    })
    rows, raw = synthesize(teacher, [QUESTION, ALTERED], pool, stage="tir", max_rounds=3)
    row = rows[0]
    solution = row["messages"][1]["content"]
    assert "made up" not in solution and "```output\nNameError: name 'seven' is not defined\n```" in solution
    assert "```output\n42\n```" in solution
    assert row["errors_fixed"] == 1 and row["execution_errors"] == 1 and row["prefix_cot"] is True
    assert row["correct"] is True and row["pred"] == "42" and row["rounds"] == 3
    assert row["messages"][0] == {"role": "user", "content": user_message(QUESTION["question"], "tir")}
    assert rows[1]["correct"] is None and rows[1]["method"] == "alter" and rows[1]["prefix_cot"] is False
    assert raw[0]["executions"][1]["output"] == "42"
    stats = synthesis_stats(rows)["tir"]
    assert stats["solutions"] == 2 and stats["errors_fixed"] == 1 and stats["boxed_share"] == 1.0
    assert stats["prefix_cot_share"] == 0.5 and stats["correct_share"] == 1.0


def test_cot_stage_never_executes(pool):
    teacher = SynthTeacher({"What is 6 times 7?": [("6 * 7 = 42, so \\boxed{42}", "eos"), ("\\boxed{41}", "eos")]})
    rows, _ = synthesize(teacher, [QUESTION], pool, stage="cot", samples=2)
    assert [r["correct"] for r in rows] == [True, False] and all(r["executions"] == 0 for r in rows)
    assert rows[0]["messages"][0]["content"] == user_message(QUESTION["question"], "cot")


def test_helpers():
    assert has_prefix_cot("Let me set up the equation for the total cost first.\n```python\nx\n```")
    assert not has_prefix_cot("```python\nx\n```")
    assert not has_prefix_cot("no code at all, only words and words and words here")
    ok, bad = {"error": None, "timed_out": False}, {"error": "E", "timed_out": False}
    assert errors_fixed([bad, ok]) == 1 and errors_fixed([ok, bad]) == 0 and errors_fixed([bad, bad, ok]) == 2


def test_unknown_stage(pool):
    with pytest.raises(ValueError, match="stage"):
        synthesize(SynthTeacher({}), [QUESTION], pool, stage="pal")
