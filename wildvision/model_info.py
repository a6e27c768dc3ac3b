"""What a wildvision model is, read from the model file itself.

An exported ONNX file carries one JSON document under the metadata key `wildvision`: labels, preprocessing,
calibration, operating points, provenance and measured metrics. This module is its schema, as frozen dataclasses, and
nothing about any particular model is hard-coded in the library.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Mapping

from wildvision.errors import WildvisionError

__all__ = [
    "FORMAT_VERSION", "METADATA_KEY", "OUTPUT_NAMES", "ModelFormatError", "ModelInfo", "OperatingPoint",
    "OperatingPointError", "Preprocessing", "operating_points_of", "read_operating_points",
]

# The graph's outputs, by name: `logits` (N, labels); `embedding` (N, features), the pooled features the classifier
# reads, for matching known items; `activation_map` (N, labels, h, w), each label's evidence by location, for
# explanations. Only `logits` is required: a model without the others cannot embed or explain.
OUTPUT_NAMES = ("logits", "embedding", "activation_map")
METADATA_KEY = "wildvision"
FORMAT_VERSION = 1

ResizeMode = Literal["squash", "center_crop"]


class ModelFormatError(WildvisionError, ValueError):
    """A file is not a wildvision model, or its metadata is incomplete."""


class OperatingPointError(WildvisionError, ValueError):
    """Thresholds that would make decisions wrong: inverted, out of range, for unknown or harmless labels."""


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the model's input tensor (NCHW float32)."""

    input_size: int  # square side in pixels
    resize: ResizeMode  # squash: whole photo, aspect ignored; center_crop: shorter side to input_size, then crop
    mean: tuple[float, float, float]  # per RGB channel, on pixels scaled to [0, 1]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.resize not in ("squash", "center_crop"):
            raise ModelFormatError(f"unknown resize mode {self.resize!r}")
        if self.input_size < 8 or len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelFormatError(f"invalid preprocessing {self!r}")


@dataclass(frozen=True)
class OperatingPoint:
    """Calibrated-probability thresholds for one prohibited label: at `review` a human looks, at `block` it is removed."""

    review: float
    block: float

    def __post_init__(self) -> None:
        for name in ("review", "block"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise OperatingPointError(f"operating point {name} must be a number, got {value!r}")
        if not 0.0 <= self.review <= self.block <= 1.0:
            raise OperatingPointError(
                f"operating point needs 0 <= review <= block <= 1, got review={self.review} block={self.block}")


@dataclass(frozen=True)
class ModelInfo:
    """Everything the library needs to run a model and everything a user needs to judge it."""

    name: str
    version: str
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    temperature: float  # calibration: probabilities are softmax(logits / temperature)
    operating_points: Mapping[str, OperatingPoint]  # prohibited labels only; other labels never trigger a decision
    training: Mapping[str, Any] = field(default_factory=dict)  # data sources, counts, manifest hash, config
    metrics: Mapping[str, Any] = field(default_factory=dict)  # measured on held-out data only
    notes: str = ""  # licences, intended use, known weaknesses
    precision: Literal["float32", "int8"] = "float32"  # int8: statically quantised, smaller and faster on CPUs

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ModelFormatError(f"a model needs two or more distinct labels, got {self.labels}")
        if self.temperature <= 0:
            raise ModelFormatError(f"temperature must be positive, got {self.temperature}")
        unknown = set(self.operating_points) - set(self.labels)
        if unknown:
            raise ModelFormatError(f"operating points for labels the model does not have: {sorted(unknown)}")

    @property
    def full_name(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def prohibited(self) -> tuple[str, ...]:
        """The labels that lead to `review` or `block`: those the model file gives operating points."""
        return tuple(label for label in self.labels if label in self.operating_points)

    def with_operating_points(self, operating_points: Mapping[str, OperatingPoint]) -> ModelInfo:
        """A copy with a platform's own thresholds in place of the shipped ones (see `checked_operating_points`)."""
        return replace(self, operating_points=self.checked_operating_points(operating_points))

    def checked_operating_points(self, operating_points: Mapping[str, OperatingPoint]) -> dict[str, OperatingPoint]:
        """A platform's thresholds, checked and completed: prohibited labels only, each an `OperatingPoint`; a
        prohibited label not given keeps the model's own, so no policy can silently stop checking a label."""
        if not isinstance(operating_points, Mapping):
            raise OperatingPointError(f"operating points must map labels to OperatingPoint, got "
                                      f"{type(operating_points).__name__}")
        unknown = sorted(set(operating_points) - set(self.labels))
        if unknown:
            raise OperatingPointError(f"operating points for labels this model does not have: {unknown}; "
                                      f"its labels are {list(self.labels)}")
        harmless = sorted(set(operating_points) - set(self.prohibited))
        if harmless:
            raise OperatingPointError(f"operating points for harmless labels {harmless}: only the prohibited labels "
                                      f"{list(self.prohibited)} can lead to review or block")
        for label, point in operating_points.items():
            if not isinstance(point, OperatingPoint):
                raise OperatingPointError(f"the operating point for {label!r} must be an OperatingPoint(review, "
                                          f"block), got {point!r}")
        return {label: operating_points.get(label, self.operating_points[label]) for label in self.prohibited}

    def to_json(self) -> str:
        return json.dumps({"format_version": FORMAT_VERSION, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelInfo:
        try:
            document = json.loads(text)
            if document.pop("format_version") != FORMAT_VERSION:
                raise ModelFormatError(f"unsupported wildvision metadata format {document.get('format_version')}")
            pre = document.pop("preprocessing")
            return cls(
                labels=tuple(document.pop("labels")),
                preprocessing=Preprocessing(
                    input_size=int(pre["input_size"]), resize=pre["resize"],
                    mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                ),
                operating_points={k: OperatingPoint(**v) for k, v in document.pop("operating_points").items()},
                **document,
            )
        except (KeyError, TypeError, json.JSONDecodeError, OperatingPointError) as error:
            raise ModelFormatError(f"incomplete or malformed wildvision metadata ({error!r})") from None


def read_operating_points(path: str | Path) -> dict[str, OperatingPoint]:
    """A platform's thresholds from a JSON or TOML file: `{"ivory": {"review": 0.8, "block": 0.99}}` in JSON, or a
    `[ivory]` table with `review` and `block` in TOML. Check them against a model with `checked_operating_points`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        document = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except OSError as error:
        raise OperatingPointError(f"{path}: cannot read the thresholds file ({error.strerror or error})") from None
    except (ValueError, tomllib.TOMLDecodeError) as error:
        # A .yaml file is read as JSON too (JSON is the default), so say which formats there are, not only the one tried.
        raise OperatingPointError(f"{path}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'} "
                                  f"({error}); thresholds files are JSON, or TOML when named .toml") from None
    return operating_points_of(document, str(path))


def operating_points_of(document: object, source: str) -> dict[str, OperatingPoint]:
    """Thresholds from a parsed JSON or TOML document, `{"ivory": {"review": 0.8, "block": 0.99}}`: a thresholds file
    (`read_operating_points`), or the `operating_points` a service caller sends with a request; `source` names it in
    errors."""
    if not isinstance(document, dict) or not all(isinstance(point, dict) for point in document.values()):
        raise OperatingPointError(f'{source}: expected {{"label": {{"review": 0.8, "block": 0.99}}, ...}}')
    points = {}
    for label, point in document.items():
        if set(point) != {"review", "block"}:
            raise OperatingPointError(f"{source}: {label!r} needs exactly `review` and `block`, got {sorted(point)}")
        points[label] = OperatingPoint(point["review"], point["block"])
    return points
