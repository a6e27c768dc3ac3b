"""The label-noise audit: photos ranked by how little the model believes their given label."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from training.audit import rank_doubts, write_doubts_csv
from training.data import Sample
from training.evaluation import Evaluation

LABELS = ("ivory", "not_ivory")


def _evaluation(labels: list[str], ivory_scores: list[float]) -> Evaluation:
    samples = [Sample(Path(f"p{i}.jpg"), label, f"g{i}", "train", description=f"object {i}")
               for i, label in enumerate(labels)]
    probabilities = np.array([[score, 1 - score] for score in ivory_scores])
    return Evaluation(samples, np.log(probabilities), probabilities, {}, [])


def test_doubts_rank_by_the_score_of_the_given_label():
    evaluation = _evaluation(["ivory", "not_ivory", "ivory", "not_ivory"], [0.9, 0.95, 0.3, 0.2])
    doubts = rank_doubts(evaluation, LABELS)
    # given-label scores: 0.9, 0.05, 0.3, 0.8 -> the not_ivory photo scored 0.95 ivory is the strongest doubt
    assert [d.sample.path.name for d in doubts] == ["p1.jpg", "p2.jpg", "p3.jpg", "p0.jpg"]
    assert doubts[0].label_score == pytest.approx(0.05) and doubts[0].top_label == "ivory"
    assert doubts[0].top_score == pytest.approx(0.95)


def test_doubts_csv_keeps_every_photo_in_rank_order(tmp_path):
    evaluation = _evaluation(["ivory", "not_ivory", "ivory"], [0.6, 0.2, 0.1])  # given-label scores 0.6, 0.8, 0.1
    path = tmp_path / "audit" / "doubts.csv"
    write_doubts_csv(rank_doubts(evaluation, LABELS), path)
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert [row["path"] for row in rows] == ["p2.jpg", "p0.jpg", "p1.jpg"]
    assert [row["rank"] for row in rows] == ["1", "2", "3"]
    assert rows[0]["label_score"] == "0.1000" and rows[0]["top_label"] == "not_ivory"
    assert rows[0]["description"] == "object 2"


@pytest.mark.slow
def test_audit_finds_planted_wrong_labels(tiny_run, tmp_path):
    """Photos given a wrong label in a CSV come out at the top of the audit of a model that never saw that CSV."""
    from training.evaluate import main

    photos = sorted(tiny_run["data"].rglob("*.jpg"))
    # Two horn and two ivory photos called not_ivory: the tiny model tells those two shapes apart most surely.
    planted = {photos[0].name, photos[7].name, photos[20].name, photos[25].name}
    manifest = tmp_path / "relabelled.csv"
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(("path", "label"))
        for photo in photos:
            writer.writerow((photo, "not_ivory" if photo.name in planted else photo.parent.name))
    audit = tmp_path / "doubts.csv"
    assert main(["--model", str(tiny_run["model"]), "--data", str(manifest), "--split", "all", "--audit", str(audit)]) == 0
    ranked = [Path(row["path"]).name for row in csv.DictReader(audit.open(encoding="utf-8"))]
    assert len(ranked) == len(photos)
    assert set(ranked[: len(planted)]) == planted
