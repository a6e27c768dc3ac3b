"""The Python API on the shipped model: every input type, calibrated scores, decisions, overrides, bad models."""

from __future__ import annotations

import ast
import hashlib
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, identity_onnx, make_photo
from PIL import Image, ImageDraw, ImageFilter

from wildvision import (
    Classifier,
    ImageLoadError,
    ModelFormatError,
    OperatingPoint,
    OperatingPointError,
)
from wildvision.classifier import PreparedPhoto, softmax, twin_path
from wildvision.decision import decide, decided_label
from wildvision.hashing import file_sha256


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
    assert prediction.top_label == max(prediction.scores, key=prediction.scores.get)
    assert prediction.decision == decide(prediction.scores, info.operating_points)
    assert (prediction.label is None) == (prediction.decision == "allow")
    assert (prediction.model_name, prediction.model_version) == (info.name, info.version)
    side = info.preprocessing.input_size
    batch = np.random.default_rng(0).normal(0, 1, (1, 3, side, side)).astype(np.float32)
    logits = classifier.logits(batch)[0].astype(np.float64) / info.temperature
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert classifier.score([PreparedPhoto(batch)])[0].scores == pytest.approx(dict(zip(info.labels, expected)))


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
    never = Classifier(shipped_model, operating_points={prohibited: OperatingPoint(review=1.0, block=1.0)})
    assert always.predict(photo_file).decision == "block"
    assert never.predict(photo_file).decision == "allow"
    assert always.predict(photo_file).thresholds == f"{prohibited}=0/0"  # every answer states what decided it


def test_an_empty_policy_keeps_the_models_own_thresholds(shipped_model, photo_file):
    own = Classifier(shipped_model)
    kept = Classifier(shipped_model, operating_points={})
    assert kept.info.operating_points == own.info.operating_points
    assert kept.predict(photo_file).decision == own.predict(photo_file).decision
    assert own.predict(photo_file, operating_points={}).thresholds == own.predict(photo_file).thresholds


@pytest.mark.parametrize("points, message", [
    ({"not_ivory": OperatingPoint(0.2, 0.9)}, "harmless labels"),  # would invert moderation
    ({"rhino_horn": OperatingPoint(0.2, 0.9)}, "does not have"),
    ({"ivory": (0.2, 0.9)}, "must be an OperatingPoint"),
    ([("ivory", OperatingPoint(0.2, 0.9))], "must map labels"),
])
def test_unsafe_operating_points_are_refused_with_a_reason(shipped_model, photo_file, points, message):
    with pytest.raises(OperatingPointError, match=message):
        Classifier(shipped_model, operating_points=points)
    with pytest.raises(OperatingPointError, match=message):  # per call too, not a KeyError or AttributeError later
        Classifier(shipped_model).predict(photo_file, operating_points=points)


@pytest.mark.parametrize("review, block", [(0.9, 0.2), (-0.1, 0.5), (0.5, 1.5), ("0.5", 0.9), (True, 1.0)])
def test_an_operating_point_must_be_ordered_numbers_in_the_unit_range(review, block):
    with pytest.raises(OperatingPointError):
        OperatingPoint(review, block)


def test_the_float_model_and_its_int8_twin_say_which_file_scored(shipped_model, photo_file):
    float32 = Classifier(shipped_model).predict(photo_file)
    int8 = Classifier(precision="int8").predict(photo_file)
    assert (float32.model_name, float32.model_version) == (int8.model_name, int8.model_version)
    assert (float32.model_precision, int8.model_precision) == ("float32", "int8")
    assert float32.model_digest.startswith("sha256:") and float32.model_digest != int8.model_digest


@pytest.mark.parametrize("image", [
    Image.new("RGB", (640, 480), (240, 228, 200)),  # solid cream: the shipped model alone scores it as ivory
    Image.new("RGB", (640, 480), (255, 255, 255)),
    Image.new("RGB", (1, 1), (255, 255, 255)),
    Image.new("L", (300, 200), 235),
])
def test_blank_and_tiny_photos_are_allowed(classifier, image):
    prediction = classifier.predict(image)
    assert prediction.decision == "allow"
    assert all(prediction.scores[label] == 0 for label in classifier.info.operating_points)


