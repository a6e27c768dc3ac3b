"""Score photos with a wildvision ONNX model: calibrated per-label probabilities and an allow/review/block decision.

A `Classifier` holds one onnxruntime session and no other mutable state, so one instance is safe to share across
threads (onnxruntime's `run` is thread-safe) and should be: loading a model costs far more than scoring a photo.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np
import onnxruntime as ort
from PIL import Image

from wildvision.explain import Explanation, heatmap_on_photo
from wildvision.hashing import difference_hash, file_sha256, pdq_available, pdq_hashes
from wildvision.images import (
    DEFAULT_MAX_FRAMES,
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    ImageSource,
    load_frames,
    load_image,
)
from wildvision.model_info import (
    METADATA_KEY,
    OUTPUT_NAMES,
    ModelFormatError,
    ModelInfo,
    OperatingPoint,
)
from wildvision.decision import (
    Decision, KnownMatch, MatchPolicy, Reason, decide, decide_listing, decide_with_text, decided_label,
    rank_of,
)
from wildvision.preprocess import to_batch
from wildvision.text import READ_SIDE, Lexicon, TextEvidence, TextReader
from wildvision.words import listing_words

__all__ = [
    "BLANK_SPREAD", "DEFAULT_MODEL_FILE", "Classifier", "ListingPrediction", "ModelIdentity", "Prediction",
    "PreparedPhoto", "default_model_path", "describe_thresholds",
    "read_model_info", "softmax", "twin_path",
]

Precision = Literal["float32", "int8"]
DEFAULT_MODEL_FILE = "wildvision-ivory.onnx"
_PRECISION_SUFFIX = {"float32": ".onnx", "int8": ".int8.onnx"}  # the int8 twin of a model sits next to it
# A frame whose pixels spread less than this (standard deviation, 0-255 levels, in the model's input) shows nothing:
# a blank, solid or near-uniform image, or a tiny one blown up. Models trained on photos of objects score such input
# arbitrarily (a solid cream image scored 0.997 ivory), so it is scored by rule: harmless. Sensor noise on a blank
# wall stays below 2; an object, however small or pale, lifts a 288-pixel frame above it.
BLANK_SPREAD = 2.0


@dataclass(frozen=True)
class ModelIdentity:
    """Which model file scored a photo: the float32 file and its int8 twin share a name and version, not a digest."""

    name: str
    version: str
    precision: Precision
    digest: str  # "sha256:" and the first 16 hex digits of the model file's SHA-256

    def __str__(self) -> str:
        return f"{self.name}@{self.version} {self.precision} {self.digest}"

    def to_fields(self) -> dict[str, str]:
        """The identity as flat fields, the one spelling that records, responses and index files use:
        `model_name`, `model_version`, `model_precision`, `model_digest`."""
        return {f"model_{name}": value for name, value in asdict(self).items()}

    @classmethod
    def of_fields(cls, values: Mapping[str, object], missing: str = "unknown") -> ModelIdentity:
        """The identity that `to_fields` flattened; a field that older files lack reads as `missing`."""
        return cls(*(str(values.get(f"model_{field.name}", missing))  # type: ignore[arg-type]
                     for field in fields(cls)))


@dataclass(frozen=True)
class Prediction:
    """One photo's result: every label's calibrated probability, the decision they lead to and the prohibited label
    it is about, the top-scoring label, the thresholds that decided (`label=review/block`, `; `-separated) and the
    model file that scored it.

    `label` agrees with `decision`, so that a filter on it finds what was flagged: the prohibited label the photo is
    sent to review or blocked for (`decided_label`), None when it is allowed. `top_label` is the most probable label,
    whatever was decided (an allowed photo may score ivory highest, below ivory's review threshold). For an animated
    or multi-page file, the result of its most prohibited frame. With text reading on, `text` holds what was read on
    the photo (every frame) and the phrases that counted; `decision` and `label` weigh both (`decide_with_text`)."""

    scores: dict[str, float]
    label: str | None
    top_label: str
    decision: Decision
    model_name: str
    model_version: str
    model_precision: Precision
    model_digest: str
    thresholds: str
    text: TextEvidence | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class ListingPrediction:
    """A listing's result (`wildvision.decision.decide_listing`): its decision, the prohibited labels it is flagged
    for, each label's fused score (photos and words), the evidence that decided (each `Reason` names its source:
    `photo 2`, `words on photo 3`, `title`, `description`), the photo a reviewer should see first (its position; None
    without photos), and every photo's own prediction."""

    decision: Decision
    deciding_photo: int | None
    labels: tuple[str, ...]
    scores: dict[str, float]
    reasons: tuple[Reason, ...]
    photos: tuple[Prediction, ...]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class PreparedPhoto:
    """A photo ready for the model: one input tensor per frame (a still photo has one) and, for matching known items,
    each frame's difference hash and, where `pdqhash` is installed, its PDQ hashes (`wildvision.hashing.pdq_hashes`)."""

    tensors: np.ndarray  # (frames, 3, side, side) float32
    hashes: np.ndarray | None = None  # (frames, HASH_BYTES) uint8
    pdq: np.ndarray | None = None  # (frames, 16, HASH_BYTES) uint8: each frame's PDQ hashes `with_mirror`
    pdq_quality: np.ndarray | None = None  # (frames,) int: PDQ's quality score of each frame, 0-100
    frames: tuple[Image.Image, ...] = ()  # the decoded frames, kept only where text is read from them


