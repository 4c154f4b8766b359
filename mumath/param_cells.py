"""Write each notebook's `parameters` cell from the schema: ``python -m mumath.param_cells``.

The cell is the papermill / Colab interface of a step; `mumath.params.parameters_cell` generates it (names,
defaults, doc lines), and tests/test_params.py fails while a committed cell differs from it.
"""
from .config import notebook_of
from .params import STEPS, parameters_cell


def write_parameters_cells(steps=None):
    """Rewrite each notebook's `parameters` cell from the schema; returns the notebooks that changed."""
    import nbformat

    changed = []
    for step in steps or STEPS:
        path = notebook_of(step)
        notebook = nbformat.read(path, as_version=4)
        cell = next(c for c in notebook.cells if "parameters" in c.get("metadata", {}).get("tags", []))
        source = parameters_cell(step)
        if cell.source != source:
            cell.source = source
            nbformat.write(notebook, path)
            changed.append(path)
    return changed


if __name__ == "__main__":
    for written in write_parameters_cells():
        print(f"wrote the parameters cell of {written}")
