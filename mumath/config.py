"""Run parameters: a YAML file validated against the notebooks' own `parameters` cells.

A params file looks like::

    run: quickstart            # outputs/<run>/
    seed: 0                    # shared: given to every step whose notebook declares it
    model: embedded
    steps:                     # the steps to run, in recipe order, each with its own parameters
      evaluate:
        benchmarks: [gsm8k]
      evaluate.base:           # a variant: the same notebook again, outputs in <run>/evaluate.base/
        model: embedded

A step key is a step name or ``<step>.<variant>`` (the ablation trains stage 2 twice and evaluates four
models in one run). A variant runs its step's notebook with its own parameters and its own output folder,
which its notebook gets as ``step_name``; it runs after every step of an earlier recipe stage, in file order
within its stage. Only notebooks that declare ``step_name`` (training and evaluation) take variants.

The `parameters` cell of each notebook is the schema: a key no notebook declares, or a value whose
type differs from the notebook's default, fails before anything runs, naming the key and the file.
"""
import ast
import re
from pathlib import Path

import yaml

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
RUNNER_PARAMS = {"run_dir", "step_name"}  # injected by the runner, not set by the user
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


def _type_ok(value, default):
    if default is None or value is None:
        return True  # None defaults mean "optional; any type"
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(default))


def _type_name(value):
    return "null" if value is None else type(value).__name__


def load_params(path):
    """Read and validate a params file -> (run name, {step: parameters for its notebook})."""
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
    plan, declared_anywhere = {}, set()
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
        defaults = notebook_parameters(notebook)
        if step != step_of(step) and "step_name" not in defaults:
            raise ParamsError(f"{path}: 'steps.{step}': step '{step_of(step)}' takes no variants (its notebook "
                              f"{notebook.name} writes to one fixed folder; it declares no step_name)")
        declared_anywhere |= set(defaults)
        for key, value in overrides.items():
            if key not in defaults or key in RUNNER_PARAMS:
                raise ParamsError(f"{path}: unknown parameter 'steps.{step}.{key}' "
                                  f"(notebook {notebook.name} declares: {sorted(set(defaults) - RUNNER_PARAMS)})")
        params = {key: value for key, value in shared.items() if key in defaults}
        params.update(overrides)
        for key, value in params.items():
            if not _type_ok(value, defaults[key]):
                where = f"steps.{step}.{key}" if key in overrides else key
                raise ParamsError(f"{path}: parameter '{where}' should be {_type_name(defaults[key])} "
                                  f"(like the default {defaults[key]!r}), got {_type_name(value)} {value!r}")
        plan[step] = params
    unknown_shared = set(shared) - declared_anywhere
    if unknown_shared:
        raise ParamsError(f"{path}: unknown parameter(s) {sorted(unknown_shared)}: no step's notebook declares them")
    return str(raw["run"]), dict(sorted(plan.items(), key=lambda item: step_order(item[0])))  # stable: file order


def refuse_secret_names(path, shared, steps):
    """A credential-looking key is refused before anything else looks at it (its value is never echoed)."""
    named = [key for key in shared if is_secret_name(key)]
    named += [f"steps.{step}.{key}" for step, overrides in steps.items() if isinstance(overrides, dict)
              for key in overrides if is_secret_name(key)]
    if named:
        raise ParamsError(f"{path}: parameter '{named[0]}' looks like a secret; secrets come from the "
                          "environment (name the variable in a '<name>_env' parameter, e.g. api_key_env)")


def redact(value):
    """A copy of `value` with anything under a secret-looking key replaced (manifests never hold secrets)."""
    if isinstance(value, dict):
        return {key: "<redacted>" if is_secret_name(key) else redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value


def is_secret_name(name):
    return bool(SECRET_NAME.search(str(name)))
