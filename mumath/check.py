"""Resolve what a params file names before anything runs (``python -m mumath check``, and `run` itself).

`load_params` checks names and types; this checks what the values point at, without a model: every
benchmark spec (name, split, where its rows come from; local rows are read and normalized, so a missing
field, a broken line or a wrong `answer_parser` is reported with ``file:line``), every `extra_benchmarks`
entry, and prompt folders (the templates and few-shot examples each step will ask for). One function per
parameter name, in `CHECKS`; a new step's parameter with one of these names is checked for free.
"""
from pathlib import Path

from .config import ParamsError, notebook_of, notebook_parameters

CHECKS = {}


def checks(*names):
    def register(function):
        for name in names:
            CHECKS[name] = function
        return function
    return register


def _extra(params):
    from .data import DataError, registry

    try:
        registry(params.get("extra_benchmarks"))
    except DataError as error:
        raise ParamsError(str(error)) from error
    return params.get("extra_benchmarks")


_ROWS = {}  # (name, split, data_dir, extra) -> rows: steps that share seeds read them once per check


def _benchmarks(value, params, default_split):
    import json

    from .data import DataError, load_benchmark, parse_spec, resolve_source
    from .grading import is_graded

    notes = []
    for spec in value or []:
        name, split = parse_spec(spec, default_split)
        try:
            _, _, (kind, where) = resolve_source(name, split, params.get("data_dir"), _extra(params))
            if kind == "local":
                stat = Path(where).stat()
                key = (name, split, str(where), stat.st_size, stat.st_mtime_ns,
                       json.dumps(_extra(params), sort_keys=True, default=str))
                if key not in _ROWS:
                    records = load_benchmark(name, split, params.get("data_dir"), extra=_extra(params))
                    _ROWS[key] = (len(records), sum(1 for record in records if not is_graded(record["answer"])))
                rows, ungraded = _ROWS[key]
                notes.append(f"{spec}: {rows} rows from {where}")
                if ungraded:
                    notes.append(f"WARNING {spec}: {ungraded} of {rows} rows have no gold answer: they will be "
                                 f"ungraded (left out of the accuracy, counted as 'ungraded')")
            else:
                notes.append(f"{spec}: from the hub ({where['path']}), not fetched by check")
        except DataError as error:
            raise ParamsError(f"'{spec}': {error}") from error
    return notes


@checks("benchmarks")
def check_benchmarks(value, params):
    return _benchmarks(value, params, params.get("split") or "test")


@checks("seed_benchmarks")
def check_seed_benchmarks(value, params):
    return _benchmarks(value, params, "train") if params.get("include_seeds", True) else []


@checks("extra_benchmarks")
def check_extra_benchmarks(value, params):
    _extra(params)
    return [f"extra benchmark '{name}': entry ok" for name in value or {}]


def required_prompts(params):
    """(template names, {mode: few-shot examples needed}) that the step's parameters will ask for."""
    from .synthesize import STAGES

    templates, fewshot = set(), {}
    for mode in params.get("modes") or []:
        templates.add(mode)
        fewshot[mode] = max(fewshot.get(mode, 0), params.get("few_shot") or 0)
    for stage in params.get("stages") or {}:
        if stage in STAGES:
            templates.add(STAGES[stage]["template"])
            fewshot[stage] = max(fewshot.get(stage, 0), params.get("few_shot") or 0)
    from .augment import METHODS

    for method in params.get("methods") or {}:
        if method in METHODS:
            templates.add(Path(METHODS[method].template).stem)
    return templates, fewshot


@checks("prompt_dir")
def check_prompt_dir(value, params):
    if not value:
        return []
    from .prompts import read_fewshot

    folder = Path(value).expanduser()
    if not folder.is_dir():
        raise ParamsError(f"prompt folder {folder} does not exist")
    templates, fewshot = required_prompts(params)
    missing = sorted(f"{name}.txt" for name in templates if not (folder / f"{name}.txt").exists())
    if missing:
        raise ParamsError(f"prompt folder {folder} lacks {missing}")
    for mode, needed in fewshot.items():
        have = len(read_fewshot(mode, folder))
        if have < needed:
            raise ParamsError(f"prompt folder {folder}: 'few_shot' is {needed} but fewshot_{mode}.jsonl "
                              f"has {have} examples")
    return [f"prompt folder {folder}: {len(templates)} templates ok"]


# Allowed ranges of numeric parameters, whichever step has them: name -> (lowest, highest); None is open.
# A value of None (null: "all" / "the default") is always allowed. `limit: -1` used to pass `check` and fail
# at run time with "Sample larger than population or is negative", naming neither file nor key.
RANGES = {"limit": (1, None), "few_shot": (0, None), "n_samples": (1, None), "max_new_tokens": (1, None),
          "max_rounds": (1, None), "batch_size": (1, None), "max_concurrency": (1, None), "chunk_size": (1, None),
          "exec_workers": (1, None), "exec_timeout": (0.001, None), "exec_memory_mb": (16, None),
          "temperature": (0.0, None), "top_p": (0.001, 1.0), "bag_jaccard": (0.01, 1.0)}


def check_range(name, value):
    low, high = RANGES[name]
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return []  # types are `config.load_params`' job
    if (low is not None and value < low) or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"between {low} and {high}"
        raise ParamsError(f"{value!r} is out of range: must be {allowed}" + (" (or null)" if name == "limit" else ""))
    return []


for _name in RANGES:
    checks(_name)(lambda value, params, _name=_name: check_range(_name, value))


def check_plan(params_file, plan):
    """Run every check on every step (its notebook's defaults filled in); returns notes, raises ParamsError
    naming the file and the parameter."""
    notes = []
    for step, params in plan.items():
        full = dict(notebook_parameters(notebook_of(step)), **params)
        for name, check in CHECKS.items():
            if name in full:
                try:
                    notes += [f"{step}: {note}" for note in check(full[name], full)]
                except ParamsError as error:
                    raise ParamsError(f"{params_file}: parameter 'steps.{step}.{name}': {error}") from error
    return notes
