"""The add-a-label notebook runs top to bottom (on generated photos), so it never rots."""

from __future__ import annotations

import pytest

from conftest import REPO

nbclient = pytest.importorskip("nbclient", reason="running the notebook needs the [test] extra")
nbformat = pytest.importorskip("nbformat", reason="running the notebook needs the [test] extra")
pytest.importorskip("torch", reason="the notebook trains a model: it needs the [train] extra")


@pytest.mark.slow
def test_add_a_label_notebook_runs_and_builds_a_three_label_model(tmp_path, monkeypatch):
    monkeypatch.setenv("WILDVISION_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("WILDVISION_NOTEBOOK_WORK", str(tmp_path))
    notebook = nbformat.read(REPO / "notebooks" / "add_a_label.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=900, resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()

    from wildvision import Classifier

    assert Classifier(tmp_path / "wildvision-ivory-lookalikes.onnx").info.labels == ("ivory", "lookalike", "not_ivory")
    assert "<h2>Doubtful labels</h2>" in (tmp_path / "report.html").read_text(encoding="utf-8")
    last_output = "".join(output.get("text", "") for output in notebook.cells[-2].outputs)
    assert last_output.startswith(("ivory", "lookalike", "not_ivory"))
