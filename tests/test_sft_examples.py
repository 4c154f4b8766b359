"""Steps 4-5 data: one format for training and evaluation, and a loss mask exact to the token."""
import types

import pytest

from mumath.backends import TransformersBackend
from mumath.executor import SandboxPool
from mumath.models import load_tokenizer
from mumath.prompts import build_messages, user_message
from mumath.sft_examples import (IGNORE, FALLBACK_CHAT_TEMPLATE, TrainingDataError, build_examples,
                          execution_output_spans, load_rows, mask_example, show_mask)

# GSM8K train #0, solved the way a code-nested solution is: text, code, its real output, a failed block
# (a NameError that the interpreter reports), the corrected block, the answer.
QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")
TURNS = [
    "Natalia sold 48 clips in April and half as many in May, so May is 48 / 2. Let me compute both.\n"
    "```python\napril = 48\nmay = april // 2\nprint(may)\n```\n```output\nFAKE",
    "She sold 24 in May. The total is April plus May.\n```python\nprint(total)\n```\n```output\n",
    "I forgot to define the total first.\n```python\ntotal = 48 + 48 // 2\nprint(total)\n```\n```output\n",
    "Natalia sold \\boxed{72} clips altogether in April and May.",
]


@pytest.fixture(scope="module")
def tokenizer(embedded_dir):
    tokenizer = load_tokenizer(str(embedded_dir))
    tokenizer.padding_side = "right"
    return tokenizer


@pytest.fixture(scope="module")
def real_row():
    """A code-nested solution run through the real tool loop and sandbox, in synthesize's row format."""
    from mumath.backends import Completion, Sampling, cut_at_stop
    from mumath.tir import run_tool_loop

    class Scripted:
        def __init__(self):
            self.turns = list(TURNS)

        def complete(self, prompts, sampling, stop=(), on_result=None):
            text, stopped = cut_at_stop(self.turns.pop(0), stop)
            return [Completion(text, "stop" if stopped else "eos", 1, 1)]

    with SandboxPool(workers=1, timeout=5) as pool:
        [trajectory] = run_tool_loop(Scripted(), ["p"], pool, Sampling(), max_rounds=4)
    assert [e["output"] for e in trajectory.executions] == [
        "24", "NameError: name 'total' is not defined", "72"]
    return {"id": "gsm8k-train-0/tir/0", "question": QUESTION, "stage": "tir",
            "messages": [{"role": "user", "content": user_message(QUESTION, "tir")},
                         {"role": "assistant", "content": trajectory.generation.strip()}]}


def model_written(solution, end_of_turn):
    """The characters the model wrote: the solution minus each output body and its closing fence."""
    pieces, position = [], 0
    for begin, stop in execution_output_spans(solution):
        pieces.append(solution[position:begin])
        position = stop
    return "".join(pieces) + solution[position:] + end_of_turn


def test_loss_mask_is_token_exact_on_a_real_sample(tokenizer, real_row):
    solution = real_row["messages"][-1]["content"]
    example = mask_example(tokenizer, build_messages(QUESTION, "tir", solution=solution))
    ids, labels = example["input_ids"], example["labels"]
    print("\n" + show_mask(tokenizer, example))  # [brackets] = tokens that carry loss

    targets = [token for token, label in zip(ids, labels) if label != IGNORE]
    assert tokenizer.decode(targets) == model_written(solution, tokenizer.eos_token)
    # Each boundary, token by token: the marker is learned, its output is not, the text after it is.
    text = tokenizer.decode(ids)
    for marker_at in [i for i in range(len(ids)) if tokenizer.decode(ids[i:i + 3]) == "```output\n"]:
        after_marker = marker_at + 3
        assert all(label != IGNORE for label in labels[marker_at:after_marker]), "the stop marker is a target"
        assert labels[after_marker] == IGNORE, "the first output token is the interpreter's"
    closes = [i for i in range(len(ids)) if labels[i] == IGNORE and i + 1 < len(ids) and labels[i + 1] != IGNORE
              and tokenizer.decode(ids[:i + 1]).endswith("```\n") and i > 0 and labels[i - 1] == IGNORE
              and "```output" in tokenizer.decode(ids[max(0, i - 40):i])]
    assert len(closes) == 3, "each closing fence is masked and the next token is a target"
    # Prompt masked, first answer token learned, end of turn learned, the newline after it not.
    first = labels.index(next(label for label in labels if label != IGNORE))
    assert tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(ids[first:first + 1]) == solution[:len(tokenizer.decode(ids[first:first + 1]))]
    end = ids.index(tokenizer.eos_token_id, first)
    assert labels[end] == tokenizer.eos_token_id and all(label == IGNORE for label in labels[end + 1:])
    assert text.count("```output\n") == 3


