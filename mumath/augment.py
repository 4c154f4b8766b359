"""Question augmentation (step 1): rephrasing, question alteration, FOBAR and BF-Trans.

A method is a registry entry: a prompt template file (``mumath/prompts/augment_<method>.txt``), a parser
that pulls the new question out of the teacher's reply, and a validator. FOBAR is built deterministically
from the seed (a number of the question becomes X) and asks the teacher only when the question has no
number to mask. BF-Trans rewrites FOBAR questions into forward questions that ask for the masked number.

Every new question keeps its provenance: `seed_id`, `method`, `teacher`, `prompt_hash` (of the template),
and its known `answer` (None after alteration, where the answer is unknown until synthesis votes on it).
"""
import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .backends import Sampling
from .grading import normalize
from .prompts import PROMPT_DIR

FOBAR_SUFFIX = "If we know the answer to the above question is {answer}, what is the value of unknown variable X?"
# A number written as digits, not part of a word, a LaTeX command or a longer number.
NUMBER = re.compile(r"(?<![\w\\.])\d+(?:,\d{3})*(?:\.\d+)?(?![\w.]?\d)(?![A-Za-z])")


class InvalidOutput(ValueError):
    pass


@dataclass
class Method:
    name: str
    template: str  # prompt file name under the prompt folder
    label: str  # the line the teacher's answer follows
    known_answer: bool  # does the new question keep a known answer?


METHODS = {
    "rephrase": Method("rephrase", "augment_rephrase.txt", "Rephrased question:", True),
    "alter": Method("alter", "augment_alter.txt", "New question:", False),
    "fobar": Method("fobar", "augment_fobar.txt", "Masked question:", True),
    "bf_trans": Method("bf_trans", "augment_bf_trans.txt", "New question:", True),
}


def read_method_template(method, prompt_dir=None):
    path = Path(prompt_dir or PROMPT_DIR) / METHODS[method].template
    if not path.exists():
        raise FileNotFoundError(f"augmentation method '{method}' needs its prompt template {path}")
    return path.read_text().strip()


def template_hash(template):
    return hashlib.sha256(template.encode()).hexdigest()[:16]


def fill(template, question, answer=""):
    return template.replace("{question}", question).replace("{answer}", str(answer))


def numbers_in(text):
    return [normalize_number(match.group()) for match in NUMBER.finditer(text)]


def normalize_number(text):
    return text.replace(",", "").rstrip("0").rstrip(".") if "." in text else text.replace(",", "")


def after_label(text, label):
    """The teacher's new question: what follows the label (if echoed), first paragraph, unquoted."""
    if label.lower() in text.lower():
        text = text[text.lower().rindex(label.lower()) + len(label):]
    paragraphs = [p.strip() for p in text.strip().split("\n\n") if p.strip()]
    if not paragraphs:
        raise InvalidOutput("empty reply")
    return paragraphs[0].strip().strip('"').strip()


def validate_rephrase(new, seed):
    if normalize(new).lower() == normalize(seed).lower():
        raise InvalidOutput("identical to the seed")
    if Counter(numbers_in(new)) != Counter(numbers_in(seed)):
        raise InvalidOutput(f"numbers changed: {sorted(numbers_in(seed))} -> {sorted(numbers_in(new))}")
    _check_length(new, seed)


def validate_alter(new, seed):
    if normalize(new).lower() == normalize(seed).lower():
        raise InvalidOutput("identical to the seed")
    if not re.search(r"\d", new):
        raise InvalidOutput("no number in the altered question")
    _check_length(new, seed)


def validate_bf_trans(new, fobar_question):
    if re.search(r"\bX\b", new) or "unknown variable" in new.lower():
        raise InvalidOutput("still mentions the unknown X")
    _check_length(new, fobar_question)


def _check_length(new, seed):
    if not 0.3 * len(seed) <= len(new) <= 3 * len(seed) + 200:
        raise InvalidOutput(f"implausible length {len(new)} for a seed of {len(seed)}")