def ivory_like() -> Image.Image:
    """A blurred cream disc on dark wood colours: scored well above the blank cover by the shipped model (0.61 ivory
    for 1.2.0), though below its review threshold; `DISC_FLAGGED` puts review under it."""
    image = Image.new("RGB", (320, 240), (60, 50, 45))
    ImageDraw.Draw(image).ellipse((80, 40, 240, 200), fill=(235, 225, 200))
    return image.filter(ImageFilter.GaussianBlur(3))


# Thresholds at which the cream disc is flagged: the frame tests are about which frame decides, not about where the
# shipped model's review lies.
DISC_FLAGGED = {"ivory": OperatingPoint(review=0.3, block=0.999)}


def test_ivory_on_a_later_frame_of_an_animation_is_seen(shipped_model):
    classifier = Classifier(shipped_model, operating_points=DISC_FLAGGED)
    cover = Image.new("RGB", (320, 240), (40, 90, 160))
    ivory = ivory_like()
    assert classifier.predict(cover).decision == "allow" and classifier.predict(ivory).decision != "allow"
    for fmt in ("GIF", "WEBP", "TIFF", "PNG"):
        buffer = io.BytesIO()
        cover.save(buffer, fmt, save_all=True, append_images=[ivory], **({"lossless": True} if fmt == "WEBP" else {}))
        animated = classifier.predict(buffer.getvalue())
        assert animated.decision != "allow", fmt
        assert animated.scores == pytest.approx(classifier.predict_batch([buffer.getvalue()])[0].scores)


def test_too_many_frames_are_refused_not_scored_in_part(shipped_model):
    frames = [Image.new("RGB", (32, 32), (i * 20, 0, 0)) for i in range(5)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageLoadError, match="5 frames, over the 4-frame limit") as caught:
        Classifier(shipped_model, max_frames=4).predict(buffer.getvalue())
    assert caught.value.category == "too_large"
    assert Classifier(shipped_model, max_frames=5).predict(buffer.getvalue()).decision == "allow"


def test_one_bad_photo_in_a_batch_is_named_by_position(classifier):
    photos = [make_photo("ivory", 1), b"not a photo at all", make_photo("not_ivory", 2)]
    with pytest.raises(ImageLoadError, match=r"photo 1 \(<18 bytes>\)") as caught:
        classifier.predict_batch(photos)
    assert caught.value.category == "not_an_image"


def test_decide_takes_the_most_severe_label():
    points = {"ivory": OperatingPoint(0.3, 0.9), "horn": OperatingPoint(0.5, 0.8)}
    assert decide({"ivory": 0.1, "horn": 0.1, "other": 0.8}, points) == "allow"
    assert decide({"ivory": 0.35, "horn": 0.1, "other": 0.55}, points) == "review"
    assert decide({"ivory": 0.35, "horn": 0.85, "other": 0.0}, points) == "block"


def test_label_is_what_was_decided_about_and_top_label_the_most_probable(shipped_model, photo_file):
    """A filter on `label` finds only flagged photos: an allowed photo that scores a prohibited label highest (below
    its review threshold) has no `label`, and keeps that label as `top_label`."""
    prohibited = next(iter(Classifier(shipped_model).info.operating_points))
    never = Classifier(shipped_model, operating_points={prohibited: OperatingPoint(review=1.0, block=1.0)})
    always = Classifier(shipped_model, operating_points={prohibited: OperatingPoint(review=0.0, block=0.0)})
    allowed, blocked = never.predict(photo_file), always.predict(photo_file)
    assert (allowed.decision, allowed.label) == ("allow", None)
    assert allowed.top_label == blocked.top_label == max(allowed.scores, key=allowed.scores.get)
    assert (blocked.decision, blocked.label) == ("block", prohibited)


def test_the_decided_label_is_one_that_alone_reaches_the_decision():
    points = {"ivory": OperatingPoint(0.3, 0.9), "horn": OperatingPoint(0.2, 0.4)}
    assert decided_label({"ivory": 0.25, "horn": 0.1, "other": 0.65}, "allow", (), points) is None
    assert decided_label({"ivory": 0.35, "horn": 0.1, "other": 0.55}, "review", (), points) == "ivory"
    # horn is blocked at 0.45 though ivory scores higher at review: the block is about horn
    assert decided_label({"ivory": 0.5, "horn": 0.45, "other": 0.05}, "block", (), points) == "horn"
    # a product the image model does not know, named on the photo
    assert decided_label({"ivory": 0.1, "horn": 0.1, "other": 0.8}, "review", ("rhino_horn",), points) == "rhino_horn"
    # named, with the image agreeing (review), it is blocked: over an image-only review of another label
    assert decided_label({"ivory": 0.35, "horn": 0.25, "other": 0.4}, "block", ("horn",), points) == "horn"