def twin_path(model: str | os.PathLike[str], precision: Precision) -> Path:
    """The file of `model` in `precision`: a model and its int8 twin sit side by side as `NAME.onnx` and
    `NAME.int8.onnx`. The one place that name is made: export and adapt write the twin where `Classifier(precision=...)`
    and `wildvision info` look for it."""
    if precision not in _PRECISION_SUFFIX:
        raise ValueError(f"precision must be one of {sorted(_PRECISION_SUFFIX)}, got {precision!r}")
    path, twin = Path(model), _PRECISION_SUFFIX["int8"]
    stem = path.name.removesuffix(twin) if path.name.endswith(twin) else path.stem
    return path.with_name(stem + _PRECISION_SUFFIX[precision])


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Rows of `logits` (N, labels) divided by `temperature` and turned into probabilities, in float64."""
    scaled = logits.astype(np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)  # the largest exponent is 0: no overflow, same probabilities
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def default_model_path(precision: Precision = "float32") -> Path:
    """The model shipped with the package (inside the wheel), or the checkout's `models/` folder when run from source."""
    name = twin_path(DEFAULT_MODEL_FILE, precision).name
    packaged = resources.files("wildvision") / "models" / name
    if packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / "models" / name
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(f"the default model {name} is not installed; reinstall wildvision or pass a model path")


def describe_thresholds(operating_points: Mapping[str, OperatingPoint]) -> str:
    """Thresholds as records state them: `ivory=0.8108/0.9908` (review/block), labels joined by `; `."""
    return "; ".join(f"{label}={point.review:.4g}/{point.block:.4g}" for label, point in operating_points.items())


