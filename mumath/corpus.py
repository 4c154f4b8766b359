"""Published training corpora as registry entries (``corpora.yaml``) -> the synthesize step's rows.

A corpus entry says where the rows are (a local file or a hub dataset), which fields hold the question,
the solution and the reference answer, and how its code and output blocks are marked. `import_corpora`
turns every row into a row of exactly the format `synthesize.synthesize` writes (`messages` with the
question in this project's template and the solution with ```` ```python ```` / ```` ```output ```` blocks
written the way the tool loop writes them), so the filter step treats imported and synthesized solutions
alike: decontamination, dedupe, format, length, answer, cap.

Output blocks of a corpus were produced by someone else's interpreter. With ``reexecute="check"`` every
code block is run again in this project's sandbox and a solution whose recorded output differs from the
sandbox's (or whose code now fails) is dropped; with ``"replace"`` the sandbox's output replaces the
recorded one (the filter then judges the solution on real outputs).
"""
import hashlib
import re
from collections import Counter
from functools import lru_cache
from pathlib import Path

import yaml

from .data import ANSWER_PARSERS, DataError, find_local, local_candidates, read_local
from .grading import extract_answer, extract_boxed, is_equivalent
from .prompts import user_message
from .tir import errors_fixed, format_output, has_prefix_cot

REGISTRY_FILE = Path(__file__).with_name("corpora.yaml")
HUB_PREFIX = "hf://datasets/"
DEFAULT_MARKERS = {"code": ["```python", "```"], "output": ["```output", "```"]}
ENTRY_KEYS = {"local", "hub", "question", "solution", "messages", "answer", "answer_parser", "markers", "stage",
              "where", "id", "meta", "rows"}
STAGE_CHOICES = ("auto", "cot", "tir")
REEXECUTE_CHOICES = ("no", "check", "replace")
ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]*(?:Error|Exception)\b")
USER_ROLES, ASSISTANT_ROLES = {"user", "human"}, {"assistant", "gpt"}


class CorpusError(DataError):
    pass


@lru_cache(maxsize=1)
def builtin_registry():
    with open(REGISTRY_FILE) as handle:
        return yaml.safe_load(handle)


def registry(extra=None, where="extra_corpora"):
    """The built-in corpora plus the user's `extra` ones (validated, naming `where` on error)."""
    entries = dict(builtin_registry())
    for name, entry in (extra or {}).items():
        validate_entry(name, entry, where)
        entries[name] = entry
    return entries


def validate_entry(name, entry, where="extra_corpora"):
    if not isinstance(entry, dict):
        raise CorpusError(f"{where}.{name}: must be a mapping")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise CorpusError(f"{where}.{name}: unknown field(s) {sorted(unknown)}; allowed: {sorted(ENTRY_KEYS)}")
    for key in ("question", "solution"):
        if key not in entry:
            raise CorpusError(f"{where}.{name}: missing field '{key}'")
        if isinstance(entry[key], dict) and set(entry[key]) != {"messages"}:
            raise CorpusError(f"{where}.{name}.{key}: a field name, or {{messages: user|assistant}}")
    if not entry.get("local") and not entry.get("hub"):
        raise CorpusError(f"{where}.{name}: needs 'local' (a file) or 'hub' ({{path, split}})")
    if entry.get("hub") and "path" not in entry["hub"]:
        raise CorpusError(f"{where}.{name}.hub: needs 'path'")
    if entry.get("answer_parser", "as_is") not in ANSWER_PARSERS:
        raise CorpusError(f"{where}.{name}.answer_parser: '{entry['answer_parser']}' is not one of "
                          f"{sorted(ANSWER_PARSERS)}")
    if entry.get("stage", "auto") not in STAGE_CHOICES:
        raise CorpusError(f"{where}.{name}.stage: '{entry['stage']}' is not one of {STAGE_CHOICES}")
    markers = entry.get("markers") or {}
    for kind, pair in markers.items():
        if kind not in DEFAULT_MARKERS or not (isinstance(pair, list) and len(pair) == 2 and all(pair)):
            raise CorpusError(f"{where}.{name}.markers.{kind}: must be code or output, each [open, close]")