def test_one_settings_value_loads_the_same_classifier_wherever_it_travels(shipped_model, photo_file):
    """The command line, Spark's executors and the service load their classifier from one `ClassifierSettings`: it
    hashes (Spark keys its per-process cache on it), pickles (it travels to executors) and loads what it describes."""
    import pickle

    from wildvision.settings import ClassifierSettings
    from wildvision.text import Lexicon

    prohibited = next(iter(Classifier(shipped_model).info.operating_points))
    policy = {prohibited: OperatingPoint(review=0.0, block=0.0)}
    settings = ClassifierSettings.with_points(policy, max_pixels=10_000_000, max_frames=4, threads=1)
    loaded = settings.load(shipped_model)
    assert (loaded.max_pixels, loaded.max_frames, loaded.text_reader) == (10_000_000, 4, None)
    assert loaded.lexicon == Lexicon.load()  # no lexicon of its own: the package's judges a listing's words
    assert loaded.predict(photo_file).thresholds == f"{prohibited}=0/0"
    assert ClassifierSettings.of(loaded, threads=1) == settings == pickle.loads(pickle.dumps(settings))
    assert hash(settings) == hash(ClassifierSettings.of(loaded, threads=1))


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


def test_a_model_and_its_int8_twin_name_each_other():
    assert twin_path(Path("out/tiny.onnx"), "int8") == Path("out/tiny.int8.onnx")
    assert twin_path(Path("out/tiny.int8.onnx"), "float32") == Path("out/tiny.onnx")
    assert twin_path("tiny.int8.onnx", "int8") == Path("tiny.int8.onnx")
    with pytest.raises(ValueError, match="precision"):
        twin_path("tiny.onnx", "float16")


def test_training_reads_the_graphs_outputs_through_the_public_surface(classifier, photo_file):
    """`outputs` gives what `predict` scores from (raw logits) and what `embed` normalises (embeddings)."""
    photo = Image.open(photo_file).convert("RGB")
    batch = classifier.prepare_images([photo])
    assert np.array_equal(batch, classifier.prepare(photo_file).tensors)
    logits, embedding = classifier.outputs(batch, ("logits", "embedding"))
    assert classifier.probabilities(logits)[0] == pytest.approx(list(classifier.predict(photo_file).scores.values()))
    assert np.allclose(embedding / np.linalg.norm(embedding), classifier.embed([photo]), atol=1e-6)
    assert classifier.input_name and classifier.probabilities(logits) == pytest.approx(
        softmax(logits, classifier.info.temperature))
    with pytest.raises(ModelFormatError, match="no nonsense output"):
        classifier.outputs(batch, ("nonsense",))


def test_the_model_digest_is_the_files_sha256(classifier, shipped_model):
    assert file_sha256(shipped_model) == hashlib.sha256(Path(shipped_model).read_bytes()).hexdigest()
    assert classifier.identity.digest == f"sha256:{file_sha256(shipped_model)[:16]}"


# What only `Classifier` may touch: its onnxruntime session (attributes of a classifier, and onnxruntime's class).
_SESSION_INTERNALS = {"session", "_input_name", "_output_names", "_run", "InferenceSession"}


def test_only_the_classifier_touches_its_onnxruntime_session():
    """Training and the rest of the library go through `Classifier`'s public methods (`outputs`, `logits`,
    `prepare_images`, `input_name`), so how the model runs can change in one file."""
    owner = REPO / "wildvision" / "classifier.py"
    reaching = []
    for path in sorted([*(REPO / "wildvision").rglob("*.py"), *(REPO / "training").rglob("*.py")]):
        if path != owner:
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                # `.session` of anything, or `InferenceSession` by name (`from onnxruntime import InferenceSession`);
                # a bare `session` is another thing (Spark's, in `wildvision.spark`)
                name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
                if name in _SESSION_INTERNALS and (isinstance(node, ast.Attribute) or name == "InferenceSession"):
                    reaching.append(f"{path.relative_to(REPO)}:{node.lineno} {name}")
    assert not reaching, f"outside wildvision/classifier.py: {reaching}"
