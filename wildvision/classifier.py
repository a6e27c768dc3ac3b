"""Score photos with a wildvision ONNX model: calibrated per-label probabilities and an allow/review/block decision.

A `Classifier` holds one onnxruntime session and no other mutable state, so one instance is safe to share across
threads (onnxruntime's `run` is thread-safe) and should be: loading a model costs far more than scoring a photo.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Iterator, Literal, Mapping

import numpy as np
import onnxruntime as ort

from wildvision.explain import Explanation, heatmap_on_photo
from wildvision.images import ImageSource, load_image
from wildvision.model_info import METADATA_KEY, OUTPUT_NAMES, ModelFormatError, ModelInfo, OperatingPoint
from wildvision.preprocess import to_batch

__all__ = ["DEFAULT_MODEL_FILE", "Classifier", "Decision", "Prediction", "decide", "default_model_path", "read_model_info"]

Decision = Literal["allow", "review", "block"]
Precision = Literal["float32", "int8"]
DEFAULT_MODEL_FILE = "wildvision-ivory.onnx"
_PRECISION_SUFFIX = {"float32": ".onnx", "int8": ".int8.onnx"}  # the int8 twin of a model sits next to it


@dataclass(frozen=True)
class Prediction:
    """One photo's result: every label's calibrated probability, the top label and the decision it leads to."""

    scores: dict[str, float]
    label: str
    decision: Decision
    model_name: str
    model_version: str

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def default_model_path(precision: Precision = "float32") -> Path:
    """The model shipped with the package (inside the wheel), or the checkout's `models/` folder when run from source."""
    if precision not in _PRECISION_SUFFIX:
        raise ValueError(f"precision must be one of {sorted(_PRECISION_SUFFIX)}, got {precision!r}")
    name = DEFAULT_MODEL_FILE.removesuffix(".onnx") + _PRECISION_SUFFIX[precision]
    packaged = resources.files("wildvision") / "models" / name
    if packaged.is_file():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / "models" / name
    if checkout.is_file():
        return checkout
    raise FileNotFoundError(f"the default model {name} is not installed; reinstall wildvision or pass a model path")


def decide(scores: Mapping[str, float], operating_points: Mapping[str, OperatingPoint]) -> Decision:
    """`block` if any prohibited label reaches its block threshold, else `review` if any reaches review, else `allow`."""
    if any(scores[label] >= point.block for label, point in operating_points.items()):
        return "block"
    if any(scores[label] >= point.review for label, point in operating_points.items()):
        return "review"
    return "allow"


