"""Augmentation: FOBAR built from the seed, parsers and validators, provenance, datasets-loadable output."""
import random

import pytest

from mumath.augment import (FOBAR_SUFFIX, InvalidOutput, after_label, augment, augment_stats, mask_number,
                            parse_teacher_fobar, validate_alter, validate_bf_trans, validate_rephrase)
from mumath.backends import Completion, Sampling
from mumath.teacher import Teacher

SEED = {"id": "gsm8k/train/0", "question": "Natalia sold clips to 48 of her friends in April, and then she sold "
        "half as many clips in May. How many clips did Natalia sell altogether in April and May?", "answer": "72"}


def test_fobar_masks_one_number_deterministically():
    question, value = mask_number(SEED["question"], "72", random.Random(0))
    assert value == "48" and "X of her friends" in question
    assert question.endswith(FOBAR_SUFFIX.format(answer="72"))
    assert mask_number(SEED["question"], "72", random.Random(0)) == (question, value)
    assert mask_number("How many legs does a spider have?", "8", random.Random(0)) is None


def test_fobar_never_masks_inside_words_or_latex_commands():
    question, value = mask_number("The 3rd term of $x_2$ is 7.", "1", random.Random(0))
    assert value == "7" and "3rd" in question and "x_2" in question


@pytest.mark.parametrize("reply,expected", [
    ("Rephrased question: How many apples?", "How many apples?"),
    ('"How many apples?"\n\nExplanation: ...', "How many apples?"),
    ("Sure! Rephrased question: A?\n\nB", "A?"),
])
def test_after_label(reply, expected):
    assert after_label(reply, "Rephrased question:") == expected


def test_after_label_rejects_empty():
    with pytest.raises(InvalidOutput):
        after_label("   \n ", "New question:")


def test_rephrase_must_keep_every_number():
    validate_rephrase("In April Natalia sold clips to 48 friends; in May half as many. How many in total?",
                      SEED["question"])
    with pytest.raises(InvalidOutput, match="numbers changed"):
        validate_rephrase("Natalia sold clips to 50 friends in April and half as many in May. Total?", SEED["question"])
    with pytest.raises(InvalidOutput, match="identical"):
        validate_rephrase(SEED["question"], SEED["question"])


def test_alter_and_bf_trans_validators():
    validate_alter("Natalia sold clips to 60 friends in April and a third as many in May. Total?", SEED["question"])
    with pytest.raises(InvalidOutput, match="no number"):
        validate_alter("Natalia sold some clips in April and some in May. How many in total overall?", SEED["question"])
    with pytest.raises(InvalidOutput, match="unknown X"):
        validate_bf_trans("She sold X clips. What is X?", "Natalia sold X clips " * 3)


def test_teacher_fobar_reply_parsing():
    question, value = parse_teacher_fobar("Masked question: A spider has X legs. How many?\nX = 8",
                                          "Masked question:", "8")
    assert value == "8" and question.startswith("A spider has X legs.")
    with pytest.raises(InvalidOutput, match="X = <number>"):
        parse_teacher_fobar("Masked question: A spider has X legs.", "Masked question:", "8")


class MethodTeacher:
    """Answers each augmentation prompt by its method (an in-process teacher; HTTP has its own tests)."""

    identity = "scripted:augment"

    def format_prompt(self, messages):
        return messages[-1]["content"]

    def complete(self, prompts, sampling, stop=(), on_result=None):
        replies = []
        for prompt in prompts:
            if prompt.startswith("Rephrase"):
                text = "Rephrased question: In April Natalia sold clips to 48 friends, in May half as many. Total?"
            elif prompt.startswith("Write a new"):
                text = "New question: Natalia sold clips to 30 friends in April and twice as many in May. Total?"
            elif prompt.startswith("The following question hides"):
                text = "New question: Natalia sold some clips in April and half as many in May, 72 in all. How many in April?"
            else:
                text = "Masked question: A spider has X legs.\nX = 8"
            replies.append(Completion(text, "eos", 10, 10))
            if on_result:
                on_result(len(replies) - 1, replies[-1])
        return replies


def test_augment_keeps_provenance_and_answers(tmp_path):
    no_number = {"id": "s2", "question": "How many legs does a spider have in total?", "answer": "8"}
    teacher = Teacher(MethodTeacher(), tmp_path / "cache.jsonl")
    methods = {"rephrase": 1, "alter": 1, "fobar": 1, "bf_trans": 1}
    records, rejected = augment([SEED, no_number], teacher, methods, Sampling(temperature=0.7))
    by = {(r["seed_id"], r["method"]): r for r in records}
    assert by[(SEED["id"], "rephrase")]["answer"] == "72"
    assert by[(SEED["id"], "alter")]["answer"] is None, "an altered question's answer is unknown"
    assert by[(SEED["id"], "fobar")]["answer"] == "48" and by[(SEED["id"], "fobar")]["teacher"] == "deterministic"
    assert by[("s2", "fobar")]["teacher"] == "scripted:augment", "no number to mask: the teacher masks"
    assert by[(SEED["id"], "bf_trans")]["answer"] == "48"
    for record in records:
        assert {"id", "question", "answer", "source", "seed_id", "method", "teacher", "prompt_hash", "meta"} <= set(record)
    # s2's rephrase/alter replies are about Natalia: numbers differ from the seed -> rejected, with a reason
    assert {(r["seed_id"], r["method"]) for r in rejected} >= {("s2", "rephrase")}
    stats = augment_stats([SEED, no_number], methods, records, rejected)
    assert stats["rephrase"]["kept"] == 1 and stats["rephrase"]["parseable_share"] == 0.5


def test_unknown_method_is_named(tmp_path):
    with pytest.raises(ValueError, match="paraphrase"):
        augment([SEED], Teacher(MethodTeacher(), tmp_path / "c.jsonl"), {"paraphrase": 1})


def test_output_loads_with_datasets(tmp_path):
    from datasets import load_dataset

    from mumath.records import write_jsonl

    records, _ = augment([SEED], Teacher(MethodTeacher(), tmp_path / "c.jsonl"),
                         {"rephrase": 1, "alter": 1, "fobar": 1, "bf_trans": 1})
    write_jsonl(tmp_path / "questions.jsonl", records)
    dataset = load_dataset("json", data_files=str(tmp_path / "questions.jsonl"), split="train",
                           cache_dir=str(tmp_path / "hf"))
    assert len(dataset) == 4 and set(dataset["method"]) == {"rephrase", "alter", "fobar", "bf_trans"}