def mask_number(question, answer, rng):
    """FOBAR without a teacher: one number of the question becomes X. None if there is no number."""
    matches = list(NUMBER.finditer(question))
    if not matches:
        return None
    match = rng.choice(matches)
    masked = question[:match.start()] + "X" + question[match.end():]
    return f"{masked.rstrip()} {FOBAR_SUFFIX.format(answer=answer)}", normalize_number(match.group())


def parse_teacher_fobar(reply, label, answer):
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    value = next((re.sub(r"^X\s*=\s*", "", line) for line in reversed(lines) if re.match(r"^X\s*=", line)), None)
    if value is None or not NUMBER.fullmatch(value.strip().rstrip(".")):
        raise InvalidOutput("no 'X = <number>' line")
    body = "\n".join(line for line in lines if not re.match(r"^X\s*=", line))
    masked = after_label(body, label)
    if not re.search(r"\bX\b", masked):
        raise InvalidOutput("the masked question has no X")
    return f"{masked} {FOBAR_SUFFIX.format(answer=answer)}", normalize_number(value.strip().rstrip("."))


def new_record(seed, method, index, question, answer, teacher, template, extra=None):
    return {"id": f"{seed['id']}/{method}/{index}", "question": question,
            "answer": None if answer is None else str(answer), "source": f"augment/{method}",
            "seed_id": seed["id"], "method": method, "teacher": teacher, "prompt_hash": template_hash(template),
            "meta": dict({"seed_question": seed["question"], "seed_answer": seed["answer"]}, **(extra or {}))}