# ------------------------------------------------------------------------------------------ reading

def resolve_corpus(name, data_dir=None, extra=None):
    """(entry, ("local", path) | ("hub", spec)) for a corpus name; reads nothing."""
    entries = registry(extra)
    if name not in entries:
        raise CorpusError(f"unknown corpus '{name}'; known: {sorted(entries)} (or add it under extra_corpora)")
    entry = entries[name]
    if entry.get("local"):
        path = find_local(entry["local"], data_dir)
        if path is not None:
            return entry, ("local", path)
    if entry.get("hub"):
        return entry, ("hub", entry["hub"])
    looked = ", ".join(str(path) for path in local_candidates(entry["local"], data_dir))
    raise CorpusError(f"corpus '{name}': no local copy (looked in: {looked}) and no hub source; set data_dir "
                      f"(or $MUMATH_DATA_DIR) to a folder holding {entry['local']}")


def hub_label(hub):
    return f"{HUB_PREFIX}{hub['path']}" + (f"/{hub['name']}" if hub.get("name") else "") + \
        f"@{hub.get('split', 'train')}"


def read_hub(name, hub, limit=None):
    """Rows of a hub dataset; with `limit`, streamed and cut at `limit` rows (no full download)."""
    try:
        import datasets
    except ImportError as error:
        raise CorpusError("reading a corpus from the hub needs the `datasets` package") from error
    try:
        dataset = datasets.load_dataset(hub["path"], hub.get("name"), split=hub.get("split", "train"),
                                        streaming=limit is not None)
        rows = []
        for index, row in enumerate(dataset):
            if limit is not None and index >= limit:
                break
            rows.append(dict(row, _key=str(index), _where=f"{hub_label(hub)} row {index}"))
    except Exception as error:
        raise CorpusError(f"corpus '{name}': could not load '{hub['path']}' from the Hugging Face hub "
                          f"({type(error).__name__}: {str(error)[:200]}). Put a local copy under data_dir "
                          f"instead.") from error
    return rows


def read_corpus(name, data_dir=None, extra=None, limit=None, inputs=None):
    """(entry, raw rows, where they came from); `limit` keeps the first rows."""
    entry, (kind, where) = resolve_corpus(name, data_dir, extra)
    if kind == "local":
        rows = read_local(where)[:limit] if limit is not None else read_local(where)
        label = str(Path(where).resolve())
    else:
        rows, label = read_hub(name, where, limit), hub_label(where)
    if inputs is not None:
        inputs.append(label)
    return entry, rows, label


# ------------------------------------------------------------------------------------------ fields

def turns(row, entry, where):
    field = entry.get("messages", "messages")
    messages = row.get(field)
    if not isinstance(messages, list):
        raise CorpusError(f"{where}: field '{field}' missing or not a list of turns "
                          f"(it has {sorted(k for k in row if not k.startswith('_'))})")
    out = []
    for turn in messages:
        role = turn.get("role", turn.get("from"))
        out.append((str(role).lower(), turn.get("content", turn.get("value")) or ""))
    return out


def field_text(row, spec, entry, where):
    """A question or solution: a row field, or a turn of its messages."""
    if isinstance(spec, dict):
        wanted = spec["messages"]
        roles = USER_ROLES if wanted in USER_ROLES else ASSISTANT_ROLES
        texts = [content for role, content in turns(row, entry, where) if role in roles]
        if not texts:
            raise CorpusError(f"{where}: no '{wanted}' turn in field '{entry.get('messages', 'messages')}'")
        return (texts[0] if roles is USER_ROLES else texts[-1]).strip()
    if spec not in row or row[spec] is None:
        raise CorpusError(f"{where}: field '{spec}' missing (it has {sorted(k for k in row if not k.startswith('_'))})")
    return str(row[spec]).strip()


