"""Execute the recipe's notebooks with papermill: ``python -m mumath run params/<name>.yaml``.

Each step's notebook runs into ``outputs/<run>/<notebook>``; its parameters (validated by
`config.load_params`) come in through the `parameters` cell. A step is reused, not re-run, only when
its fingerprint is unchanged and its outputs are intact (``--force`` re-runs it). The fingerprint
(`step_fingerprint`) covers, for every step alike:

- its parameters and its notebook;
- the `mumath` package's files (code, registry, prompts, shipped data);
- its upstream inputs: every file in the output folders of the steps (and variants) of earlier recipe
  stages (`config.STEPS` order)
  (``<run>/<step>/``, see `config.step_output_dir`), and every file or folder the step recorded reading
  (`manifest.record_inputs`: data files, models, prompt folders), re-hashed now.

"Intact" means every file the step had written when it finished is still there, unchanged, and every
JSONL file is complete (no torn last line). A failing step keeps its partly executed notebook and
everything already written; later steps do not run. A failed re-run of a step that had finished never
damages its record: the attempt runs into its own notebook (``outputs/<run>/attempts/``) and its own entry
(the manifest's ``failed_attempts``); the step keeps its last good notebook and manifest entry, and becomes
the attempt only once the attempt has succeeded.
"""
import hashlib
import json
import sys
import time
from pathlib import Path

from .check import check_plan
from .config import (ParamsError, executed_notebook_name, load_params, notebook_of,
                     notebook_parameters, outputs_root, project_root, step_folders, step_order,
                     step_output_dir)
from .estimate import add_estimate_arguments, print_estimate
from .manifest import Manifest, folder_hashes, package_fingerprint, sha256_file, sha256_path
from .records import jsonl_is_complete

KERNEL_NAME = "python3"  # ipykernel's native spec: the interpreter running this runner (the project venv)
OUTPUTS = outputs_root()


def upstream_folders(run_dir, step):
    """Output folders of the steps (variants included) of earlier recipe stages than `step`: its possible
    inputs. A variant does not see its siblings (`evaluate.base` does not read `evaluate/`)."""
    return sorted((path for path in step_folders(run_dir) if step_order(path.name) < step_order(step)),
                  key=lambda path: (step_order(path.name), path.name))


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


def input_hashes(run_dir, step, recorded=()):
    """{name: sha256} of the step's upstream inputs as they are now (missing ones map to None)."""
    hashes = {}
    for folder in upstream_folders(run_dir, step):
        hashes[f"{folder.name}/"] = sha256_path(folder)
    for path in recorded:
        if Path(path).resolve().is_relative_to(step_output_dir(run_dir, step).resolve()):
            continue  # the step's own outputs (e.g. an evaluation it resumes) are not its inputs
        hashes[path] = sha256_path(path) if Path(path).exists() else None
    return hashes


