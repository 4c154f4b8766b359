"""Benchmarks as registry entries (``eval_sets.yaml``) -> normalized records.

Every record is ``{id, question, answer, source, meta}``; ``meta["choices"]`` holds multiple-choice
options where the benchmark has them (a list, or one string like ``"A) 3 B) 5 C) 10"`` or MathQA's
``"a ) 12 , b ) 16"``, split into a list). A row whose gold answer is empty or null gets ``answer: None``:
it is `ungraded` (left out of accuracy, counted apart; docs/user-benchmarks.md).

Where a split's rows come from, first match wins: an absolute ``local`` path; ``data_dir`` (the parameter,
else ``$MUMATH_DATA_DIR``) holding the ``local`` file; the copy shipped inside the package
(``mumath/benchmark_data/<local>.gz``: every evaluation set of the paper and GSM8K train); the project
folder; the Hugging Face hub (full splits such as MATH train). The files read (or ``hf://datasets/...``)
go to the run manifest, which says for each whether it was ``shipped``, ``local`` or ``hub``.
"""
import json
import os
import random
import re
from functools import lru_cache
from pathlib import Path

import yaml

from .grading import extract_boxed, format_options, is_graded, option_letter, split_options
from .records import open_text

REGISTRY_FILE = Path(__file__).with_name("eval_sets.yaml")
SHIPPED_DATA = Path(__file__).with_name("benchmark_data")
DATA_DIR_ENV = "MUMATH_DATA_DIR"
HUB_PREFIX = "hf://datasets/"
COMPRESSED = (".gz", ".xz")


class DataError(ValueError):
    pass


# Named transforms a registry entry may refer to; adding one is adding a line here.
def _after_hash(text):
    return str(text).split("####")[-1].strip().replace(",", "")


def _leading_number(text):
    match = re.match(r"\s*(-?[\d.,/]+)", str(text))
    return match.group(1).rstrip(".").replace(",", "") if match else str(text).strip()


def _last_boxed(text):
    boxed = extract_boxed(str(text))
    if boxed is None:
        raise DataError("no \\boxed{} answer in the solution")
    return boxed


def _as_is(value):
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _option_index(value):
    try:
        return option_letter(value)
    except ValueError as error:
        raise DataError(str(error)) from error


ANSWER_PARSERS = {"as_is": _as_is, "after_hash": _after_hash, "leading_number": _leading_number,
                  "last_boxed": _last_boxed, "option_index": _option_index}


def _tabmwp_question(row):
    title = f"{row['table_title']}\n" if row.get("table_title") else ""
    question = f"Read the following table and answer the question.\n\n{title}{row['table']}\n\n{row['question']}"
    if row.get("choices"):
        question += "\nOptions: " + ", ".join(str(choice) for choice in row["choices"])
    if row.get("unit"):
        question += f"\n(Unit: {row['unit']})"
    return question


QUESTION_BUILDERS = {"tabmwp": _tabmwp_question}

ENTRY_KEYS = {"splits", "question", "answer", "answer_parser", "id", "meta", "choices", "choices_in_question"}
SPLIT_KEYS = {"local", "hub", "exclude"}


@lru_cache(maxsize=1)
def builtin_registry():
    with open(REGISTRY_FILE) as handle:
        return yaml.safe_load(handle)


def registry(extra=None, where="extra_benchmarks"):
    """The built-in entries plus the user's `extra` ones (validated, naming `where` on error)."""
    entries = dict(builtin_registry())
    for name, entry in (extra or {}).items():
        validate_entry(name, entry, where)
        entries[name] = entry
    return entries


