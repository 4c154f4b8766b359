"""Resolve what a params file names before anything runs (``python -m mumath check``, and `run` itself).

`load_params` checks names, types and ranges (the schema, `mumath.params`); this checks what the values
point at, without a model: every benchmark spec (name, split, where its rows come from; local rows are read
and normalized, so a missing field, a broken line or a wrong `answer_parser` is reported with
``file:line``), every `extra_benchmarks` entry, and prompt folders (the templates and few-shot examples each
step will ask for). One function per parameter name, in `CHECKS`; a new step's parameter with one of these
names is checked for free.
"""
from pathlib import Path

from .config import ParamsError

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
    if params.get("solution_source") == "corpus":
        return []  # a corpus brings its own questions
    return _benchmarks(value, params, "train") if params.get("include_seeds", True) else []


@checks("extra_benchmarks")
def check_extra_benchmarks(value, params):
    _extra(params)
    return [f"extra benchmark '{name}': entry ok" for name in value or {}]


@checks("corpora")
def check_corpora(value, params):
    """Every corpus resolves (registry or extra_corpora) to a local file or a hub dataset; local rows counted."""
    if params.get("solution_source") != "corpus":
        return []
    from .corpus import REEXECUTE_CHOICES, CorpusError, corpus_rows, resolve_corpus

    if params.get("corpus_reexecute", "no") not in REEXECUTE_CHOICES:
        raise ParamsError(f"corpus_reexecute is '{params['corpus_reexecute']}', not one of {REEXECUTE_CHOICES}")
    if not value:
        raise ParamsError("solution_source 'corpus' needs at least one corpus name")
    notes = []
    for name in value:
        try:
            _, (kind, where) = resolve_corpus(name, params.get("data_dir"), params.get("extra_corpora"))
            if kind == "local":
                notes.append(f"corpus {name}: {corpus_rows(name, params.get('data_dir'), params.get('extra_corpora'))}"
                             f" rows in {where}")
            else:
                notes.append(f"corpus {name}: from the hub ({where['path']}), not fetched by check")
        except CorpusError as error:
            raise ParamsError(f"'{name}': {error}") from error
    return notes


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


def check_plan(params_file, plan):
    """Run every check on every step (`plan` holds every parameter, resolved by `load_params`); returns notes,
    raises ParamsError naming the file and the parameter."""
    from .config import step_of
    from .params import STEPS, flat_params

    notes = []
    for step, full in plan.items():
        # the key as a params file writes it: benchmarks -> evaluation.benchmarks
        keys = {p.name: ".".join(p.path) for p in flat_params(STEPS[step_of(step)].config)}
        for name, check in CHECKS.items():
            if name in full:
                try:
                    notes += [f"{step}: {note}" for note in check(full[name], full)]
                except ParamsError as error:
                    raise ParamsError(f"{params_file}: parameter 'steps.{step}.{keys.get(name, name)}': "
                                      f"{error}") from error
    return notes
