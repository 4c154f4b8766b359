"""SFT examples for steps 4-5: chat rows -> pre-tokenized `input_ids` + `labels` with the loss mask.

The conversation is rebuilt from the row's `question` and its assistant turn by `prompts.build_messages`,
the function evaluation uses for its prompts: system turn, question template and chat template are the
ones the trained model will be evaluated with (a test holds the two equal token for token).

Loss mask (labels = -100 where the model is not trained):
- the prompt (system and user turns, up to and including the assistant header);
- every execution output: the text after "```output\\n" up to and including its closing "```\\n" (the
  interpreter writes it, not the model). The marker "```output\\n" stays a target: the model must learn to
  write the stop string. The end-of-turn token stays a target: the model must learn to stop.
The mask is built on characters, then mapped to tokens through the tokenizer's offsets (one tokenization
of the whole text): a token carries loss only when every character it covers is model-written. Prefix
re-tokenization (the official MuMath-Code script) can drift by a token at each boundary; offsets cannot.
"""
from dataclasses import dataclass, field
from pathlib import Path

from .prompts import FALLBACK_CHAT_TEMPLATE, adds_bos, build_messages, render_prompt  # noqa: F401
from .records import RecordsError, read_jsonl
from .tir import OUTPUT_MARKER

IGNORE = -100
OUTPUT_OPEN = OUTPUT_MARKER + "\n"   # model-written: a target
OUTPUT_CLOSE = "```\n"               # interpreter-written, with the output before it: masked


class TrainingDataError(ValueError):
    pass


def execution_output_spans(text, start=0, end=None):
    """[(begin, end)) character spans of execution outputs in text[start:end], closing fence included.

    An output opened but never closed (a solution cut at the token budget) is masked to the end.
    """
    end = len(text) if end is None else end
    spans, position = [], start
    while True:
        opened = text.find(OUTPUT_OPEN, position, end)
        if opened < 0:
            return spans
        begin = opened + len(OUTPUT_OPEN)
        closed = text.find(OUTPUT_CLOSE, begin, end)
        # an empty output is "```output\n\n```\n": the close may start at `begin` or after one newline
        stop = end if closed < 0 else closed + len(OUTPUT_CLOSE)
        spans.append((begin, stop))
        position = stop


def target_characters(text, prompt_end, turn_end):
    """Per character of `text`: True where the model wrote it (assistant turn minus execution outputs)."""
    target = [False] * len(text)
    for index in range(prompt_end, turn_end):
        target[index] = True
    for begin, stop in execution_output_spans(text, prompt_end, turn_end):
        for index in range(begin, stop):
            target[index] = False
    return target


def conversation_text(tokenizer, messages):
    """(full text, where the assistant's content starts, where its end-of-turn marker ends)."""
    prompt = render_prompt(tokenizer, messages[:-1], add_generation_prompt=True)
    text = render_prompt(tokenizer, messages, add_generation_prompt=False)
    if not text.startswith(prompt):
        raise TrainingDataError("the chat template renders the prompt differently with and without the answer; "
                                "training and evaluation would not share one format")
    content = messages[-1]["content"]
    content_at = text.find(content, len(prompt))
    if content_at != len(prompt):
        raise TrainingDataError("the chat template changes the assistant turn's text (e.g. strips it)")
    content_end = content_at + len(content)
    # The end-of-turn marker: what the template puts after the content, up to trailing whitespace
    # (SmolLM2 / Qwen: "<|im_end|>" then "\n"; the newline is not part of the model's turn).
    suffix = text[content_end:]
    turn_end = content_end + len(suffix.rstrip())
    return text, len(prompt), turn_end