class Classifier:
    """A loaded wildvision model.

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
    ) -> None:
        """Load `model_path` (default: the shipped model, in `precision` float32 or int8).

        `operating_points` replaces the model's own thresholds (a platform's policy); `threads` caps onnxruntime's
        intra-op threads (default: all cores).
        """
        path = Path(model_path) if model_path is not None else default_model_path(precision)
        self.session = _open_session(path, threads)
        info = read_model_info(self.session, path)
        self.info = info.with_operating_points(operating_points) if operating_points is not None else info
        self.model_path = path
        self._input_name = self.session.get_inputs()[0].name
        self._output_names = {output.name for output in self.session.get_outputs()}

    def predict(self, image: ImageSource, *, operating_points: Mapping[str, OperatingPoint] | None = None) -> Prediction:
        """Score one photo given as a path, bytes, a binary file, a PIL image or a numpy array.

        `operating_points` replaces the thresholds for this call only (e.g. a stricter policy for one category).
        """
        return self.predict_batch([image], operating_points=operating_points)[0]

    def predict_batch(
        self, images: Iterable[ImageSource], *, batch_size: int = 16,
        operating_points: Mapping[str, OperatingPoint] | None = None,
    ) -> list[Prediction]:
        """Score several photos; raises `ImageLoadError` naming the first photo that cannot be read."""
        predictions: list[Prediction] = []
        for batch in self._batches(images, batch_size):
            predictions.extend(self.predict_tensors(batch, operating_points=operating_points))
        return predictions

    def predict_tensors(
        self, batch: np.ndarray, *, operating_points: Mapping[str, OperatingPoint] | None = None
    ) -> list[Prediction]:
        """Score an already preprocessed NCHW batch (see `wildvision.preprocess.to_batch`)."""
        return self._predictions(self.logits(batch), operating_points)

    def embed(self, images: Iterable[ImageSource], *, batch_size: int = 16) -> np.ndarray:
        """One unit-length feature vector per photo (rows): near-identical photos have a dot product near 1."""
        vectors = [self._run("embedding", batch) for batch in self._batches(images, batch_size)]
        return _unit_rows(np.concatenate(vectors) if vectors else np.zeros((0, 0), np.float32))

    def predict_and_embed_tensors(
        self, batch: np.ndarray, *, operating_points: Mapping[str, OperatingPoint] | None = None
    ) -> tuple[list[Prediction], np.ndarray]:
        """Predictions and unit embeddings for an NCHW batch from one forward pass (matching known items costs no
        second pass)."""
        logits, vectors = self._run(("logits", "embedding"), batch)
        return self._predictions(logits, operating_points), _unit_rows(vectors)

    def explain(self, image: ImageSource, label: str | None = None) -> Explanation:
        """Where `label`'s evidence lies in the photo (default: the first prohibited label, else the top label)."""
        photo = load_image(image, min_side=self.info.preprocessing.input_size)
        batch = to_batch([photo], self.info.preprocessing)
        logits, activation = self._run(("logits", "activation_map"), batch)
        probabilities = self.probabilities(logits)[0]
        label = label or next(iter(self.info.operating_points), self.info.labels[int(probabilities.argmax())])
        if label not in self.info.labels:
            raise ValueError(f"unknown label {label!r}; this model has {list(self.info.labels)}")
        index = self.info.labels.index(label)
        heatmap = heatmap_on_photo(activation[0, index], photo, self.info.preprocessing)
        return Explanation(label, float(probabilities[index]), heatmap, photo)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The model's raw, uncalibrated outputs for an NCHW batch."""
        return self._run("logits", batch)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities: softmax of temperature-scaled logits."""
        scaled = logits.astype(np.float64) / self.info.temperature
        scaled -= scaled.max(axis=1, keepdims=True)
        exp = np.exp(scaled)
        return exp / exp.sum(axis=1, keepdims=True)

    def _batches(self, images: Iterable[ImageSource], batch_size: int) -> Iterator[np.ndarray]:
        side = self.info.preprocessing.input_size
        loaded = [load_image(image, min_side=side) for image in images]  # every photo is checked before any is scored
        for start in range(0, len(loaded), batch_size):
            yield to_batch(loaded[start : start + batch_size], self.info.preprocessing)

    def _run(self, outputs: str | tuple[str, ...], batch: np.ndarray):
        names = (outputs,) if isinstance(outputs, str) else outputs
        missing = [name for name in names if name not in self._output_names]
        if missing:
            raise ModelFormatError(f"{self.model_path}: the model has no {', '.join(missing)} output; export it again "
                                   "with this version of training.export")
        results = self.session.run(list(names), {self._input_name: batch})
        return results[0] if isinstance(outputs, str) else results

    def _predictions(
        self, logits: np.ndarray, operating_points: Mapping[str, OperatingPoint] | None
    ) -> list[Prediction]:
        points = self.info.operating_points if operating_points is None else operating_points
        return [self._prediction(row, points) for row in self.probabilities(logits)]

    def _prediction(self, probabilities: np.ndarray, operating_points: Mapping[str, OperatingPoint]) -> Prediction:
        scores = {label: float(p) for label, p in zip(self.info.labels, probabilities)}
        return Prediction(
            scores=scores,
            label=self.info.labels[int(np.argmax(probabilities))],
            decision=decide(scores, operating_points),
            model_name=self.info.name,
            model_version=self.info.version,
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
