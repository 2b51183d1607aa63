"""Every notebook in notebooks/ runs top to bottom without an error (one test per notebook).

Notebooks are committed without outputs; here they execute in a fresh `python3` kernel with
notebooks/ as the working directory, each cell allowed 900 s: with two test workers a notebook may be the
first to ask for a cached quick run and train it (about a minute on 2 idle cores, several on busy ones).
"""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        f"{name} is committed with outputs; clear them"
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
