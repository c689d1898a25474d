"""The tutorial notebook runs top to bottom (with a small training budget), so it never rots."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).parents[1] / "examples" / "tutorial.ipynb"


@pytest.mark.slow
def test_the_tutorial_notebook_runs_top_to_bottom(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("SLM_TUTORIAL_STEPS", os.environ.get("SLM_TUTORIAL_STEPS", "30"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    print(f"tutorial ran in {time.perf_counter() - start:.0f} s")
    outputs = "".join(
        out.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert "round trip exact" in outputs
    assert "same logits after reloading: True" in outputs
    assert "Python docs:" in outputs
    images = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert images, "the loss plot is shown inline"
