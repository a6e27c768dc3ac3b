"""The adapt-to-your-platform notebook runs top to bottom on generated photos, so the loop it shows never rots."""

from __future__ import annotations

import pytest

from conftest import REPO

nbclient = pytest.importorskip("nbclient", reason="running the notebook needs the [test] extra")
nbformat = pytest.importorskip("nbformat", reason="running the notebook needs the [test] extra")
pytest.importorskip("torch", reason="the notebook adapts a model: it needs the [train] extra")


@pytest.mark.slow
def test_adapt_notebook_runs_select_label_adapt_compare(tmp_path, monkeypatch):
    monkeypatch.setenv("WILDVISION_NOTEBOOK_WORK", str(tmp_path))
    notebook = nbformat.read(REPO / "notebooks" / "adapt_to_your_platform.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()

    from wildvision import Classifier

    adapted = Classifier(tmp_path / "wildvision-ivory-platform.onnx")
    assert adapted.info.labels == ("ivory", "not_ivory", "horn")
    assert "<h2>Per label</h2>" in (tmp_path / "compare.html").read_text(encoding="utf-8")
    last_output = "".join(output.get("text", "") for output in notebook.cells[-1].outputs)
    assert last_output.startswith("horn ") and "+adapted." in last_output
