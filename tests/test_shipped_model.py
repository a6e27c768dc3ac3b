"""The shipped model on the shared photos it never trained on: the figures its model card states, reproduced."""

from __future__ import annotations

import pytest

from conftest import EVERYDAY_DATA, SHARED_DATA

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA.is_dir() and EVERYDAY_DATA.is_dir()),
    reason=f"needs the shared labelled photos at {SHARED_DATA.parent} (absent in a fresh clone)",
)

LISTED_KINDS = ("clothing_", "furniture", "glass", "silverware")  # harmless things listed every day
SOURCES = (SHARED_DATA, EVERYDAY_DATA)  # in the order the model's training config records them


@pytest.fixture(scope="module")
def evaluation(shipped_model):
    from training.evaluation import evaluate
    from training.split import load_split
    from wildvision import Classifier

    classifier = Classifier(shipped_model)
    return evaluate(classifier, load_split(classifier.info.training, data=SOURCES)), classifier.info


def test_the_val_photos_are_the_ones_held_out_in_training(shipped_model):
    from training.data import manifest_hash, prepare_samples_like
    from wildvision import Classifier

    info = Classifier(shipped_model).info
    samples, _ = prepare_samples_like(info.training["config"], SOURCES)
    assert manifest_hash(samples) == info.training["data"]["manifest_sha256"]


def test_everyday_val_photos_are_allowed(evaluation):
    """The open world: at most 0.5 % of harmless everyday photos flagged, and none of them blocked."""
    result, _ = evaluation
    everyday = result.metrics["decisions_by_dataset"]["everyday-v1"]
    assert everyday["harmless"] > 800 and everyday["prohibited"] == 0
    assert everyday["harmless_flagged"] <= 0.005
    assert everyday["harmless_blocked"] <= 0.0005


def test_met_val_accuracy_reaches_the_bar_and_matches_the_model_file(evaluation):
    result, info = evaluation
    met = result.metrics["accuracy_by_source"]["met"]
    assert met["photos"] == info.metrics["accuracy_by_source"]["met"]["photos"]
    # 1.1.0 does not reach the release target of 0.94 (see its model card); this guards against falling further.
    assert met["accuracy"] >= 0.92
    # onnxruntime and PyTorch may round a borderline photo differently: one photo of slack.
    assert met["accuracy"] == pytest.approx(info.metrics["accuracy_by_source"]["met"]["accuracy"], abs=1.5 / met["photos"])


def test_listed_harmless_photos_are_almost_never_blocked(evaluation):
    result, _ = evaluation
    listed = {kind: value for kind, value in result.metrics["decisions_by_kind"].items()
              if kind.startswith(LISTED_KINDS)}
    photos = sum(value["harmless"] for value in listed.values())
    blocked = sum(value["harmless_blocked"] * value["harmless"] for value in listed.values())
    assert photos > 300
    assert blocked / photos <= 0.005


def test_explanation_points_at_the_ivory_object_in_a_listing_scene(shipped_model):
    """A real ivory carving placed on one side of a phone photo of clothing: the ivory heat lies on that side."""
    import csv

    import numpy as np
    from PIL import Image

    from wildvision import Classifier

    rows = list(csv.DictReader((SHARED_DATA / "manifest.csv").open(encoding="utf-8")))
    carving = next(r for r in rows if r["split"] == "val" and r["source"] == "met" and r["label"] == "ivory")
    clothes = next(r for r in rows if r["split"] == "val" and r["source"] == "clothing")
    scene = Image.open(SHARED_DATA / clothes["path"]).convert("RGB").resize((600, 600))
    scene.paste(Image.open(SHARED_DATA / carving["path"]).convert("RGB").resize((270, 270)), (15, 165))
    explanation = Classifier(shipped_model).explain(scene, "ivory")
    left, right = explanation.heatmap[:, :300].mean(), explanation.heatmap[:, 300:].mean()
    assert left > 2 * right
    assert np.asarray(explanation.overlay()).shape == (600, 600, 3)