def validate_entry(name, entry, where):
    if not isinstance(entry, dict):
        raise DataError(f"{where}.{name}: must be a mapping")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise DataError(f"{where}.{name}: unknown field(s) {sorted(unknown)}; allowed: {sorted(ENTRY_KEYS)}")
    for key in ("splits", "question", "answer"):
        if key not in entry:
            raise DataError(f"{where}.{name}: missing field '{key}'")
    for split, source in entry["splits"].items():
        bad = set(source) - SPLIT_KEYS
        if bad:
            raise DataError(f"{where}.{name}.splits.{split}: unknown field(s) {sorted(bad)}")
    parser = entry.get("answer_parser", "as_is")
    if parser not in ANSWER_PARSERS:
        raise DataError(f"{where}.{name}.answer_parser: '{parser}' is not one of {sorted(ANSWER_PARSERS)}")
    if entry.get("choices_in_question") and not entry.get("choices"):
        raise DataError(f"{where}.{name}.choices_in_question: needs 'choices' (the field holding the options)")
    if parser == "option_index" and not entry.get("choices"):
        raise DataError(f"{where}.{name}.answer_parser: 'option_index' needs 'choices' (the options it indexes)")
    question = entry["question"]
    if isinstance(question, dict) and question.get("builder") not in QUESTION_BUILDERS:
        raise DataError(f"{where}.{name}.question.builder: not one of {sorted(QUESTION_BUILDERS)}")


def resolve_data_dir(data_dir):
    """`data_dir` parameter -> folder, or None for the hub; falls back to $MUMATH_DATA_DIR."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(data_dir).expanduser() if data_dir else None


def read_local(path):
    """Rows of a .jsonl file or a .json list / {id: row} dict (optionally .gz / .xz compressed).

    Each row carries `_key` (its id: the 0-based row number, or the key of a json dict) and `_where`
    (``file:line``, 1-based, for error messages).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    plain = path.name[:-3] if path.suffix in COMPRESSED else path.name
    with open_text(path) as handle:
        if plain.endswith(".jsonl"):
            rows = []
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from error
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{number}: a row must be a JSON object, got {type(row).__name__}")
                    rows.append(dict(row, _key=str(len(rows)), _where=f"{path}:{number}"))
            return rows
        try:
            data = json.load(handle)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
    if isinstance(data, dict):
        return [dict(row, _key=str(key), _where=f"{path} [{key!r}]") for key, row in data.items()]
    return [dict(row, _key=str(index), _where=f"{path} [item {index + 1}]") for index, row in enumerate(data)]


def local_candidates(local, data_dir):
    """Where a registry `local` path may be found, in order of preference."""
    path = Path(local).expanduser()
    if path.is_absolute():
        return [path]
    folder = resolve_data_dir(data_dir)
    from .config import project_root

    return ([folder / path] if folder is not None else []) + [SHIPPED_DATA / path, project_root() / path]


def find_local(local, data_dir):
    """The first existing candidate for `local` (plain or compressed), or None."""
    for candidate in local_candidates(local, data_dir):
        for path in [candidate] + [candidate.with_name(candidate.name + ext) for ext in COMPRESSED]:
            if path.is_file():
                return path
    return None


def read_hub(name, split, hub):
    try:
        import datasets
    except ImportError as error:
        raise DataError("reading from the hub needs the `datasets` package") from error
    configs = hub.get("configs") or [hub.get("name")]
    rows = []
    try:
        for config in configs:
            dataset = datasets.load_dataset(hub["path"], config, split=hub.get("split", split))
            rows.extend(dict(row, _key=f"{config or ''}{index}") for index, row in enumerate(dataset))
    except Exception as error:
        raise DataError(
            f"benchmark '{name}' split '{split}': could not load '{hub['path']}' from the Hugging Face hub "
            f"({type(error).__name__}: {str(error)[:200]}). Set data_dir (or ${DATA_DIR_ENV}) to a "
            f"folder holding the local files.") from error
    return rows


def hub_label(name, split, hub):
    return f"{HUB_PREFIX}{hub['path']}" + (f"/{hub['name']}" if hub.get("name") else "") + f"@{hub.get('split', split)}"


def build_question(row, spec, where):
    try:
        if isinstance(spec, dict):
            return QUESTION_BUILDERS[spec["builder"]](row)
        if "{" in spec:
            return re.sub(r"\s+", " ", spec.format(**row)).strip()
        return str(row[spec]).strip()
    except KeyError as error:
        raise DataError(f"{where}: field {error} missing from the data row "
                        f"(it has {sorted(k for k in row if not k.startswith('_'))})") from error