def augment(seeds, teacher, methods, sampling=None, seed=0, prompt_dir=None):
    """New questions from `seeds` (registry records); `methods` maps a method to samples per seed.

    Returns (records, rejected): rejected rows say which seed, method and why, with the raw reply.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"parameter 'methods': unknown method(s) {sorted(unknown)}; known: {sorted(METHODS)}")
    sampling = sampling or Sampling(max_new_tokens=256, temperature=0.7, seed=seed)
    records, rejected = [], []
    for method in ("rephrase", "alter"):
        if methods.get(method):
            made, bad = _rewrite(seeds, teacher, method, methods[method], sampling, prompt_dir)
            records += made
            rejected += bad
    if methods.get("fobar") or methods.get("bf_trans"):
        fobar, bad = _fobar(seeds, teacher, max(methods.get("fobar", 0), 1), sampling, seed, prompt_dir)
        rejected += bad
        if methods.get("fobar"):
            records += fobar
        if methods.get("bf_trans"):
            made, bad = _bf_trans(fobar, teacher, methods["bf_trans"], sampling, prompt_dir)
            records += made
            rejected += bad
    return records, rejected


def _ask(teacher, texts, sampling):
    prompts = [teacher.format_prompt([{"role": "user", "content": text}]) for text in texts]
    return [completion.text for completion in teacher.complete(prompts, sampling)]


def _rewrite(seeds, teacher, method, samples, sampling, prompt_dir):
    template = read_method_template(method, prompt_dir)
    jobs = [(seed, index) for seed in seeds for index in range(samples)]
    replies = _ask(teacher, [fill(template, seed["question"]) for seed, _ in jobs], sampling)
    validate = validate_rephrase if method == "rephrase" else validate_alter
    made, rejected = [], []
    for (seed, index), reply in zip(jobs, replies):
        try:
            question = after_label(reply, METHODS[method].label)
            validate(question, seed["question"])
        except InvalidOutput as error:
            rejected.append(_rejection(seed, method, index, error, reply))
            continue
        answer = seed["answer"] if METHODS[method].known_answer else None
        made.append(new_record(seed, method, index, question, answer, teacher.identity, template))
    return made, rejected


def _fobar(seeds, teacher, samples, sampling, seed_value, prompt_dir):
    template = read_method_template("fobar", prompt_dir)
    made, rejected, need_teacher = [], [], []
    for seed in seeds:
        rng = random.Random(f"{seed_value}:{seed['id']}")
        for index in range(samples):
            masked = mask_number(seed["question"], seed["answer"], rng)
            if masked is None:
                need_teacher.append((seed, index))
                continue
            question, value = masked
            made.append(new_record(seed, "fobar", index, question, value, "deterministic", template,
                                   {"masked_value": value}))
    replies = _ask(teacher, [fill(template, s["question"], s["answer"]) for s, _ in need_teacher], sampling) \
        if need_teacher else []
    for (seed, index), reply in zip(need_teacher, replies):
        try:
            question, value = parse_teacher_fobar(reply, METHODS["fobar"].label, seed["answer"])
        except InvalidOutput as error:
            rejected.append(_rejection(seed, "fobar", index, error, reply))
            continue
        made.append(new_record(seed, "fobar", index, question, value, teacher.identity, template,
                               {"masked_value": value}))
    return made, rejected


def _bf_trans(fobar_records, teacher, samples, sampling, prompt_dir):
    template = read_method_template("bf_trans", prompt_dir)
    jobs = [(record, index) for record in fobar_records for index in range(samples)]
    replies = _ask(teacher, [fill(template, record["question"]) for record, _ in jobs], sampling)
    made, rejected = [], []
    for (record, index), reply in zip(jobs, replies):
        seed = {"id": record["seed_id"], "question": record["meta"]["seed_question"],
                "answer": record["meta"]["seed_answer"]}
        try:
            question = after_label(reply, METHODS["bf_trans"].label)
            validate_bf_trans(question, record["question"])
        except InvalidOutput as error:
            rejected.append(_rejection(seed, "bf_trans", index, error, reply))
            continue
        made.append(new_record(seed, "bf_trans", index, question, record["answer"], teacher.identity, template,
                               {"fobar_question": record["question"], "masked_value": record["answer"]}))
    return made, rejected


def _rejection(seed, method, index, error, reply):
    return {"seed_id": seed["id"], "method": method, "sample": index, "reason": str(error), "reply": reply}


def augment_stats(seeds, methods, records, rejected):
    """Counts per method: asked for, kept, rejected, and the share of parseable replies."""
    stats = {}
    for method in methods:
        kept = sum(1 for r in records if r["method"] == method)
        bad = sum(1 for r in rejected if r["method"] == method)
        stats[method] = {"kept": kept, "rejected": bad,
                         "parseable_share": round(kept / (kept + bad), 3) if kept + bad else None,
                         "by_teacher": dict(Counter(r["teacher"] for r in records if r["method"] == method))}
    stats["seeds"] = len(seeds)
    stats["total"] = len(records)
    return stats


def run_augment(run_dir, teacher, seed_benchmarks=("gsm8k:train",), seeds_per_benchmark=None, methods=None,
                sampling=None, data_dir=None, seed=0, prompt_dir=None):
    """Step 1 of a run: seeds -> <run_dir>/augment/{questions,rejected}.jsonl and stats.json."""
    from .data import load_many
    from .manifest import record_inputs
    from .records import write_json, write_jsonl

    inputs = []
    seeds = load_many(seed_benchmarks, "train", data_dir, seeds_per_benchmark, seed, inputs=inputs)
    record_inputs(run_dir, inputs + ([prompt_dir] if prompt_dir else []))
    teacher.step = "augment"
    methods = methods or {"rephrase": 1, "alter": 1, "fobar": 1, "bf_trans": 1}
    records, rejected = augment(seeds, teacher, methods, sampling, seed, prompt_dir)
    out = Path(run_dir) / "augment"
    write_jsonl(out / "questions.jsonl", records)
    write_jsonl(out / "rejected.jsonl", rejected)
    stats = {"methods": augment_stats(seeds, methods, records, rejected),
             "teacher": teacher.identity, "usage": teacher.usage.to_dict()}
    write_json(out / "stats.json", stats)
    return stats
