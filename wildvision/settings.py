"""`ClassifierSettings`: how a `Classifier` decides and reads photos, apart from which model file it loads.

One frozen, hashable value for what the command line's options, Spark's executors and the service all load a
classifier with: the thresholds in force, the pixel and frame limits, whether the words on photos are read, the
lexicon that judges words (on photos, and a listing's own; None: the package's) and onnxruntime's threads. The command line builds one from its options and loads the
classifier the service answers with; Spark ships it to its executors, which keep one classifier per model file and
settings (it pickles, lexicon included, and hashes, so it keys their cache).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Mapping

from wildvision.classifier import Classifier, Precision
from wildvision.images import DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS
from wildvision.model_info import OperatingPoint
from wildvision.text import Lexicon

__all__ = ["ClassifierSettings"]


@dataclass(frozen=True)
class ClassifierSettings:
    """A classifier's settings (`Classifier`'s keyword arguments but the model): its thresholds (checked against the
    model when it is loaded; None: the model's own), pixel and frame limits, text reading, lexicon and threads."""

    operating_points: tuple[tuple[str, OperatingPoint], ...] | None = None  # a tuple of pairs: hashable
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_frames: int = DEFAULT_MAX_FRAMES
    lexicon: Lexicon | None = None  # judges the words, on photos and a listing's (None: the package's); travels as data
    threads: int | None = None  # onnxruntime's intra-op threads (None: all cores)
    read_text: bool = False  # read the words on every photo

    @classmethod
    def of(cls, classifier: Classifier, *, threads: int | None = None) -> ClassifierSettings:
        """The settings a loaded classifier decides and reads with (its thresholds in force, the model's own or a
        platform's), for `threads` threads."""
        lexicon = None if classifier.lexicon == _package_lexicon() else classifier.lexicon
        return cls(tuple(classifier.info.operating_points.items()), classifier.max_pixels, classifier.max_frames,
                   lexicon, threads, classifier.text_reader is not None)

    @classmethod
    def with_points(
        cls, operating_points: Mapping[str, OperatingPoint] | None, *, max_pixels: int = DEFAULT_MAX_PIXELS,
        max_frames: int = DEFAULT_MAX_FRAMES, lexicon: Lexicon | None = None, threads: int | None = None,
        read_text: bool = False,
    ) -> ClassifierSettings:
        """Settings from thresholds as a mapping (`read_operating_points`' result), the way callers hold them."""
        points = None if operating_points is None else tuple(operating_points.items())
        return cls(points, max_pixels, max_frames, lexicon, threads, read_text)

    def load(self, model: str | os.PathLike[str] | None = None, *, precision: Precision = "float32") -> Classifier:
        """A `Classifier` of `model` (default: the shipped model, in `precision`) with these settings."""
        points = None if self.operating_points is None else dict(self.operating_points)
        return Classifier(model, precision=precision, operating_points=points, threads=self.threads,
                          max_pixels=self.max_pixels, max_frames=self.max_frames, read_text=self.read_text,
                          lexicon=self.lexicon)


@functools.cache
def _package_lexicon() -> Lexicon:
    """The package's own lexicon, loaded once: a classifier judged by it has settings with no lexicon of their own."""
    return Lexicon.load()
