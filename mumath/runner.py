"""Execute the recipe's notebooks with papermill: ``python -m mumath run params/<name>.yaml``.

Each step's notebook runs into ``outputs/<run>/<notebook>``; its parameters (validated by
`config.load_params`) come in through the `parameters` cell. A step that finished before with the same
parameters and the same notebook is reused, not re-run (``--force`` re-runs it). A failing step keeps
its partly executed notebook and everything already written; later steps do not run.
"""
import hashlib
import json
import sys
import time
from pathlib import Path

from .config import NOTEBOOK_DIR, REPO_ROOT, STEPS, ParamsError, is_secret_name, load_params
from .estimate import add_estimate_arguments, print_estimate
from .manifest import Manifest, sha256_file

KERNEL_NAME = "python3"  # ipykernel's native spec: the interpreter running this runner (the project venv)
OUTPUTS = REPO_ROOT / "outputs"


def step_fingerprint(step, params):
    notebook = NOTEBOOK_DIR / STEPS[step]
    blob = json.dumps({"params": params, "notebook": sha256_file(notebook)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def expand_run_dir(value, run_dir):
    """'{run_dir}' in a string parameter becomes the run folder: a later step names an earlier one's output
    (``model: "{run_dir}/stage2/final"``) wherever `--outputs` puts the run."""
    if isinstance(value, str):
        return value.replace("{run_dir}", str(run_dir))
    if isinstance(value, list):
        return [expand_run_dir(item, run_dir) for item in value]
    if isinstance(value, dict):
        return {key: expand_run_dir(item, run_dir) for key, item in value.items()}
    return value


def refuse_secrets(params_file, plan):
    for step, params in plan.items():
        for key in params:
            if is_secret_name(key):
                raise ParamsError(f"{params_file}: parameter 'steps.{step}.{key}' looks like a secret; "
                                  "secrets come from the environment (name the variable in '<name>_env')")


def run(params_file, only=None, force=False, outputs=OUTPUTS, log_output=True):
    """Run the steps of a params file; returns the run folder. Raises on the first failing step."""
    import papermill

    run_name, plan = load_params(params_file)
    refuse_secrets(params_file, plan)
    if only is not None:
        if only not in plan:
            raise ParamsError(f"--only {only}: {params_file} has no step '{only}' (it has {list(plan)})")
        plan = {only: plan[only]}
    run_dir = (Path(outputs) / run_name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(run_dir, Path(params_file).resolve(), run_name, plan)
    status = "completed"
    try:
        for step, params in plan.items():
            fingerprint = step_fingerprint(step, params)
            output = run_dir / STEPS[step]
            previous = manifest.step(step)
            if not force and previous.get("status") in ("completed", "reused") \
                    and previous.get("fingerprint") == fingerprint and output.exists():
                print(f"[mumath] {step}: finished before with the same parameters; reusing {output}")
                manifest.set_step(step, status="reused")
                continue
            print(f"[mumath] {step}: running {STEPS[step]} -> {output}", flush=True)
            started = time.time()
            manifest.set_step(step, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                              fingerprint=fingerprint, notebook=str(output), error=None)
            manifest.add_inputs([NOTEBOOK_DIR / STEPS[step]])
            try:
                parameters = dict(expand_run_dir(params, run_dir), run_dir=str(run_dir))
                papermill.execute_notebook(
                    str(NOTEBOOK_DIR / STEPS[step]), str(output), parameters=parameters,
                    kernel_name=KERNEL_NAME, cwd=str(REPO_ROOT), log_output=log_output, progress_bar=False)
            except Exception as error:
                manifest.set_step(step, status="failed", seconds=round(time.time() - started, 1),
                                  error=f"{type(error).__name__}: {str(error)[-2000:]}")
                status = "failed"
                raise
            finally:
                manifest.fold_recorded_inputs()
            manifest.set_step(step, status="completed", seconds=round(time.time() - started, 1))
    except BaseException:
        status = "failed" if status == "completed" else status
        raise
    finally:
        manifest.finish(status)
    return run_dir


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mumath")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the steps of a params file with papermill")
    run_parser.add_argument("params", help="params/<name>.yaml")
    run_parser.add_argument("--only", choices=list(STEPS), help="run just this step")
    run_parser.add_argument("--force", action="store_true", help="re-run steps that finished before")
    run_parser.add_argument("--outputs", default=str(OUTPUTS), help="folder for run outputs")
    check_parser = commands.add_parser("check", help="validate params files without running")
    check_parser.add_argument("params", nargs="+")
    add_estimate_arguments(check_parser)
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            for params_file in args.params:
                run_name, plan = load_params(params_file)
                refuse_secrets(params_file, plan)
                print(f"{params_file}: ok (run '{run_name}', steps {list(plan)})")
                print_estimate(args, params_file)
            return 0
        run_dir = run(args.params, only=args.only, force=args.force, outputs=args.outputs)
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        print(f"error: step failed: {type(error).__name__}: {str(error)[:500]}\n"
              f"The partly executed notebook and the manifest are in the run folder.", file=sys.stderr)
        return 1
    print(f"[mumath] done: {run_dir}")
    return 0