def step_fingerprint(step, params, run_dir=None, recorded=()):
    """sha256 over what decides a step's results (see the module docstring)."""
    parts = {"params": params, "notebook": sha256_file(notebook_of(step)),
             "package": package_fingerprint(),
             "inputs": input_hashes(run_dir, step, recorded) if run_dir is not None else {}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def damaged_outputs(run_dir, step, recorded_outputs):
    """Names of the step's output files that are missing, changed or torn since it finished ([] if intact)."""
    folder = step_output_dir(run_dir, step)
    now = folder_hashes(folder) if folder.is_dir() else {}
    damaged = [name for name, sha in (recorded_outputs or {}).items() if now.get(name) != sha]
    damaged += [name for name in now if name.endswith(".jsonl") and not jsonl_is_complete(folder / name)]
    return sorted(set(damaged))


def reuse_verdict(run_dir, step, params, previous):
    """(reusable?, why not) for a step that ran before."""
    if previous.get("status") not in ("completed", "reused"):
        return False, None
    if previous.get("fingerprint") != step_fingerprint(step, params, run_dir, previous.get("recorded_inputs", ())):
        return False, "its parameters, notebook, package code or inputs changed since it finished"
    damaged = damaged_outputs(run_dir, step, previous.get("outputs"))
    if damaged:
        return False, f"its outputs are missing, changed or incomplete ({', '.join(damaged[:3])})"
    return True, None


def attempt_notebook(run_dir, step):
    """Where a re-run of a finished step writes its notebook: beside the good one, never over it."""
    folder = Path(run_dir) / "attempts"
    folder.mkdir(exist_ok=True)
    stem = Path(executed_notebook_name(step)).stem
    return folder / f"{stem}.{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6:06d}.ipynb"


def describe_failure(error):
    """The exception a step raised, as the person running it needs to read it (not papermill's wrapper)."""
    name, value = getattr(error, "ename", None), getattr(error, "evalue", None)
    if name:
        return f"{name}: {value}"
    return f"{type(error).__name__}: {error}"


def run(params_file, only=None, force=False, outputs=OUTPUTS, log_output=True):
    """Run the steps of a params file; returns the run folder. Raises on the first failing step."""
    run_name, plan = load_params(params_file)
    check_plan(params_file, plan)  # benchmarks, data files, prompt folders: before anything runs
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
            output = run_dir / executed_notebook_name(step)
            previous = manifest.step(step)
            reusable, why = reuse_verdict(run_dir, step, params, previous)
            if not force and reusable and output.exists():
                print(f"[mumath] {step}: finished before with the same parameters, code and inputs; "
                      f"reusing {output}")
                manifest.set_step(step, status="reused")
                continue
            reason = "forced" if force and reusable else why
            started = time.time()
            manifest.take_recorded_inputs()  # what earlier steps recorded is theirs
            # A step that finished before keeps its notebook and entry until this attempt has succeeded.
            good_before = previous.get("status") in ("completed", "reused") and output.exists()
            target = attempt_notebook(run_dir, step) if good_before else output
            print(f"[mumath] {step}: running {notebook_of(step).name} -> {target}" + (f" ({reason})" if reason else "")
                  + (f"; {output.name} stays until this attempt succeeds" if good_before else ""), flush=True)
            attempt = dict(step=step, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                           fingerprint=None, notebook=str(target), error=None, outputs=None,
                           git=manifest.data["git"])  # a later `--only` may run at another commit
            record = manifest.start_attempt(attempt) if good_before else manifest.set_step
            if not good_before:
                manifest.set_step(step, **{key: value for key, value in attempt.items() if key != "step"})
            manifest.add_inputs([notebook_of(step)])
            try:
                execute_notebook(step, params, run_dir, target, log_output)
            except Exception as error:
                record(step, status="failed", seconds=round(time.time() - started, 1),
                       error=describe_failure(error)[-2000:])
                if good_before:
                    print(f"[mumath] {step}: this attempt failed; the step keeps its finished notebook {output} "
                          f"and manifest entry; the attempt's notebook is {target}", file=sys.stderr)
                status = "failed"
                raise
            finally:
                recorded = manifest.take_recorded_inputs()
                record(step, recorded_inputs=recorded, data=Manifest.data_origins(recorded, run_dir))
            if good_before:
                target.replace(output)
                manifest.drop_attempt(attempt)
                if not any(target.parent.iterdir()):
                    target.parent.rmdir()  # no failed attempt to keep
            folder = step_output_dir(run_dir, step)
            manifest.set_step(step, **{key: value for key, value in attempt.items() if key != "step"})
            manifest.set_step(step, status="completed", seconds=round(time.time() - started, 1),
                              notebook=str(output), recorded_inputs=recorded,
                              data=Manifest.data_origins(recorded, run_dir),
                              fingerprint=step_fingerprint(step, params, run_dir, recorded),
                              outputs=folder_hashes(folder) if folder.is_dir() else {})
    except BaseException:
        status = "failed" if status == "completed" else status
        raise
    finally:
        manifest.finish(status)
    return run_dir


def quiet_kernel_manager():
    """jupyter_client's AsyncKernelManager, minus two things a person reads as failures on every run:

    - it sends SIGINT to the kernel before asking it to shut down, even when the kernel is idle (that
      is what prints ``[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel``): an idle kernel at the
      end of a notebook has nothing to interrupt, so shutdown goes straight to the shutdown request;
    - it talks to the kernel over TCP on localhost (ipykernel warns that this is unencrypted): local
      sockets (``ipc`` transport, files readable by this user only) are the right transport for a
      kernel on the same machine, and ipykernel does not warn about them.
    """
    from jupyter_client import AsyncKernelManager
    from traitlets import default

    class QuietKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self):
            return "ipc"

        async def _async_interrupt_kernel(self):
            if self.shutting_down:
                return  # the kernel is being shut down after the notebook finished: nothing to interrupt
            await super()._async_interrupt_kernel()

    return QuietKernelManager


def execute_notebook(step, params, run_dir, output, log_output=True):
    notebook = notebook_of(step)
    injected = {"run_dir": str(run_dir)}
    if "step_name" in notebook_parameters(notebook):
        injected["step_name"] = step  # where a variant writes: <run>/<step>.<variant>/
    run_notebook(notebook, output, dict(expand_run_dir(params, run_dir), **injected), log_output)


def run_notebook(notebook, output, parameters, log_output=True):
    """papermill, with the project's kernel, working directory and quiet kernel manager."""
    import papermill

    papermill.execute_notebook(
        str(notebook), str(output), parameters=parameters, kernel_name=KERNEL_NAME, cwd=str(project_root()),
        log_output=log_output, progress_bar=False, kernel_manager_class=quiet_kernel_manager())


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m mumath")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the steps of a params file with papermill")
    run_parser.add_argument("params", help="params/<name>.yaml")
    run_parser.add_argument("--only", metavar="STEP", help="run just this step (a step of the params file)")
    run_parser.add_argument("--force", action="store_true", help="re-run steps that finished before")
    run_parser.add_argument("--outputs", default=str(OUTPUTS), help="folder for run outputs")
    check_parser = commands.add_parser("check", help="validate params files without running")
    check_parser.add_argument("params", nargs="+")
    add_estimate_arguments(check_parser)
    push_parser = commands.add_parser("push", help="upload a stage's final model or the filtered data, with its "
                                                   "card, to the Hugging Face Hub (token: HF_TOKEN)")
    push_parser.add_argument("folder", help="<run>/stage1, <run>/stage2 (or a variant's folder) or <run>/filter")
    push_parser.add_argument("--repo-id", required=True, help="<user or org>/<name>")
    push_parser.add_argument("--public", action="store_true", help="create the repository public (default private)")
    args = parser.parse_args(argv)
    if args.command == "push":
        from .cards import CardError, push_folder

        try:
            print(f"[mumath] pushed: {push_folder(args.folder, args.repo_id, private=not args.public)}")
        except CardError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    try:
        if args.command == "check":
            for params_file in args.params:
                run_name, plan = load_params(params_file)
                for note in check_plan(params_file, plan):
                    print(f"  {note}")
                print(f"{params_file}: ok (run '{run_name}', steps {list(plan)})")
                print_estimate(args, params_file)
            return 0
        run_dir = run(args.params, only=args.only, force=args.force, outputs=args.outputs)
    except ParamsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        print(f"error: step failed: {describe_failure(error)}\n"
              f"The partly executed notebook (with the full traceback) and the manifest are in the run "
              f"folder.", file=sys.stderr)
        return 1
    print(f"[mumath] done: {run_dir}")
    return 0
