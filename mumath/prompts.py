"""Prompts from template files (``mumath/prompts/``), as chat messages.

A mode (``tir``, ``cot``) is a template ``<mode>.txt`` holding ``{question}``, plus optional few-shot
examples ``fewshot_<mode>.jsonl`` (question, solution) given as earlier chat turns. A run may point
`prompt_dir` at its own folder of the same files. Backends turn the messages into their prompt kind
(`backend.format_prompt`): a chat-templated string, or chat messages for chat APIs.
"""
import json
from pathlib import Path

from .records import read_jsonl

PROMPT_DIR = Path(__file__).with_name("prompts")
MODES = ("tir", "cot")


def read_template(mode, prompt_dir=None):
    path = Path(prompt_dir or PROMPT_DIR) / f"{mode}.txt"
    if not path.exists():
        raise FileNotFoundError(f"no prompt template {path} for mode '{mode}' (modes: {', '.join(MODES)})")
    return path.read_text().strip()


def read_fewshot(mode, prompt_dir=None):
    path = Path(prompt_dir or PROMPT_DIR) / f"fewshot_{mode}.jsonl"
    if not path.exists():
        return []
    return read_jsonl(path)


def read_system(prompt_dir=None):
    path = Path(prompt_dir or PROMPT_DIR) / "system.txt"
    return path.read_text().strip() if path.exists() else None


def user_message(question, mode, prompt_dir=None):
    # str.replace, not str.format: questions are full of LaTeX braces.
    return read_template(mode, prompt_dir).replace("{question}", question)


def build_messages(question, mode, few_shot=0, prompt_dir=None, template=None, solution=None):
    """Chat messages for one problem: system, `few_shot` solved examples, then the question.

    `template` names another template file (e.g. ``synth_tir``) for the question turn; the examples
    stay those of `mode`. With `solution`, the conversation ends with it as the assistant turn: that is
    an SFT row (steps 4-5), built by this same function so that training and evaluation see one format.
    """
    system = read_system(prompt_dir)
    messages = [{"role": "system", "content": system}] if system else []
    examples = read_fewshot(mode, prompt_dir)
    if few_shot > len(examples):
        raise ValueError(f"parameter 'few_shot' is {few_shot} but mode '{mode}' has {len(examples)} examples")
    for example in examples[:few_shot]:
        messages.append({"role": "user", "content": user_message(example["question"], mode, prompt_dir)})
        messages.append({"role": "assistant", "content": example["solution"]})
    messages.append({"role": "user", "content": user_message(question, template or mode, prompt_dir)})
    if solution is not None:
        messages.append({"role": "assistant", "content": solution})
    return messages


def prompt_files_fingerprint(mode, few_shot=0, prompt_dir=None):
    """sha256 (16 hex) of what the prompt of `mode` is built from: system, template, the examples used."""
    import hashlib

    parts = [read_system(prompt_dir) or "", read_template(mode, prompt_dir),
             json.dumps(read_fewshot(mode, prompt_dir)[:few_shot], sort_keys=True, ensure_ascii=False)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