def reference_answer(row, entry, where):
    field = entry.get("answer")
    if not field:
        return None
    if field not in row:
        raise CorpusError(f"{where}: answer field '{field}' missing "
                          f"(it has {sorted(k for k in row if not k.startswith('_'))})")
    if row[field] is None:
        return None
    try:
        return ANSWER_PARSERS[entry.get("answer_parser", "as_is")](row[field])
    except DataError as error:
        raise CorpusError(f"{where}: {error}") from error


# ------------------------------------------------------------------------------------------ blocks

def split_blocks(text, markers=None):
    """A solution -> parts: ("text", str), ("code", str), ("output", str), in order.

    Blocks are found by their open / close markers; an output block counts as one only right after a code
    block (whitespace between). A code block that never closes raises CorpusError."""
    markers = dict(DEFAULT_MARKERS, **(markers or {}))
    (code_open, code_close), (out_open, out_close) = markers["code"], markers["output"]
    parts, position = [], 0
    while True:
        start = text.find(code_open, position)
        if start < 0:
            break
        body = start + len(code_open)
        end = text.find(code_close, body)
        if end < 0:
            raise CorpusError("a code block never closes")
        parts += [("text", text[position:start]), ("code", text[body:end].strip("\n"))]
        position = end + len(code_close)
        gap = len(text[position:]) - len(text[position:].lstrip())
        if text.startswith(out_open, position + gap):
            out_body = position + gap + len(out_open)
            out_end = text.find(out_close, out_body)
            if out_end < 0:
                raise CorpusError("an output block never closes")
            parts.append(("output", text[out_body:out_end].strip("\n")))
            position = out_end + len(out_close)
    parts.append(("text", text[position:]))
    return [(kind, body) for kind, body in parts if kind != "text" or body.strip()]


def render(parts):
    """Parts in the tool loop's exact format: text, ```python block, ```output block, text, ..."""
    pieces = []
    for kind, body in parts:
        if kind == "text":
            pieces.append(body.strip() + "\n")
        elif kind == "code":
            pieces.append(f"```python\n{body}\n```\n")
        else:
            pieces.append(format_output(body))
    return "".join(pieces).strip()


def output_failed(output):
    """(error, timed out) of a recorded output, read from its text (a traceback, an error's last line)."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    timed_out = "TimeoutError" in last or "timed out" in last.lower() or last.lower() == "timeout"
    error = not timed_out and ("Traceback (most recent call last)" in output or bool(ERROR_LINE.match(last)))
    return error, timed_out


def same_output(recorded, executed):
    """Outputs agree when equal up to trailing spaces on each line and blank lines at either end."""
    def clean(text):
        return "\n".join(line.rstrip() for line in text.strip().splitlines())
    return clean(recorded) == clean(executed)


# ------------------------------------------------------------------------------------------ rows

def question_key(question):
    """Questions are grouped (cap, dedupe, votes) by their normalized text, across corpora: the same question
    in two corpora is one question with solutions from both."""
    text = re.sub(r"\s+", " ", question).strip().lower()
    return f"corpus/{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def to_row(name, entry, raw, number, parts, prompt_dir=None):
    """One row in the synthesize step's format (`synthesize.synthesize`), from a corpus row."""
    where = raw.get("_where") or f"corpus {name} row {number}"
    question = field_text(raw, entry["question"], entry, where)
    solution = render(parts)
    has_code = any(kind == "code" for kind, _ in parts)
    stage = entry.get("stage", "auto")
    stage = ("tir" if has_code else "cot") if stage == "auto" else stage
    answer = reference_answer(raw, entry, where)
    executions = [dict(zip(("error", "timed_out"), output_failed(body))) for kind, body in parts if kind == "output"]
    pred = extract_answer(solution)
    meta = {key: raw[key] for key in entry.get("meta", []) if key in raw}
    question_id = question_key(question)
    return {
        "id": None, "question_id": question_id, "stage": stage, "sample": None, "question": question,
        "answer": answer, "pred": pred, "boxed": extract_boxed(solution) is not None,
        "correct": None if answer is None else is_equivalent(pred, answer),
        "messages": [{"role": "user", "content": user_message(question, stage, prompt_dir)},
                     {"role": "assistant", "content": solution}],
        "teacher": f"corpus:{name}", "source": f"corpus:{name}", "seed_id": question_id, "method": "seed",
        "rounds": len(executions) + 1 if stage == "tir" else 1, "finish": "eos",
        "executions": len(executions), "execution_errors": sum(e["error"] for e in executions),
        "timeouts": sum(e["timed_out"] for e in executions), "errors_fixed": errors_fixed(executions),
        "prefix_cot": has_prefix_cot(solution) if stage == "tir" else None,
        "prompt_tokens": 0, "completion_tokens": 0,
        "source_id": str(raw[entry["id"]]) if entry.get("id") and entry["id"] in raw else raw.get("_key"),
        "source_where": where, "unexecuted_blocks": _unexecuted(parts), "meta": meta,
    }


