"""Explanations (class activation maps from the graph) and embeddings, on the tiny model and synthetic maps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import identity_onnx, make_photo
from wildvision import Classifier, ModelFormatError, OperatingPoint, Preprocessing
from wildvision.explain import Explanation, heatmap_on_photo

SQUASH = Preprocessing(64, "squash", (0.5,) * 3, (0.5,) * 3)
CROP = Preprocessing(64, "center_crop", (0.5,) * 3, (0.5,) * 3)


def _peak_cell_map(row: int, column: int, side: int = 4) -> np.ndarray:
    activation = np.full((side, side), -1.0, dtype=np.float32)  # negative evidence everywhere else
    activation[row, column] = 5.0
    return activation


def test_heatmap_follows_the_squashed_geometry():
    photo = Image.new("RGB", (400, 200))
    heatmap = heatmap_on_photo(_peak_cell_map(0, 3), photo, SQUASH)
    assert heatmap.shape == (200, 400) and heatmap.min() >= 0 and heatmap.max() == pytest.approx(1, abs=0.05)
    row, column = np.unravel_index(heatmap.argmax(), heatmap.shape)
    assert row < 50 and column >= 300  # the top-right cell of a 4x4 grid over the whole photo


def test_heatmap_leaves_what_the_crop_cut_off_cold():
    photo = Image.new("RGB", (400, 200))
    heatmap = heatmap_on_photo(_peak_cell_map(3, 0), photo, CROP)
    assert heatmap[:, :100].max() == 0 and heatmap[:, 300:].max() == 0  # outside the centre square
    row, column = np.unravel_index(heatmap.argmax(), heatmap.shape)
    assert row >= 150 and 100 <= column < 150  # bottom-left cell of the centre square


def test_a_map_without_evidence_stays_cold():
    heatmap = heatmap_on_photo(np.full((4, 4), -3.0, np.float32), Image.new("RGB", (40, 40)), SQUASH)
    assert heatmap.max() == 0


def test_overlay_is_the_photo_with_heat_blended_in():
    photo = Image.new("RGB", (80, 40), (128, 128, 128))
    heatmap = np.zeros((40, 80), np.float32)
    heatmap[:, 40:] = 1.0
    overlay = np.asarray(Explanation("ivory", 0.9, heatmap, photo).overlay(), dtype=int)
    assert overlay.shape == (40, 80, 3)
    cold, hot = overlay[20, 10], overlay[20, 70]
    assert hot[0] > cold[0] and hot[1] > cold[1] and cold[2] > hot[2]  # yellow where hot, blue where cold


def test_an_overlay_drawn_on_the_full_size_photo_keeps_the_heat_where_it_was():
    """A large JPEG is scored at reduced scale; a reviewer gets the overlay at the photo's own size."""
    scored = Image.new("RGB", (80, 40), (128, 128, 128))
    heatmap = np.zeros((40, 80), np.float32)
    heatmap[:, 40:] = 1.0
    full = Image.new("RGB", (320, 160), (128, 128, 128))
    overlay = np.asarray(Explanation("ivory", 0.9, heatmap, scored).overlay(full), dtype=int)
    assert overlay.shape == (160, 320, 3)
    cold, hot = overlay[80, 40], overlay[80, 280]
    assert hot[0] > cold[0] and cold[2] > hot[2]


@pytest.mark.slow
def test_explain_and_embed_on_a_real_model(tiny_run):
    classifier = Classifier(tiny_run["model"])
    photo = make_photo("ivory", 3, size=(200, 150))
    explanation = classifier.explain(photo)
    first_prohibited = next(iter(classifier.info.operating_points))  # the default, as the model file lists them
    assert explanation.label == first_prohibited
    assert explanation.heatmap.shape == (150, 200) and 0 <= explanation.heatmap.min() <= explanation.heatmap.max() <= 1
    assert explanation.score == pytest.approx(classifier.predict(photo).scores[first_prohibited], abs=1e-6)
    assert classifier.explain(photo, "not_ivory").label == "not_ivory"
    with pytest.raises(ValueError, match="unknown label"):
        classifier.explain(photo, "pangolin")

    copies = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.resize((180, 135)),
              make_photo("not_ivory", 8, size=(200, 150))]
    vectors = classifier.embed(copies)
    assert vectors.shape[0] == 4 and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    similarity = vectors @ vectors[0]
    assert min(similarity[1], similarity[2]) > similarity[3]  # a re-posted copy is closer than another photo


def test_explain_maps_the_frame_that_decided_an_animation(tiny_run, tmp_path):
    """`predict` scores an animation by its most prohibited frame; `explain` shows a reviewer that same frame, not a
    harmless cover."""
    classifier = Classifier(tiny_run["model"])
    prohibited = next(iter(classifier.info.operating_points))
    frames = [make_photo(label, seed, size=(200, 150)) for label, seed in (("not_ivory", 1), (prohibited, 3))]
    scores = [classifier.predict(frame).scores[prohibited] for frame in frames]
    assert scores[1] > scores[0], "the second frame is the more prohibited one"
    animation = tmp_path / "cover-first.gif"
    frames[0].save(animation, save_all=True, append_images=frames[1:], duration=100)
    explanation = classifier.explain(animation)
    decided = classifier.predict(animation)
    assert explanation.score == pytest.approx(decided.scores[prohibited], abs=1e-6)
    shown = np.asarray(explanation.photo, dtype=float)
    distances = [np.abs(shown - np.asarray(frame.convert("P").convert("RGB"), dtype=float)).mean() for frame in frames]
    assert distances[1] < distances[0]  # the deciding frame is the one shown


@pytest.mark.slow
def test_operating_points_override_for_one_call(tiny_run):
    classifier = Classifier(tiny_run["model"])
    photo = make_photo("ivory", 5)
    everything_blocks = {label: OperatingPoint(review=0.0, block=0.0) for label in classifier.info.operating_points}
    assert classifier.predict(photo, operating_points=everything_blocks).decision == "block"
    assert classifier.predict(photo).decision == classifier.predict_batch([photo])[0].decision  # the model's own again
    # A policy that names no label keeps the model's thresholds: it cannot silently stop checking a label.
    assert classifier.predict_batch([photo], operating_points={})[0].decision == classifier.predict(photo).decision


def test_a_model_without_explanation_outputs_says_so(tmp_path, shipped_model):
    metadata = Classifier(shipped_model).info.to_json()
    classifier = Classifier(identity_onnx(tmp_path / "bare.onnx", 2, metadata))
    with pytest.raises(ModelFormatError, match="no embedding output"):
        classifier.embed([make_photo("ivory", 1)])
    with pytest.raises(ModelFormatError, match="no activation_map output"):
        classifier.explain(make_photo("ivory", 1))
