"""Run parameters: a YAML file validated against the typed schema of every step (`mumath.params`).

A params file looks like::

    run: quickstart            # outputs/<run>/
    seed: 0                    # a shared setting: given to every step that has it
    training: {finetune: lora} # a shared group: every training step (stage1, stage2 and their variants)
    evaluation: {limit: 2}     # a shared group: every evaluate step
    steps:                     # the steps to run, in recipe order, each with its own parameters
      evaluate:
        model: "{run_dir}/stage2/final"
      evaluate.base:           # a variant: the same notebook again, outputs in <run>/evaluate.base/
        model: embedded

A top-level key is a shared setting or group (`params.SHARED`), or an error: a name that means different
things in different steps (``limit``, ``max_rounds``, ``max_new_tokens``) lives in one group or step only.
A step key is a step name or ``<step>.<variant>`` (the ablation trains stage 2 twice and evaluates four
models in one run). A variant runs its step's notebook with its own parameters and its own output folder,
which its notebook gets as ``step_name``; it runs after every step of an earlier recipe stage, in file order
within its stage. Only training and evaluation take variants.

Unknown keys, wrong types and out-of-range values fail before anything runs, naming the file and the key.
docs/params.md has the layout and the groups.
"""
import ast
import re
from pathlib import Path

import yaml

from .params import RUNNER_FIELDS, SHARED, SchemaError, declared_names, resolve, to_flat
from .params import STEPS as SCHEMA

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
# Recipe order. A step whose notebook does not exist yet cannot be asked for.
STEPS = {"augment": "01_augment.ipynb", "synthesize": "02_synthesize.ipynb", "filter": "03_filter.ipynb",
         "stage1": "04_stage1.ipynb", "stage2": "05_stage2.ipynb", "evaluate": "06_evaluate.ipynb",
         "analysis": "07_analysis.ipynb"}
# Where each step writes its outputs, under the run folder. The runner treats the output folders of the
# steps before a step as that step's inputs (its reuse fingerprint covers their files), so a new step
# needs nothing but to write beneath <run_dir>/<its folder>/.
STEP_OUTPUTS = {step: step for step in STEPS}
# `anchors` holds YAML anchors that several steps merge (``evaluate.base: {<<: *evaluation, model: embedded}``);
# the runner reads it only through them.
TOP_LEVEL = {"run", "steps", "description", "anchors"}
RUNNER_PARAMS = set(RUNNER_FIELDS)  # injected by the runner, not set by the user
STEP_KEY = re.compile(r"^(?P<step>[a-z0-9]+)(?:\.(?P<variant>[A-Za-z0-9_-]+))?$")
# A parameter named like a credential ("api_key", "hf_token", "password"); "max_new_tokens" is not one.
SECRET_NAME = re.compile(r"(^|_)(api_?key|key|secret|password|passwd|token|access_token|auth)$", re.I)


class ParamsError(ValueError):
    pass


def project_root():
    """The repository root when running from a checkout (notebooks/ beside the package), else the cwd."""
    return REPO_ROOT if (REPO_ROOT / "notebooks").is_dir() else Path.cwd()


def outputs_root():
    return project_root() / "outputs"


def resolve_run_dir(run_dir):
    """A run folder as an absolute path; a relative one is under the project root, not the working
    directory, so a notebook opened from notebooks/ (``make lab``) still writes to ./outputs/<run>."""
    path = Path(run_dir).expanduser()
    return path if path.is_absolute() else (project_root() / path).resolve()


def step_of(key):
    """The recipe step a step key names: 'stage2.from_base' -> 'stage2' (None when it names none)."""
    match = STEP_KEY.match(str(key))
    return match["step"] if match and match["step"] in STEPS else None


def step_order(key):
    """Position of a step key's recipe step: steps run, and see each other's outputs, in this order."""
    return list(STEPS).index(step_of(key))


def notebook_of(key):
    return NOTEBOOK_DIR / STEPS[step_of(key)]


def executed_notebook_name(key):
    """'evaluate' -> 06_evaluate.ipynb; 'evaluate.base' -> 06_evaluate.base.ipynb (beside the outputs)."""
    name = STEPS[step_of(key)]
    variant = STEP_KEY.match(key)["variant"]
    return name if variant is None else name.replace(".ipynb", f".{variant}.ipynb")


def step_folders(run_dir):
    """The output folders under a run folder that belong to a step or a variant, by name ([] if none)."""
    run_dir = Path(run_dir)
    return sorted(path for path in run_dir.iterdir() if path.is_dir() and step_of(path.name)) \
        if run_dir.is_dir() else []


def step_output_dir(run_dir, step):
    """<run>/<step>/ for a step, <run>/<step>.<variant>/ for a variant."""
    return Path(run_dir) / (STEP_OUTPUTS[step] if step in STEP_OUTPUTS else step)