class Classifier:
    """A loaded wildvision model.

    Examples:
        >>> classifier = Classifier()                      # the shipped model
        >>> classifier.predict("listing.jpg").decision     # doctest: +SKIP
        'allow'
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        precision: Precision = "float32",
        operating_points: Mapping[str, OperatingPoint] | None = None,
        threads: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_frames: int = DEFAULT_MAX_FRAMES,
        read_text: bool = False,
        lexicon: Lexicon | str | os.PathLike[str] | None = None,
    ) -> None:
        """Load `model_path` (default: the shipped model, in `precision` float32 or int8).

        `operating_points` replaces the model's own thresholds for the labels it names (a platform's policy; see
        `ModelInfo.checked_operating_points`); `threads` caps onnxruntime's intra-op threads (default: all cores);
        `max_pixels` and `max_frames` bound what one photo may decode to (`wildvision.images.load_frames`).
        `read_text` also reads the words on every photo (`pip install "wildvision[text]"`) and weighs the products they
        name (`decide_with_text`). `lexicon` (a `Lexicon` or its TOML file; default: the package's own) judges those
        words and a listing's title and description (`predict_listing`).
        """
        if max_pixels < 1 or max_frames < 1:
            raise ValueError(f"max_pixels and max_frames must be at least 1, got {max_pixels} and {max_frames}")
        self.lexicon = lexicon if isinstance(lexicon, Lexicon) else Lexicon.load(lexicon)
        # One OCR engine per core at most: more threads than that only queue, and each engine holds its own models.
        self.text_reader = TextReader(threads=threads, engines=os.cpu_count() or 1) if read_text else None
        path = Path(model_path) if model_path is not None else default_model_path(precision)
        self.session = _open_session(path, threads)
        info = read_model_info(self.session, path)
        self.info = info.with_operating_points(operating_points) if operating_points is not None else info
        self.model_path = path
        self.identity = ModelIdentity(info.name, info.version, info.precision, f"sha256:{file_sha256(path)[:16]}")
        self.max_pixels, self.max_frames = max_pixels, max_frames
        self._input_name = self.session.get_inputs()[0].name
        self._output_names = {output.name for output in self.session.get_outputs()}

    def predict(self, image: ImageSource, *, operating_points: Mapping[str, OperatingPoint] | None = None) -> Prediction:
        """Score one photo given as a path, bytes, a binary file, a PIL image or a numpy array.

        `operating_points` replaces thresholds for this call only (e.g. a stricter policy for one category).
        """
        return self.score([self.prepare(image)], operating_points=operating_points)[0]

    def predict_listing(
        self, images: Iterable[ImageSource] = (), *, title: str | None = None, description: str | None = None,
        batch_size: int = 16, operating_points: Mapping[str, OperatingPoint] | None = None,
    ) -> ListingPrediction:
        """Decide a listing from its photos and its seller's words (`wildvision.decision.decide_listing`): the title
        and description are read with the lexicon, the photos are scored (and, with `read_text`, the words on them
        read). Any of the three may be missing; a listing with words and no photo is decided on its words. An
        unreadable photo raises `ImageLoadError` naming its position, as in `predict_batch`."""
        predictions = self.predict_batch(images, batch_size=batch_size, operating_points=operating_points)
        if not predictions and not (title or description):
            raise ValueError("a listing needs at least one photo, or a title or description")
        return self.decide_listing(predictions, title=title, description=description, operating_points=operating_points)

    def decide_listing(
        self, predictions: Sequence[Prediction], *, title: str | None = None, description: str | None = None,
        operating_points: Mapping[str, OperatingPoint] | None = None, matches: Sequence[KnownMatch | None] = (),
        match_policy: MatchPolicy = MatchPolicy(),
    ) -> ListingPrediction:
        """A listing from its photos already scored (in order, with the same `operating_points`), their known-item
        matches if any, and its seller's words read with this classifier's lexicon: the one assembly that
        `predict_listing`, `wildvision.scorer.Scorer` and the service share."""
        words = listing_words(self.lexicon, title=title, description=description,
                              photo_texts=[prediction.text for prediction in predictions])
        decided = decide_listing(predictions, self.thresholds(operating_points), words=words,
                                 weights=self.lexicon.weights, matches=matches, match_policy=match_policy)
        return ListingPrediction(decided.decision, decided.deciding_photo, decided.labels, decided.scores,
                                 decided.reasons, tuple(predictions))

    def predict_batch(
        self, images: Iterable[ImageSource], *, batch_size: int = 16,
        operating_points: Mapping[str, OperatingPoint] | None = None,
    ) -> list[Prediction]:
        """Score several photos; every photo is read before any is scored, and one that cannot be read raises an
        `ImageLoadError` naming its position and source (`scan` instead gives it an error record)."""
        prepared = [self.prepare_numbered(image, position) for position, image in enumerate(images)]
        predictions: list[Prediction] = []
        for start in range(0, len(prepared), batch_size):
            predictions += self.score(prepared[start : start + batch_size], operating_points=operating_points)
        return predictions

    def prepare(self, image: ImageSource, *, with_hashes: bool = False) -> PreparedPhoto:
        """Decode `image` (every frame) into model input: the one place photos are read for scoring (and
        `prepare_images` the one place decoded frames become tensors).

        Raises `ImageLoadError` for anything that is not a usable image.
        """
        frames = self._decode(image)
        reading = self.text_reader is not None
        kept = tuple(frames) if reading else ()
        if not with_hashes:
            return PreparedPhoto(self.prepare_images(frames), frames=kept)
        hashes = np.stack([difference_hash(frame) for frame in frames])
        # PDQ of the frame as decoded for the model (reduced scale, at least the input size): median 2 ms a photo on
        # the shared data. Reducing it further to 512 px, as Meta's tools may, saved no time and moved hashes by a
        # median 10 bits of the photos it reduced, so it is not done.
        pdq = [pdq_hashes(frame, with_mirror=True) for frame in frames] if pdq_available() else None
        return PreparedPhoto(
            self.prepare_images(frames), hashes,
            np.stack([found.hashes for found in pdq]) if pdq else None,
            np.array([found.quality for found in pdq]) if pdq else None, kept)

    def score(
        self, photos: Sequence[PreparedPhoto], *, operating_points: Mapping[str, OperatingPoint] | None = None
    ) -> list[Prediction]:
        """Predictions for prepared photos, from one forward pass over all their frames."""
        batch = _frames(photos)
        return self._predictions(photos, batch, self.logits(batch), operating_points)

    def score_and_embed(
        self, photos: Sequence[PreparedPhoto], *, operating_points: Mapping[str, OperatingPoint] | None = None
    ) -> tuple[list[Prediction], list[np.ndarray]]:
        """Predictions and each photo's unit embeddings (one row per frame) from one forward pass: matching known
        items costs no second pass."""
        batch = _frames(photos)
        logits, vectors = self._run(("logits", "embedding"), batch)
        return self._predictions(photos, batch, logits, operating_points), _per_photo(photos, _unit_rows(vectors))

    def embed(self, images: Iterable[ImageSource], *, batch_size: int = 16) -> np.ndarray:
        """One unit-length feature vector per photo (rows; an animated photo's first frame): near-identical photos
        have a dot product near 1."""
        side = self.info.preprocessing.input_size
        photos = [load_image(image, min_side=side, max_pixels=self.max_pixels) for image in images]
        vectors = [self._run("embedding", self.prepare_images(photos[start : start + batch_size]))
                   for start in range(0, len(photos), batch_size)]
        return _unit_rows(np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32))

    def explain(self, image: ImageSource, label: str | None = None) -> Explanation:
        """Where `label`'s evidence lies in the photo (default: the first prohibited label, else the top label).

        An animated or multi-page photo is explained on the frame that decided its prediction; with text reading on,
        the lines of that frame that named a product are part of the explanation (and marked on its overlay)."""
        photos = self._decode(image)
        batch = self.prepare_images(photos)
        logits, activation = self._run(("logits", "activation_map"), batch)
        frames = self._calibrated(batch, logits)
        points = self.info.operating_points
        thresholds = describe_thresholds(points)
        chosen = max(range(len(frames)),
                     key=lambda i: self._how_prohibited(self._prediction(frames[i], points, thresholds)))
        probabilities = frames[chosen]
        label = label or next(iter(points), self.info.labels[int(probabilities.argmax())])
        if label not in self.info.labels:
            raise ValueError(f"unknown label {label!r}; this model has {list(self.info.labels)}")
        index = self.info.labels.index(label)
        score = float(probabilities[index])
        frame = photos[chosen]
        heatmap = heatmap_on_photo(activation[chosen, index], frame, self.info.preprocessing, score=score)
        text = self._text_evidence([frame]) if self.text_reader is not None else None
        return Explanation(label, score, heatmap, frame, text, chosen)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw, uncalibrated outputs for an NCHW batch."""
        return self._run("logits", batch)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: softmax of temperature-scaled logits."""
        return softmax(logits, self.info.temperature)

    def prepare_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Decoded photos (one frame each, e.g. from `wildvision.images.load_image`) as one NCHW batch through this
        model's preprocessing: every tensor the model sees is made here (`prepare`, `embed`, `explain`, and training's
        features, parity checks and quantisation calibration). Photos as files go through `prepare`, which decodes
        them too. Training's augmentation pipeline alone calls `wildvision.preprocess` itself, one photo at a time."""
        return to_batch(list(images), self.info.preprocessing)

    def outputs(self, batch: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        """The graph's raw outputs `names` (of `wildvision.model_info.OUTPUT_NAMES`: logits, embedding,
        activation_map) for an NCHW batch, in that order, from one forward pass: what training reads to fit a head on
        the model's own embeddings or to check a written model. Uncalibrated, and embeddings not normalised (unlike
        `embed`). Raises `ModelFormatError` if the model lacks one of them."""
        return self._run(tuple(names), batch)

    @property
    def input_name(self) -> str:
        """The name of the graph's one input (an NCHW float32 batch), for tools that feed the model file directly,
        such as onnxruntime's quantisation calibrator."""
        return self._input_name

    def _decode(self, image: ImageSource) -> list[Image.Image]:
        """Every frame of `image`, upright RGB, decoded at reduced scale down to what the model (or reading its text,
        which wants more pixels) needs."""
        spec = self.info.preprocessing
        side = max(spec.input_size, READ_SIDE) if self.text_reader is not None else spec.input_size
        return load_frames(image, min_side=side, max_pixels=self.max_pixels, max_frames=self.max_frames)

    def _text_evidence(self, frames: Sequence[Image.Image]) -> TextEvidence:
        """Every line read on the frames, and the lexicon's verdict on them."""
        assert self.text_reader is not None
        lines = tuple(line for frame in frames for line in self.text_reader.read(frame))
        return TextEvidence(self.lexicon.identity, lines, self.lexicon.find(lines))

    def thresholds(self, operating_points: Mapping[str, OperatingPoint] | None = None) -> Mapping[str, OperatingPoint]:
        """The thresholds in force: the model's, or a call's own (checked, as every call checks them)."""
        if operating_points is None:
            return self.info.operating_points
        return self.info.checked_operating_points(operating_points)

    def prepare_numbered(self, image: ImageSource, position: int, *, with_hashes: bool = False) -> PreparedPhoto:
        """`prepare`, with an unreadable photo's `ImageLoadError` naming its position in a batch or listing."""
        try:
            return self.prepare(image, with_hashes=with_hashes)
        except ImageLoadError as error:
            raise ImageLoadError(f"photo {position} ({error.source})", error.reason, error.category) from None

    def _calibrated(self, batch: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, with blank frames (see `BLANK_SPREAD`) scored by rule: nothing prohibited."""
        probabilities = self.probabilities(logits)
        blank = _pixel_spread(batch, self.info.preprocessing.std) < BLANK_SPREAD
        if blank.any():
            harmless = np.array([label not in self.info.operating_points for label in self.info.labels])
            probabilities[blank] = harmless / harmless.sum()
        return probabilities

    def _run(self, outputs: str | tuple[str, ...], batch: np.ndarray):
        names = (outputs,) if isinstance(outputs, str) else outputs
        missing = [name for name in names if name not in self._output_names]
        if missing:
            raise ModelFormatError(f"{self.model_path}: the model has no {', '.join(missing)} output; export it again "
                                   "with this version of training.export")
        results = self.session.run(list(names), {self._input_name: batch})
        return results[0] if isinstance(outputs, str) else results

    def _predictions(
        self, photos: Sequence[PreparedPhoto], batch: np.ndarray, logits: np.ndarray,
        operating_points: Mapping[str, OperatingPoint] | None,
    ) -> list[Prediction]:
        points = self.thresholds(operating_points)
        frames = _per_photo(photos, self._calibrated(batch, logits))
        thresholds = describe_thresholds(points)  # once per batch: the same for every photo in it
        predictions = [max((self._prediction(row, points, thresholds) for row in rows), key=self._how_prohibited)
                       for rows in frames]
        if self.text_reader is None:
            return predictions
        return [self._with_text(prediction, photo, points) for prediction, photo in zip(predictions, photos)]

    def _with_text(
        self, prediction: Prediction, photo: PreparedPhoto, points: Mapping[str, OperatingPoint]
    ) -> Prediction:
        evidence = self._text_evidence(photo.frames)
        decision = decide_with_text(prediction.scores, prediction.decision, evidence, points)
        label = decided_label(prediction.scores, decision, evidence.labels, points)
        return replace(prediction, text=evidence, decision=decision, label=label)

    def _how_prohibited(self, prediction: Prediction) -> tuple[int, int, float]:
        """Order frames by decision, then by their highest prohibited score: the frame a reviewer must see first."""
        return rank_of(prediction, self.info.operating_points)

    def _prediction(
        self, probabilities: np.ndarray, operating_points: Mapping[str, OperatingPoint], thresholds: str
    ) -> Prediction:
        scores = {label: float(p) for label, p in zip(self.info.labels, probabilities)}
        decision = decide(scores, operating_points)
        return Prediction(
            scores=scores,
            label=decided_label(scores, decision, (), operating_points),
            top_label=self.info.labels[int(np.argmax(probabilities))],
            decision=decision,
            **self.identity.to_fields(),
            thresholds=thresholds,
        )


def read_model_info(session: ort.InferenceSession, path: Path) -> ModelInfo:
    """The wildvision metadata of an opened model, checked against the graph's actual output size."""
    document = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if document is None:
        raise ModelFormatError(f"{path}: an ONNX model, but not a wildvision model (no '{METADATA_KEY}' metadata)")
    info = ModelInfo.from_json(document)
    outputs = {output.name: output.shape for output in session.get_outputs()}
    if OUTPUT_NAMES[0] not in outputs:
        raise ModelFormatError(f"{path}: the graph has no '{OUTPUT_NAMES[0]}' output (it has {sorted(outputs)})")
    width = outputs[OUTPUT_NAMES[0]][-1]
    if isinstance(width, int) and width != len(info.labels):
        raise ModelFormatError(f"{path}: the graph has {width} outputs but the metadata names {len(info.labels)} labels")
    return info


def _frames(photos: Sequence[PreparedPhoto]) -> np.ndarray:
    """Every frame of every photo as one NCHW batch."""
    return np.concatenate([photo.tensors for photo in photos])


def _per_photo(photos: Sequence[PreparedPhoto], rows: np.ndarray) -> list[np.ndarray]:
    """Rows for every frame of every photo (as `_frames` stacks them), split back into one array per photo."""
    return np.split(rows, np.cumsum([len(photo.tensors) for photo in photos])[:-1])


def _pixel_spread(batch: np.ndarray, std: Sequence[float]) -> np.ndarray:
    """Each frame's largest per-channel standard deviation, in 0-255 levels, read back from normalised input."""
    return (batch.std(axis=(2, 3)) * np.asarray(std) * 255.0).max(axis=1)


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so a dot product is a cosine similarity."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _open_session(path: Path, threads: int | None) -> ort.InferenceSession:
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors for unreadable files
        raise ModelFormatError(f"{path}: not a readable ONNX model ({error})") from None
