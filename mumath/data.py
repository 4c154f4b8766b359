"""Benchmarks as registry entries (``benchmarks.yaml``) -> normalized records.

Every record is ``{id, question, answer, source, meta}``; ``meta["choices"]`` holds multiple-choice
options where the benchmark has them. Data comes from ``data_dir`` (local files) or, when ``data_dir`` is
None, from the Hugging Face hub through ``datasets``.
"""
import json
import os
import random
import re
from functools import lru_cache
from pathlib import Path

import yaml

from .grading import extract_boxed

REGISTRY_FILE = Path(__file__).with_name("benchmarks.yaml")
DATA_DIR_ENV = "MUMATH_DATA_DIR"


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


ANSWER_PARSERS = {"as_is": _as_is, "after_hash": _after_hash, "leading_number": _leading_number,
                  "last_boxed": _last_boxed}


def _tabmwp_question(row):
    title = f"{row['table_title']}\n" if row.get("table_title") else ""
    question = f"Read the following table and answer the question.\n\n{title}{row['table']}\n\n{row['question']}"
    if row.get("choices"):
        question += "\nOptions: " + ", ".join(str(choice) for choice in row["choices"])
    if row.get("unit"):
        question += f"\n(Unit: {row['unit']})"
    return question


QUESTION_BUILDERS = {"tabmwp": _tabmwp_question}

ENTRY_KEYS = {"splits", "question", "answer", "answer_parser", "id", "meta", "choices"}
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
    question = entry["question"]
    if isinstance(question, dict) and question.get("builder") not in QUESTION_BUILDERS:
        raise DataError(f"{where}.{name}.question.builder: not one of {sorted(QUESTION_BUILDERS)}")


def resolve_data_dir(data_dir):
    """`data_dir` parameter -> folder, or None for the hub; falls back to $MUMATH_DATA_DIR."""
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    return Path(data_dir).expanduser() if data_dir else None


def read_local(path):
    """Rows of a .jsonl file or a .json list / {id: row} dict, each with its `_key`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.suffix == ".jsonl":
        rows = []
        with open(path) as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    try:
                        rows.append(dict(json.loads(line), _key=str(number - 1)))
                    except json.JSONDecodeError as error:
                        raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from error
        return rows
    with open(path) as handle:
        data = json.load(handle)
    if isinstance(data, dict):
        return [dict(row, _key=str(key)) for key, row in data.items()]
    return [dict(row, _key=str(index)) for index, row in enumerate(data)]


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


def build_question(row, spec, where):
    try:
        if isinstance(spec, dict):
            return QUESTION_BUILDERS[spec["builder"]](row)
        if "{" in spec:
            return re.sub(r"\s+", " ", spec.format(**row)).strip()
        return str(row[spec]).strip()
    except KeyError as error:
        raise DataError(f"{where}: field {error} missing from the data row") from error


def normalize_rows(name, split, entry, rows, where):
    parser = ANSWER_PARSERS[entry.get("answer_parser", "as_is")]
    records = []
    for row in rows:
        row_where = f"{where} row {row['_key']}"
        if entry["answer"] not in row:
            raise DataError(f"{row_where}: field '{entry['answer']}' missing")
        try:
            answer = parser(row[entry["answer"]])
        except DataError as error:
            raise DataError(f"{row_where}: {error}") from error
        meta = {key: row[key] for key in entry.get("meta", []) if key in row}
        if entry.get("choices") and row.get(entry["choices"]):
            meta["choices"] = [str(choice) for choice in row[entry["choices"]]]
        record_id = str(row[entry["id"]]) if entry.get("id") and entry["id"] in row else row["_key"]
        records.append({"id": f"{name}/{split}/{record_id}",
                        "question": build_question(row, entry["question"], row_where),
                        "answer": answer, "source": f"{name}/{split}", "meta": meta})
    return records


def load_benchmark(name, split="test", data_dir=None, limit=None, seed=0, extra=None, inputs=None):
    """Normalized records of `name`/`split`; `limit` takes a seeded random sample (stable order).

    `inputs`, a list, receives the local files read (for the run manifest).
    """
    entries = registry(extra)
    if name not in entries:
        raise DataError(f"unknown benchmark '{name}'; known: {sorted(entries)}")
    entry = entries[name]
    if split not in entry["splits"]:
        raise DataError(f"benchmark '{name}' has no split '{split}'; it has {sorted(entry['splits'])}")
    source = entry["splits"][split]
    folder = resolve_data_dir(data_dir)
    if folder is not None and source.get("local"):
        path = Path(source["local"]).expanduser()
        path = path if path.is_absolute() else folder / path
        rows = read_local(path)
        where = str(path)
        if inputs is not None:
            inputs.append(str(path))
    elif source.get("hub"):
        rows, where = read_hub(name, split, source["hub"]), f"hub:{source['hub']['path']}"
    elif folder is None:
        raise DataError(f"benchmark '{name}' split '{split}' has no hub source; set data_dir "
                        f"(or ${DATA_DIR_ENV}) to a folder holding {source.get('local')}")
    else:
        raise DataError(f"benchmark '{name}' split '{split}' has no local file in the registry")
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


def load_many(specs, default_split="test", data_dir=None, limit=None, seed=0, extra=None, inputs=None):
    """Records of several 'name' / 'name:split' specs, concatenated (each sampled to `limit`)."""
    records = []
    for spec in specs:
        name, _, split = spec.partition(":")
        records += load_benchmark(name, split or default_split, data_dir=data_dir, limit=limit, seed=seed,
                                  extra=extra, inputs=inputs)
    return records
