"""What a wildvision model is, read from the model file itself.

An exported ONNX file carries one JSON document under the metadata key `wildvision`: labels, preprocessing,
calibration, operating points, provenance and measured metrics. This module is its schema, as frozen dataclasses, and
nothing about any particular model is hard-coded in the library.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Mapping

__all__ = ["FORMAT_VERSION", "METADATA_KEY", "OUTPUT_NAMES", "ModelFormatError", "ModelInfo", "OperatingPoint", "Preprocessing"]

# The graph's outputs, by name: `logits` (N, labels); `embedding` (N, features), the pooled features the classifier
# reads, for matching known items; `activation_map` (N, labels, h, w), each label's evidence by location, for
# explanations. Only `logits` is required: a model without the others cannot embed or explain.
OUTPUT_NAMES = ("logits", "embedding", "activation_map")
METADATA_KEY = "wildvision"
FORMAT_VERSION = 1

ResizeMode = Literal["squash", "center_crop"]


class ModelFormatError(ValueError):
    """A file is not a wildvision model, or its metadata is incomplete."""


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
        if not 0.0 <= self.review <= self.block <= 1.0:
            raise ValueError(f"operating point needs 0 <= review <= block <= 1, got review={self.review} block={self.block}")


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

    def with_operating_points(self, operating_points: Mapping[str, OperatingPoint]) -> ModelInfo:
        """A copy with a platform's own thresholds in place of the shipped ones."""
        return replace(self, operating_points=dict(operating_points))

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
        except (KeyError, TypeError, json.JSONDecodeError) as error:
            raise ModelFormatError(f"incomplete or malformed wildvision metadata ({error!r})") from None