def mask_example(tokenizer, messages):
    """Chat messages ending with the assistant turn -> {input_ids, labels, ...} (one tokenization)."""
    text, prompt_end, turn_end = conversation_text(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
    if adds_bos(tokenizer):  # the one BOS rule (prompts.encode_prompt): BOS where the tokenizer adds it
        ids, offsets = [tokenizer.bos_token_id] + ids, [(0, 0)] + offsets
    target = target_characters(text, prompt_end, turn_end)
    labels, masked_outputs = [], 0
    for token, (begin, end) in zip(ids, offsets):
        covered = target[begin:end]
        labels.append(token if covered and all(covered) else IGNORE)
        masked_outputs += labels[-1] == IGNORE and prompt_end <= begin and end <= turn_end
    return {"input_ids": ids, "labels": labels, "masked_output_tokens": masked_outputs}


def assistant_content(row, where):
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages or messages[-1].get("role") != "assistant":
        raise TrainingDataError(f"{where}: field 'messages' must end with an assistant turn")
    return messages[-1]["content"]


@dataclass
class DatasetStats:
    rows: int = 0
    examples: int = 0
    dropped_too_long: int = 0
    dropped_empty: int = 0
    tokens: int = 0
    target_tokens: int = 0
    masked_output_tokens: int = 0
    rows_with_outputs: int = 0
    longest: int = 0
    dropped_ids: list = field(default_factory=list)

    def to_dict(self):
        data = dict(self.__dict__)
        data["dropped_ids"] = data["dropped_ids"][:20]
        return data


def build_examples(rows, tokenizer, mode, max_length=2048, prompt_dir=None, source="rows"):
    """Chat-format rows (synthesize / filter output) -> (SFT examples, DatasetStats).

    A row longer than `max_length` tokens is dropped, not truncated: a cut solution would teach the
    model to run on past its end-of-turn. `source` names the file in error messages.
    """
    examples, stats = [], DatasetStats()
    for line, row in enumerate(rows, 1):
        where = f"{source}:{line}"
        stats.rows += 1
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise TrainingDataError(f"{where}: field 'question' is missing or empty")
        solution = assistant_content(row, where).strip()
        if not solution:
            stats.dropped_empty += 1
            continue
        example = mask_example(tokenizer, build_messages(row["question"], mode, prompt_dir=prompt_dir,
                                                         solution=solution))
        length = len(example["input_ids"])
        if length > max_length:
            stats.dropped_too_long += 1
            stats.dropped_ids.append(row.get("id", line))
            continue
        targets = sum(label != IGNORE for label in example["labels"])
        stats.examples += 1
        stats.tokens += length
        stats.target_tokens += targets
        stats.longest = max(stats.longest, length)
        stats.masked_output_tokens += example["masked_output_tokens"]
        if OUTPUT_OPEN in solution:
            stats.rows_with_outputs += 1
        examples.append({"input_ids": example["input_ids"], "labels": example["labels"]})
    return examples, stats


def load_rows(path):
    """Rows of a chat-format JSONL; a broken line fails with file:line (nothing is silently skipped)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"training data {path} does not exist (run the filter step, or set parameter "
                                "'data' to a chat-format JSONL such as <run>/synthesize/cot.jsonl)")
    try:
        rows = read_jsonl(path)
    except RecordsError as error:
        raise TrainingDataError(str(error)) from error
    if not rows:
        raise TrainingDataError(f"{path}: no rows to train on")
    return rows


def show_mask(tokenizer, example, start=0, end=None):
    """Human-readable view: each token, with [brackets] where it carries loss (tests and notebooks)."""
    pieces = []
    for token, label in list(zip(example["input_ids"], example["labels"]))[start:end]:
        text = tokenizer.decode([token])
        pieces.append(f"[{text}]" if label != IGNORE else text)
    return "".join(pieces)


def preview(data, tokenizer, mode, prompt_dir=None, want_output=False, max_rows=200):
    """The loss mask of one real row of `data` (the first with an execution output when `want_output`)."""
    rows = load_rows(data)[:max_rows]
    row = next((r for r in rows if OUTPUT_OPEN in assistant_content(r, data)), rows[0]) if want_output else rows[0]
    messages = build_messages(row["question"], mode, prompt_dir=prompt_dir,
                              solution=assistant_content(row, data).strip())
    return show_mask(tokenizer, mask_example(tokenizer, messages))


def ensure_chat_template(tokenizer):
    """Give a template-less (base model) tokenizer the fallback template; returns whether it did."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return True