def _unexecuted(parts):
    """Code blocks with no output block after them."""
    return sum(1 for index, (kind, _) in enumerate(parts)
               if kind == "code" and (index + 1 >= len(parts) or parts[index + 1][0] != "output"))


def keep_row(raw, entry):
    return all(raw.get(field) == value for field, value in (entry.get("where") or {}).items())


def reexecute(parsed, executor, mode, carry_state=False, max_output_chars=2000):
    """Run every code block of every parsed solution in the sandbox, one batch.

    `parsed` is a list of parts lists; returns (new parts lists, per-solution verdict None | reason,
    counts). "check" keeps parts as they were and flags mismatches; "replace" puts the sandbox's outputs
    in (adding an output block after a code block that had none)."""
    jobs = []  # (solution index, part index, code, prelude)
    for index, parts in enumerate(parsed):
        codes = []
        for position, (kind, body) in enumerate(parts):
            if kind == "code":
                jobs.append((index, position, body, tuple(codes) if carry_state else ()))
                codes.append(body)
    results = executor.execute_many([code for _, _, code, _ in jobs], [prelude for *_, prelude in jobs]) \
        if jobs else []
    by_block = {(index, position): result for (index, position, _, _), result in zip(jobs, results)}
    counts, out, verdicts = Counter(blocks=len(jobs)), [], []
    for index, parts in enumerate(parsed):
        new, verdict = [], None
        for position, (kind, body) in enumerate(parts):
            if kind == "output" and position and parts[position - 1][0] == "code":
                continue  # written together with its code block below
            new.append((kind, body))
            if kind != "code":
                continue
            result = by_block[(index, position)]
            executed = result.as_output(max_output_chars)
            recorded = parts[position + 1][1] if position + 1 < len(parts) and parts[position + 1][0] == "output" \
                else None
            agrees = recorded is not None and same_output(recorded, executed)
            counts["matching" if agrees else "differing"] += 1
            if not result.ok:
                counts["failing"] += 1
            if verdict is None and not agrees:
                verdict = "output_missing" if recorded is None else "output_differs"
            if mode == "replace":
                new.append(("output", executed))
            elif recorded is not None:
                new.append(("output", recorded))
        out.append(new if mode == "replace" else parts)
        verdicts.append(verdict)
    return out, verdicts, dict(counts)


