"""The Python API on the shipped model: every input type, calibrated scores, decisions, overrides, bad models."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import identity_onnx, make_photo
from wildvision import Classifier, ImageLoadError, ModelFormatError, OperatingPoint
from wildvision.classifier import decide


@pytest.fixture(scope="module")
def classifier(shipped_model) -> Classifier:
    return Classifier(shipped_model)


@pytest.fixture
def photo_file(tmp_path) -> Path:
    # PNG and small: every input route decodes to exactly the same pixels.
    path = tmp_path / "listing.png"
    make_photo("ivory", 1, size=(320, 240)).save(path)
    return path


def test_every_input_type_gives_the_same_scores(classifier, photo_file):
    data = photo_file.read_bytes()
    sources = [str(photo_file), photo_file, data, bytearray(data), io.BytesIO(data), Image.open(photo_file),
               np.asarray(Image.open(photo_file).convert("RGB"))]
    reference = classifier.predict(photo_file).scores
    for source in sources:
        assert classifier.predict(source).scores == pytest.approx(reference, abs=1e-6), type(source)


def test_prediction_is_calibrated_complete_and_versioned(classifier, photo_file):
    prediction = classifier.predict(photo_file)
    info = classifier.info
    assert set(prediction.scores) == set(info.labels)
    assert sum(prediction.scores.values()) == pytest.approx(1.0)
    assert prediction.label == max(prediction.scores, key=prediction.scores.get)
    assert prediction.decision == decide(prediction.scores, info.operating_points)
    assert (prediction.model_name, prediction.model_version) == (info.name, info.version)
    batch = np.stack([np.zeros((3, info.preprocessing.input_size, info.preprocessing.input_size), np.float32)])
    logits = classifier.logits(batch)[0].astype(np.float64) / info.temperature
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert classifier.predict_tensors(batch)[0].scores == pytest.approx(dict(zip(info.labels, expected)))


def test_batch_equals_one_by_one(classifier):
    photos = [make_photo(label, seed) for label in ("ivory", "not_ivory") for seed in range(3)]
    batch = classifier.predict_batch(photos, batch_size=4)
    assert [p.scores for p in batch] == [pytest.approx(classifier.predict(photo).scores, abs=1e-6) for photo in photos]


def test_one_instance_is_safe_across_threads(classifier):
    photos = [make_photo("ivory" if i % 2 else "not_ivory", i) for i in range(12)]
    serial = [classifier.predict(photo).scores for photo in photos]
    results: dict[int, dict] = {}

    def work(index: int) -> None:
        for _ in range(3):
            results[index] = classifier.predict(photos[index]).scores

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(photos))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(len(photos))] == [pytest.approx(s, abs=1e-6) for s in serial]


def test_platform_operating_points_override_the_shipped_ones(shipped_model, photo_file):
    prohibited = next(iter(Classifier(shipped_model).info.operating_points))
    always = Classifier(shipped_model, operating_points={prohibited: OperatingPoint(review=0.0, block=0.0)})
    never = Classifier(shipped_model, operating_points={})
    assert always.predict(photo_file).decision == "block"
    assert never.predict(photo_file).decision == "allow"


def test_decide_takes_the_most_severe_label():
    points = {"ivory": OperatingPoint(0.3, 0.9), "horn": OperatingPoint(0.5, 0.8)}
    assert decide({"ivory": 0.1, "horn": 0.1, "other": 0.8}, points) == "allow"
    assert decide({"ivory": 0.35, "horn": 0.1, "other": 0.55}, points) == "review"
    assert decide({"ivory": 0.35, "horn": 0.85, "other": 0.0}, points) == "block"


def test_unreadable_photo_names_the_file(classifier, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a photo")
    with pytest.raises(ImageLoadError, match="broken.jpg"):
        classifier.predict(broken)


def test_missing_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        Classifier(tmp_path / "absent.onnx")


def test_a_file_that_is_not_onnx_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ModelFormatError, match="not a readable ONNX model"):
        Classifier(path)


def test_an_onnx_model_without_wildvision_metadata_is_refused(tmp_path):
    with pytest.raises(ModelFormatError, match="not a wildvision model"):
        Classifier(identity_onnx(tmp_path / "plain.onnx", 2, None))


def test_metadata_that_disagrees_with_the_graph_is_refused(tmp_path, shipped_model):
    metadata = Classifier(shipped_model).info.to_json()  # labels for 2 outputs
    with pytest.raises(ModelFormatError, match="outputs"):
        Classifier(identity_onnx(tmp_path / "wrong.onnx", 5, metadata))