def notebook_parameters(notebook_path):
    """{name: default} from the cell tagged `parameters` (evaluated literals)."""
    import nbformat

    notebook = nbformat.read(notebook_path, as_version=4)
    cells = [cell for cell in notebook.cells if "parameters" in cell.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ParamsError(f"{notebook_path}: needs exactly one cell tagged 'parameters', found {len(cells)}")
    defaults = {}
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            defaults[target.id] = ast.literal_eval(node.value)
    return defaults


def load_params(path):
    """Read and validate a params file against the schema (`mumath.params`) -> (run name, {step key: the
    step's parameters, every one resolved, by the flat names of its notebook's `parameters` cell})."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of parameters")
    for key in ("run", "steps"):
        if key not in raw:
            raise ParamsError(f"{path}: missing parameter '{key}'")
    if not isinstance(raw["steps"], dict) or not raw["steps"]:
        raise ParamsError(f"{path}: 'steps' must map step names to their parameters")
    shared = {key: value for key, value in raw.items() if key not in TOP_LEVEL}
    refuse_secret_names(path, shared, raw["steps"])
    for key, value in shared.items():
        if key not in SHARED:
            raise ParamsError(f"{path}: parameter '{key}' is not a shared setting ({', '.join(SHARED)}); "
                              f"{where_declared(key)}")
        try:  # checked even where no step of this file takes it: a typo there is still a typo
            resolve(next(step for step, schema in SCHEMA.items() if key in schema.config.model_fields), {key: value})
        except SchemaError as error:
            raise ParamsError(f"{path}: {error}") from None
    plan = {}
    for step, overrides in raw["steps"].items():
        if step_of(step) is None:
            raise ParamsError(f"{path}: unknown step 'steps.{step}'; steps: {list(STEPS)}, or "
                              "<step>.<variant> with letters, digits, '_' or '-' after the dot")
        notebook = notebook_of(step)
        if not notebook.exists():
            raise ParamsError(f"{path}: step '{step}' has no notebook yet ({notebook.name})")
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise ParamsError(f"{path}: 'steps.{step}' must be a mapping of parameters")
        schema = SCHEMA[step_of(step)].config
        if step != step_of(step) and "step_name" not in schema.model_fields:
            raise ParamsError(f"{path}: 'steps.{step}': step '{step_of(step)}' takes no variants (it writes to "
                              "one fixed folder)")
        try:
            config = resolve(step_of(step), shared, overrides, where=f"steps.{step}")
        except SchemaError as error:
            raise ParamsError(f"{path}: {error}") from None
        plan[step] = {key: value for key, value in to_flat(step_of(step), config).items()
                      if key not in RUNNER_PARAMS}
    return str(raw["run"]), dict(sorted(plan.items(), key=lambda item: step_order(item[0])))  # stable: file order


def where_declared(key):
    """Where a key that is not a shared setting can be set, for the error message."""
    places = set()
    for step, schema in SCHEMA.items():
        for name in declared_names(schema.config):
            parts = name.split(".")
            if parts[-1] == key:
                places.add(f"'{name}' in the top-level group '{parts[0]}'" if len(parts) > 1 and parts[0] in SHARED
                           else f"'steps.{step}.{name}'")
    from .params import flat_params

    notebook_names = {".".join(p.path) for schema in SCHEMA.values() for p in flat_params(schema.config)
                      if p.name == key and len(p.path) > 1}
    if places:
        return "it can be set as " + ", ".join(sorted(places))
    if notebook_names:  # a notebook's flat name, e.g. teacher_model -> teacher: {model: ...}
        return "it is a notebook's name for " + ", ".join(f"'{name}'" for name in sorted(notebook_names)) + \
            "; in a params file write it inside its group (docs/params.md)"
    return "no step declares it"


def refuse_secret_names(path, shared, steps):
    """A credential-looking key is refused before anything else looks at it (its value is never echoed)."""
    named = secret_keys(shared)
    named += [f"steps.{step}.{key}" for step, overrides in steps.items() for key in secret_keys(overrides)]
    if named:
        raise ParamsError(f"{path}: parameter '{named[0]}' looks like a secret; secrets come from the "
                          "environment (name the variable in a '<name>_env' parameter, e.g. api_key_env)")


def secret_keys(values, where=""):
    """Dotted keys, groups included, that are named like a credential."""
    if not isinstance(values, dict):
        return []
    found = []
    for key, value in values.items():
        here = f"{where}.{key}" if where else str(key)
        found += [here] if is_secret_name(key) else secret_keys(value, here)
    return found


def redact(value):
    """A copy of `value` with anything under a secret-looking key replaced (manifests never hold secrets)."""
    if isinstance(value, dict):
        return {key: "<redacted>" if is_secret_name(key) else redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def is_secret_name(name):
    return bool(SECRET_NAME.search(str(name)))