def test_a_token_straddling_a_boundary_carries_no_loss(tokenizer):
    # "\n\n" after the closing fence is one token, half interpreter, half model: it is not trained on.
    solution = "Compute.\n```python\nprint(1)\n```\n```output\n1\n```\n\nSo \\boxed{1}."
    example = mask_example(tokenizer, build_messages("q", "tir", solution=solution))
    shown = show_mask(tokenizer, example)
    assert "[```][output][\n]1\n```\n\n[So]" in shown or "[```][output][\n]1\n```" in shown, shown


def test_training_and_evaluation_share_one_format_token_for_token(tokenizer, real_row):
    backend = TransformersBackend(types.SimpleNamespace(name_or_path="embedded"), tokenizer)
    for mode in ("tir", "cot"):
        evaluation = backend.format_prompt(build_messages(QUESTION, mode))
        eval_ids = tokenizer(evaluation, add_special_tokens=False)["input_ids"]
        [example], _ = build_examples([real_row], tokenizer, mode)
        assert example["input_ids"][:len(eval_ids)] == eval_ids, f"{mode}: training prompt != evaluation prompt"
        assert all(label == IGNORE for label in example["labels"][:len(eval_ids)])
        assert example["labels"][len(eval_ids)] != IGNORE, "the first answer token right after the prompt"
    tokenizer.padding_side = "right"


def test_cot_rows_have_no_masked_outputs_and_stats_count(tokenizer):
    rows = [{"question": "What is 2 + 3?", "messages": [{"role": "user", "content": "x"},
                                                          {"role": "assistant", "content": "2 + 3 = 5. \\boxed{5}"}]},
            {"question": "long", "messages": [{"role": "assistant", "content": "word " * 3000}]},
            {"question": "empty", "messages": [{"role": "assistant", "content": "  "}]}]
    examples, stats = build_examples(rows, tokenizer, "cot", max_length=512)
    assert (stats.examples, stats.dropped_too_long, stats.dropped_empty, stats.masked_output_tokens) == (1, 1, 1, 0)
    assert stats.target_tokens == sum(label != IGNORE for label in examples[0]["labels"])


def test_bad_rows_name_the_file_and_line(tmp_path, tokenizer):
    with pytest.raises(TrainingDataError, match=r"data.jsonl:2: field 'question'"):
        build_examples([{"question": "a", "messages": [{"role": "assistant", "content": "b"}]}, {"messages": []}],
                       tokenizer, "cot", source="data.jsonl")
    broken = tmp_path / "rows.jsonl"
    broken.write_text('{"question": "a"}\n{not json\n')
    with pytest.raises(TrainingDataError, match=r"rows.jsonl:2: not valid JSON"):
        load_rows(broken)
    with pytest.raises(FileNotFoundError, match="filter step"):
        load_rows(tmp_path / "missing.jsonl")


def test_fallback_template_ends_the_turn_with_eos(tokenizer):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    plain.chat_template = FALLBACK_CHAT_TEMPLATE
    example = mask_example(plain, build_messages("What is 1 + 1?", "cot", solution="\\boxed{2}"))
    targets = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE]
    assert plain.decode(targets) == "\\boxed{2}" + plain.eos_token