def normalize_rows(name, split, entry, rows, where):
    parser = ANSWER_PARSERS[entry.get("answer_parser", "as_is")]
    records = []
    for number, row in enumerate(rows, 1):
        row_where = row.get("_where") or f"{where} row {number}"
        if entry["answer"] not in row:
            raise DataError(f"{row_where}: field '{entry['answer']}' missing "
                            f"(it has {sorted(k for k in row if not k.startswith('_'))})")
        answer = None  # no gold (empty or null): the item is ungraded
        if is_graded(row[entry["answer"]]):
            try:
                answer = parser(row[entry["answer"]])
            except DataError as error:
                raise DataError(f"{row_where}: {error}") from error
        meta = {key: row[key] for key in entry.get("meta", []) if key in row}
        if entry.get("choices") and row.get(entry["choices"]):
            meta["choices"] = split_options(row[entry["choices"]])
        question = build_question(row, entry["question"], row_where)
        if entry.get("choices_in_question") and meta.get("choices"):
            question += "\nOptions: " + format_options(meta["choices"])
        record_id = str(row[entry["id"]]) if entry.get("id") and entry["id"] in row else row["_key"]
        records.append({"id": f"{name}/{split}/{record_id}", "question": question,
                        "answer": answer, "source": f"{name}/{split}", "meta": meta})
    return records


def resolve_source(name, split, data_dir=None, extra=None):
    """Where `name`/`split` would be read from: ("local", path) or ("hub", hub spec). Reads nothing."""
    entries = registry(extra)
    if name not in entries:
        raise DataError(f"unknown benchmark '{name}'; known: {sorted(entries)}")
    entry = entries[name]
    if split not in entry["splits"]:
        raise DataError(f"benchmark '{name}' has no split '{split}'; it has {sorted(entry['splits'])}")
    source = entry["splits"][split]
    if source.get("local"):
        path = find_local(source["local"], data_dir)
        if path is not None:
            return entry, source, ("local", path)
    if source.get("hub"):
        return entry, source, ("hub", source["hub"])
    looked = ", ".join(str(path) for path in local_candidates(source["local"], data_dir)) \
        if source.get("local") else "nowhere"
    raise DataError(f"benchmark '{name}' split '{split}': no local copy (looked in: {looked}) and no hub source; "
                    f"set data_dir (or ${DATA_DIR_ENV}) to a folder holding {source.get('local')}")


def load_benchmark(name, split="test", data_dir=None, limit=None, seed=0, extra=None, inputs=None):
    """Normalized records of `name`/`split`; `limit` takes a seeded random sample (stable order).

    `inputs`, a list, receives the files read, or ``hf://datasets/<path>@<split>`` for the hub (for the run
    manifest, which tells shipped, local and hub sources apart).
    """
    entry, source, (kind, where) = resolve_source(name, split, data_dir, extra)
    if kind == "local":
        rows = read_local(where)
        if inputs is not None:
            inputs.append(str(Path(where).resolve()))
    else:
        rows, where = read_hub(name, split, where), hub_label(name, split, where)
        if inputs is not None:
            inputs.append(where)
    records = normalize_rows(name, split, entry, rows, where)
    if source.get("exclude"):
        excluded = load_benchmark(source["exclude"]["benchmark"], source["exclude"]["split"], data_dir,
                                  extra=extra, inputs=inputs)
        seen = {_question_key(record["question"]) for record in excluded}
        records = [record for record in records if _question_key(record["question"]) not in seen]
    if limit is not None and limit < len(records):
        chosen = sorted(random.Random(seed).sample(range(len(records)), limit))
        records = [records[index] for index in chosen]
    return records


def _question_key(question):
    return re.sub(r"\s+", " ", question).strip()


def parse_spec(spec, default_split="test"):
    """'gsm8k' or 'math:train_offline' -> (name, split)."""
    name, _, split = str(spec).partition(":")
    return name, split or default_split


def load_many(specs, default_split="test", data_dir=None, limit=None, seed=0, extra=None, inputs=None):
    """Records of several 'name' / 'name:split' specs, concatenated (each sampled to `limit`)."""
    records = []
    for spec in specs:
        name, split = parse_spec(spec, default_split)
        records += load_benchmark(name, split, data_dir=data_dir, limit=limit, seed=seed,
                                  extra=extra, inputs=inputs)
    return records
