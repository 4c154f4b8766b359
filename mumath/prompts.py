"""Prompts from template files (``mumath/prompts/``), as chat messages.

A mode (``tir``, ``cot``) is a template ``<mode>.txt`` holding ``{question}``, plus optional few-shot
examples ``fewshot_<mode>.jsonl`` (question, solution) given as earlier chat turns. A run may point
`prompt_dir` at its own folder of the same files. Backends turn the messages into their prompt kind
(`backend.format_prompt`): a chat-templated string, or chat messages for chat APIs.

A prompt format (`PROMPT_FORMATS`, parameter ``prompt_format``) is data: the prompt files and the chat
template one model is trained and evaluated with. ``chat`` is the project's own (system.txt + the
question template + the model's chat template, `FALLBACK_CHAT_TEMPLATE` for a base model);
``mumath`` (alias ``tora``) is the official MuMath-Code / ToRA one, ``<|user|>\n{question}\n<|assistant|>\n``
then the solution and EOS, so released checkpoints (MuMath-Code-L/CL, ToRA) are evaluated like for like.

BOS, one rule for every backend (`render_prompt`, `encode_prompt`): the prompt *text* never carries the
BOS token; the token ids are the text's tokens with BOS in front exactly when the tokenizer itself adds one
(``tokenizer(text)``: Llama, CodeLlama yes; SmolLM2, Qwen no). That is what vLLM's and SGLang's
``/v1/completions`` and llama.cpp do with a prompt string, what the local engines feed the model, and what
training tokenizes, so the ids trained on are the ids served.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from .records import read_jsonl

PROMPT_DIR = Path(__file__).with_name("prompts")
MODES = ("tir", "cot")
FORMAT_DIR = Path(__file__).with_name("prompt_formats")  # one folder of prompt files per named format

# For base models whose tokenizer has no chat template (Llama-2, Mistral base): plain turns, and the
# assistant turn ends with the EOS token, so generation stops where the model learned to stop. The
# template is saved with the trained model, so evaluation formats prompts the same way.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
    "{% else %}{{ 'Assistant:\\n' + message['content'] + eos_token }}{% if not loop.last %}{{ '\\n\\n' }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:\\n' }}{% endif %}")

# The official MuMath-Code training script's `_concat_messages(...).strip()` (ToRA's format): roles as
# tags, contents stripped, the assistant turn ends with EOS. No system turn (its prompt files have none).
MUMATH_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ '<|system|>\n' + message['content'] | trim + '\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ '<|user|>\n' + message['content'] | trim + '\n' }}"
    "{%- else -%}{{ '<|assistant|>\n' + message['content'] | trim + eos_token }}"
    "{%- if not loop.last -%}{{ '\n' }}{%- endif -%}"
    "{%- endif -%}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}")


@dataclass(frozen=True)
class PromptFormat:
    """What a model sees: its prompt files (None: mumath/prompts/) and chat template (None: the model's own)."""
    name: str
    prompt_dir: str = None
    chat_template: str = None


PROMPT_FORMATS = {
    "chat": PromptFormat("chat"),
    "mumath": PromptFormat("mumath", str(FORMAT_DIR / "mumath"), MUMATH_CHAT_TEMPLATE),
}
PROMPT_FORMATS["tora"] = PROMPT_FORMATS["mumath"]


def prompt_format(name):
    """The named `PromptFormat` (parameter ``prompt_format``), with an error that lists the names."""
    if isinstance(name, PromptFormat):
        return name
    if name not in PROMPT_FORMATS:
        raise ValueError(f"parameter 'prompt_format' is {name!r}; one of {sorted(PROMPT_FORMATS)}")
    return PROMPT_FORMATS[name]


def format_prompt_dir(name, prompt_dir=None):
    """The prompt files a run uses: its own `prompt_dir` if set, else its format's (None: mumath/prompts/)."""
    return prompt_dir or prompt_format(name).prompt_dir


def apply_prompt_format(tokenizer, name="chat"):
    """Give `tokenizer` the chat template of prompt format `name`; returns the tokenizer.

    ``chat`` keeps the model's own template and gives a template-less (base) tokenizer the fallback one,
    for training and evaluation alike (a released base checkpoint then evaluates instead of failing with
    "Cannot use chat template functions").
    """
    chosen = prompt_format(name)
    if chosen.chat_template is not None:
        tokenizer.chat_template = chosen.chat_template
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return tokenizer


def adds_bos(tokenizer):
    """Whether the tokenizer puts BOS in front of a text on its own (``tokenizer(text)``), as Llama's does."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    return tokenizer("x")["input_ids"][:1] == [bos] and tokenizer("x", add_special_tokens=False)["input_ids"][:1] != [bos]


def strip_bos_text(tokenizer, text):
    """`text` without a leading BOS string when the tokenizer adds BOS itself (a template that writes
    ``{{ bos_token }}`` would otherwise give two)."""
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and adds_bos(tokenizer):
        return text[len(bos):]
    return text


def render_prompt(tokenizer, messages, add_generation_prompt=True):
    """Chat messages -> the prompt text every backend sends (no BOS in the text; see the module doc)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return strip_bos_text(tokenizer, text)


def encode_prompt(tokenizer, text):
    """Prompt text -> token ids by the one BOS rule: BOS first exactly when the tokenizer adds one."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ([tokenizer.bos_token_id] if adds_bos(tokenizer) else []) + ids


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