def import_corpus(name, data_dir=None, extra=None, limit=None, executor=None, reexecute_mode="no",
                  carry_state=False, prompt_dir=None, inputs=None, progress=True):
    """One corpus -> ({stage: rows}, counts). Rows that cannot be read raise CorpusError naming where;
    rows the entry's `where` excludes, or (with reexecute "check") whose outputs differ, are counted."""
    from tqdm.auto import tqdm

    if reexecute_mode not in REEXECUTE_CHOICES:
        raise CorpusError(f"parameter 'corpus_reexecute' is '{reexecute_mode}', not one of {REEXECUTE_CHOICES}")
    if reexecute_mode != "no" and executor is None:
        raise CorpusError("corpus_reexecute needs a sandbox executor")
    entry, raws, label = read_corpus(name, data_dir, extra, limit, inputs)
    dropped, kept, parsed = Counter(), [], []
    for number, raw in enumerate(tqdm(raws, desc=f"corpus {name}", disable=not progress), 1):
        if not keep_row(raw, entry):
            dropped["excluded_by_where"] += 1
            continue
        where = raw.get("_where") or f"{label} row {number}"
        try:
            parts = split_blocks(field_text(raw, entry["solution"], entry, where), entry.get("markers"))
        except CorpusError as error:
            if "never closes" not in str(error):
                raise
            dropped["unclosed_block"] += 1
            continue
        kept.append((number, raw))
        parsed.append(parts)
    executed = {}
    if reexecute_mode != "no":
        parsed, verdicts, executed = reexecute(parsed, executor, reexecute_mode, carry_state)
        if reexecute_mode == "check":
            for verdict in verdicts:
                if verdict:
                    dropped[verdict] += 1
            kept = [item for item, verdict in zip(kept, verdicts) if not verdict]
            parsed = [parts for parts, verdict in zip(parsed, verdicts) if not verdict]
    by_stage, seen = {}, Counter()
    for (number, raw), parts in zip(kept, parsed):
        row = to_row(name, entry, raw, number, parts, prompt_dir)
        sample = seen[(row["stage"], row["question_id"])]
        seen[(row["stage"], row["question_id"])] += 1
        row.update(id=f"{row['question_id']}/{row['stage']}/{sample}", sample=sample)
        by_stage.setdefault(row["stage"], []).append(row)
    counts = {"read": len(raws), "imported": sum(len(rows) for rows in by_stage.values()),
              "by_stage": {stage: len(rows) for stage, rows in sorted(by_stage.items())},
              "dropped": dict(sorted(dropped.items())), "from": label}
    if executed:
        counts["reexecuted_blocks"] = executed
    return by_stage, counts


def import_corpora(names, data_dir=None, extra=None, limit=None, executor=None, reexecute_mode="no",
                   carry_state=False, prompt_dir=None, inputs=None, progress=True):
    """Several corpora -> ({stage: rows}, {corpus: counts})."""
    if not names:
        raise CorpusError("solution_source 'corpus' needs parameter 'corpora' (names from mumath/corpora.yaml "
                          "or extra_corpora)")
    by_stage, counts = {}, {}
    for name in names:
        rows, counts[name] = import_corpus(name, data_dir, extra, limit, executor, reexecute_mode, carry_state,
                                           prompt_dir, inputs, progress)
        for stage, stage_rows in rows.items():
            by_stage.setdefault(stage, []).extend(stage_rows)
    seen = Counter()  # a question in several corpora: its samples numbered across them
    for stage, rows in by_stage.items():
        for row in rows:
            sample = seen[(stage, row["question_id"])]
            seen[(stage, row["question_id"])] += 1
            row.update(id=f"{row['question_id']}/{stage}/{sample}", sample=sample)
    return by_stage, counts


def corpus_rows(name, data_dir=None, extra=None, limit=None):
    """How many rows a corpus import would read: counted in a local copy, else the entry's `rows`."""
    entry, (kind, where) = resolve_corpus(name, data_dir, extra)
    if kind == "local":
        total = len(read_local(where))
    elif entry.get("rows"):
        total = entry["rows"]
    elif limit is not None:
        return limit
    else:
        raise CorpusError(f"corpus '{name}': its size is not known without a local copy; give "
                          f"'corpus_limit' or a 'rows' field")
    return min(total, limit) if limit is not None else total
