"""The demo notebook runs top to bottom on the CPU with the shipped model (no cell may fail).

Tests `notebooks/demo.ipynb`.
"""
import shutil

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import REPO, checkout_env

pytestmark = pytest.mark.slow  # the whole notebook


def test_demo_notebook_executes(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("CSP_JAX_DATA", str(data_dir))
    monkeypatch.setenv("PYTHONPATH", checkout_env()["PYTHONPATH"])  # the kernel imports this checkout
    work = tmp_path / "notebooks"
    work.mkdir()
    shutil.copy(REPO / "notebooks" / "demo.ipynb", work)
    notebook = nbformat.read(work / "demo.ipynb", as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(work)}}).execute()  # raises on any cell error
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "perov5_cpu" in text and "match:" in text and "trained steps: 2" in text
    for formula in ("SrTiO3", "NaNbO3", "KSbO3"):
        assert (work / "demo_predictions" / formula / "rank01.png").is_file()
    figures = sum(1 for o in outputs if "image/png" in o.get("data", {}))
    assert figures >= 4, f"{figures} figures shown"  # structures, chains, comparison, Figure 2
