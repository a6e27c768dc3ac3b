"""The HTML evaluation report: one self-contained page with every section, and the ranking curves behind it."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the evaluation report needs the [train] extra: pip install '.[train]'")

from training.metrics import precision_recall_curve, roc_curve  # noqa: E402
from training.report import GALLERY_SIZE, OPEN_WORLD_GALLERY_SIZE, write_report  # noqa: E402

SECTIONS = ("Per-label metrics", "Confusion matrix", "ROC and precision-recall curves", "Calibration",
            "Operating points and decisions", "Open world", "Accuracy by source", "Errors by kind", "Worst mistakes",
            "Doubtful labels", "How this model was trained")


@pytest.fixture(scope="module")
def evaluated(tiny_run):
    from training.evaluation import evaluate
    from training.split import load_split
    from wildvision import Classifier

    classifier = Classifier(tiny_run["model"])
    return evaluate(classifier, load_split(classifier.info.training)), classifier.info


@pytest.fixture(scope="module")
def report(evaluated, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("report") / "nested" / "report.html"
    write_report(*evaluated, path)
    return path.read_text(encoding="utf-8")


def _table_rows(page: str, table_id: str) -> list[list[str]]:
    """The cells of one table of the page, heading row first."""
    table = re.search(rf'<table id="{table_id}">(.*?)</table>', page, re.S).group(1)
    return [re.findall(r"<t[hd]>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)]


def _section(page: str, title: str) -> str:
    return re.search(rf"<h2>{title}</h2>(.*?)</section>", page, re.S).group(1)


@pytest.mark.parametrize(
    ("scores", "is_positive", "auc", "average_precision"),
    [
        ([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0], 1.0, 1.0),  # perfect ranking
        ([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], 0.0, 0.5 * 1 / 3 + 0.5 * 2 / 4),  # reversed: positives found 3rd and 4th
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75, 0.5 * 1 + 0.5 * 2 / 3),  # 3 of 4 positive-negative pairs in order
        ([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0], 0.5, 0.5),  # all tied: one threshold, chance ranking
    ],
)
def test_roc_and_precision_recall_on_known_rankings(scores, is_positive, auc, average_precision):
    scores, is_positive = np.array(scores), np.array(is_positive, dtype=bool)
    roc, pr = roc_curve(scores, is_positive), precision_recall_curve(scores, is_positive)
    assert roc.area == pytest.approx(auc) and pr.area == pytest.approx(average_precision)
    assert (roc.x[0], roc.y[0], roc.x[-1], roc.y[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(roc.x) >= 0) and np.all(np.diff(pr.x) >= 0)
    assert (pr.x[0], pr.y[0], pr.x[-1]) == (0.0, 1.0, 1.0)


def test_ranking_curves_need_positives_and_negatives():
    with pytest.raises(ValueError, match="both positive and negative"):
        roc_curve(np.array([0.2, 0.7]), np.array([True, True]))
    with pytest.raises(ValueError, match="both positive and negative"):
        precision_recall_curve(np.array([0.2, 0.7]), np.array([False, False]))


@pytest.mark.slow
def test_report_is_one_self_contained_page(report, evaluated):
    evaluation, info = evaluated
    assert report.startswith("<!DOCTYPE html>") and report.count("<html") == 1 and report.rstrip().endswith("</html>")
    assert 'src="http' not in report and "<script" not in report and "<link" not in report
    assert all(f"<h2>{title}</h2>" in report for title in SECTIONS)
    assert report.count("data:image/png;base64,") == 3  # confusion matrix, curves, reliability diagrams
    assert info.full_name in report and f"<td>{len(evaluation.samples)}</td>" in report


@pytest.mark.slow
def test_per_label_table_matches_the_metrics(report, evaluated):
    evaluation, info = evaluated
    heading, *rows = _table_rows(report, "per-label")
    assert heading == ["label", "prohibited", "photos", "precision", "recall", "F1"]
    assert [row[0] for row in rows] == list(info.labels)
    for label, prohibited, photos, precision, recall, f1 in rows:
        expected = evaluation.metrics["per_label"][label]
        assert prohibited == ("yes" if label in info.operating_points else "no")
        assert int(photos) == expected["photos"]
        assert [_number(precision), _number(recall), _number(f1)] == [
            expected["precision"], expected["recall"], expected["f1"]]


@pytest.mark.slow
def test_errors_by_kind_worst_first_and_decisions_as_measured(report, evaluated):
    evaluation, _ = evaluated
    _, *kinds = _table_rows(report, "kinds")
    accuracies = [float(row[2].split()[0]) for row in kinds]  # "0.9000 (0.5958–0.9821)": rate, then interval
    assert accuracies == sorted(accuracies) and sum(int(row[1]) for row in kinds) == len(evaluation.samples)
    _, *decisions = _table_rows(report, "decisions")
    rates = [None if rate == "n/a" else float(rate) for _, rate in decisions]
    assert rates == list(evaluation.metrics["decisions"].values())


@pytest.mark.slow
def test_open_world_section_shows_false_alarms_per_source_and_the_nearest_ones(report, evaluated):
    evaluation, info = evaluated
    heading, *rows = _table_rows(report, "open-world-sources")
    assert heading[:2] == ["source", "harmless photos"]
    by_source = evaluation.metrics["decisions_by_source"]
    for source, photos, flagged, blocked in rows:
        assert int(photos) == by_source[source]["harmless"]
        assert _number(flagged.split()[0]) == by_source[source]["harmless_flagged"]
        low, high = (float(bound) for bound in flagged.split()[1].strip("()").split("–"))
        assert low <= by_source[source]["harmless_flagged"] <= high
    harmless = sum(s.label not in info.operating_points for s in evaluation.samples)
    gallery = re.search(r'id="open-world-gallery">(.*?)</div>', report, re.S).group(1)
    assert gallery.count("<figure>") == min(harmless, OPEN_WORLD_GALLERY_SIZE)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", gallery)
    scores = [float(caption.split("<br>")[0].split()[-1]) for caption in captions]
    assert scores == sorted(scores, reverse=True)  # the harmless photos closest to a false alarm come first


@pytest.mark.slow
def test_provenance_names_every_source_and_the_loss_per_epoch(report, evaluated):
    _, info = evaluated
    _, *sources = _table_rows(report, "provenance-data")
    assert [row[0] for row in sources] == list(info.training["data"]["datasets"])
    _, *losses = _table_rows(report, "provenance-loss")
    assert [float(loss) for _, loss in losses] == info.training["history"]["loss"]


@pytest.mark.slow
def test_gallery_shows_the_mistakes(report, evaluated, tmp_path):
    evaluation, info = evaluated
    wrong = evaluation.probabilities.argmax(axis=1) != np.array([info.labels.index(s.label) for s in evaluation.samples])
    assert ("data:image/jpeg;base64," in _section(report, "Worst mistakes")) == bool(wrong.any())
    # Shifting every row's scores by one label makes every photo a mistake, so every gallery fills up.
    shifted = dataclasses.replace(evaluation, probabilities=np.roll(evaluation.probabilities, 1, axis=1))
    write_report(shifted, info, tmp_path / "wrong.html")
    page = (tmp_path / "wrong.html").read_text(encoding="utf-8")
    thumbnails = _section(page, "Worst mistakes").count("data:image/jpeg;base64,")
    assert 0 < thumbnails <= 2 * GALLERY_SIZE * len(info.operating_points)
    assert evaluation.samples[0].path.name in page


@pytest.mark.slow
def test_evaluate_command_writes_the_report(tiny_run, tmp_path):
    from training.evaluate import main

    path = tmp_path / "report.html"
    assert main(["--model", str(tiny_run["model"]), "--data", str(tiny_run["data"]), "--report", str(path)]) == 0
    assert "<h2>Worst mistakes</h2>" in path.read_text(encoding="utf-8")


def _number(cell: str) -> float | None:
    """A table cell as the metric it shows: n/a is an undefined metric."""
    return None if cell == "n/a" else float(cell)
