"""Notebooks are committed clean, with one `parameters` cell whose defaults parse."""
from pathlib import Path

import nbformat
import pytest

from mumath.config import STEPS, notebook_parameters

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks_and_they_are_steps():
    assert NOTEBOOKS
    assert {path.name for path in NOTEBOOKS} <= set(STEPS.values())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} has outputs: clear them"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_one_parameters_cell_and_a_kernel(path):
    notebook = nbformat.read(path, as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert notebook.metadata["kernelspec"]["name"] == "python3" and notebook.metadata["language_info"]["name"]
    assert "run_dir" in notebook_parameters(path)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_reads_every_parameter(path):
    """papermill's own parser must see what ours sees (it silently skips lines it cannot parse)."""
    import papermill

    assert set(papermill.inspect_notebook(str(path))) == set(notebook_parameters(path))
