"""Statically quantise a wildvision model to int8, refusing a file that disagrees with its float original.

Weights become int8 per output channel and activations uint8 per tensor, in QDQ format, which onnxruntime's CPU
provider fuses into integer kernels; activation ranges come from calibration photos fed through the library's own
preprocessing, so they are the ranges production inputs produce. The result carries the float model's `wildvision`
metadata with `precision="int8"`. Before it appears at its destination it must agree with the float model on
held-out photos: quantisation error is expected, so the check is on top labels and calibrated probabilities, not on
logits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image

from training.artefacts import set_model_info, staged
from training.errors import DataError, ExportRefused
from wildvision.classifier import Classifier
from wildvision.model_info import ModelInfo

__all__ = ["DEFAULT_FLOAT_BLOCKS", "DEFAULT_MAX_PROBABILITY_DIFFERENCE", "DEFAULT_MIN_AGREEMENT", "Agreement",
           "QuantizationError", "compare", "float_front", "nodes_of_modules", "quantize_model", "write_model_info"]

DEFAULT_MIN_AGREEMENT = 0.95  # fraction of held-out photos whose top label must not change
DEFAULT_MAX_PROBABILITY_DIFFERENCE = 0.05  # mean |p_float - p_int8| over photos and labels, calibrated probabilities
# The stem and the first block stay float32. Measured with `benchmarks/int8_loss.py` on a Towneley-held-out candidate:
# the int8 error grows fastest there (SQNR 29 dB after the stem, 13 after block 0), and keeping them float cut the
# loss of Towneley AUC from 0.021 to 0.003 at about the same speed (15.2 against 13.9-15.1 ms a photo; the later
# blocks hold most of the work). Calibration photos, a float head or last block, or percentile ranges did not help.
DEFAULT_FLOAT_BLOCKS = 1
_RANGES = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}
_WEIGHTS = {"int7": (QuantType.QInt8, True), "uint8": (QuantType.QUInt8, False), "int8": (QuantType.QInt8, False)}
_CALIBRATION_BATCH = 8  # photos per calibration run: bounds memory at 224 px, whatever the number of photos


class QuantizationError(ExportRefused):
    """The int8 model disagrees with its float original by more than allowed."""


@dataclass(frozen=True)
class Agreement:
    """How closely an int8 model follows its float original on the same photos."""

    photos: int
    top_label: float  # fraction of photos given the same top label
    mean_probability_difference: float  # mean absolute difference of calibrated probabilities, all labels

    def __str__(self) -> str:
        return (f"top label agrees on {self.top_label:.1%} of {self.photos} photos, "
                f"mean probability difference {self.mean_probability_difference:.4f}")


def quantize_model(
    float_model: Path,
    out: Path,
    calibration_photos: list[Image.Image],
    *,
    parity_photos: list[Image.Image],
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_probability_difference: float = DEFAULT_MAX_PROBABILITY_DIFFERENCE,
    keep_float: Sequence[str] | None = None,
    ranges: str = "minmax",
    weights: str = "int7",
) -> Agreement:
    """Write an int8 copy of `float_model` to `out`, calibrated on `calibration_photos`.

    `keep_float` names modules of the exported network (`blocks.6`, `bn2`, `classifier`: prefixes of the PyTorch
    module paths the exporter records on each node) whose operators stay float32 (default: the stem and the first
    `DEFAULT_FLOAT_BLOCKS` blocks, `float_front`); `ranges` is how activation
    ranges are read from the calibration photos: `minmax` or `percentile` (onnxruntime's 99.999th).

    `parity_photos` must be held out of calibration. Raises `QuantizationError`, leaving nothing at `out`, when the
    int8 model's top label agrees with the float model's on fewer than `min_agreement` of them or their calibrated
    probabilities differ by more than `max_probability_difference` on average.
    """
    if not calibration_photos or not parity_photos:
        raise DataError("quantisation needs calibration photos and held-out parity photos")
    reference = Classifier(float_model)
    with staged(out.parent) as staging:  # only an int8 model that passed the check ever appears at `out`
        candidate = staging.path(out)
        kept = float_front(DEFAULT_FLOAT_BLOCKS) if keep_float is None else keep_float
        _quantize(reference, staging.folder, candidate, calibration_photos, kept, ranges, weights)
        write_model_info(candidate, replace(reference.info, precision="int8"))
        agreement = compare(reference, Classifier(candidate), parity_photos)
        if agreement.top_label < min_agreement or agreement.mean_probability_difference > max_probability_difference:
            raise QuantizationError(f"the int8 model disagrees with {float_model.name}: {agreement} (needs top label "
                                    f">= {min_agreement:.1%}, probability difference <= {max_probability_difference})")
    return agreement


def compare(reference: Classifier, candidate: Classifier, photos: list[Image.Image]) -> Agreement:
    """Score the same photos with both models, each through its own preprocessing and calibration."""
    expected = reference.probabilities(reference.logits(reference.prepare_images(photos)))
    actual = candidate.probabilities(candidate.logits(candidate.prepare_images(photos)))
    return Agreement(
        photos=len(photos),
        top_label=float(np.mean(expected.argmax(axis=1) == actual.argmax(axis=1))),
        mean_probability_difference=float(np.abs(expected - actual).mean()),
    )


def write_model_info(path: Path, info: ModelInfo) -> None:
    """Replace the `wildvision` metadata of an ONNX file in place; other metadata entries are kept."""
    import onnx  # the [train] extra, like everything in training/

    model = onnx.load(str(path))
    set_model_info(model, info)
    onnx.save(model, str(path))


def _quantize(reference: Classifier, scratch: Path, out: Path, photos: list[Image.Image], keep_float: Sequence[str],
              ranges: str, weights: str) -> None:
    prepared = scratch / "prepared.onnx"
    # onnxruntime's documented first step: shape inference and graph optimisation, so every tensor that gets a
    # quantisation range has a known shape and the ranges describe the graph as it will run.
    quant_pre_process(str(reference.model_path), str(prepared))
    quantize_static(
        str(prepared), str(out),
        _PhotoReader(_batches(photos, reference), reference.input_name),
        nodes_to_exclude=nodes_of_modules(prepared, keep_float),
        calibrate_method=_RANGES[ranges],
        quant_format=QuantFormat.QDQ,
        # uint8 activations, int8 weights: onnxruntime's CPU provider fuses every Conv and Add of EfficientNet-Lite
        # into QLinearConv/QLinearAdd only with uint8 activations. With int8 activations a third of the convolutions
        # stay float between Quantize/Dequantize pairs, and the 224 px model ran no faster than float32 (AVX2, 2 cores;
        # uint8: 1.3-1.7x faster).
        activation_type=QuantType.QUInt8,
        weight_type=_WEIGHTS[weights][0],
        per_channel=True,  # depthwise convolutions have channels whose weight ranges differ by orders of magnitude
        # 7-bit weights: on CPUs without VNNI (AVX2 only) onnxruntime's u8 x s8 kernels add pairs of products in
        # 16 bits, which full 8-bit weights can overflow. The file runs on whatever CPU a platform has, so it must
        # not depend on the exporting machine having VNNI. Tiny test model on AVX2: mean logit error 0.61 with 8-bit
        # weights, 0.32 with 7-bit.
        reduce_range=_WEIGHTS[weights][1],
    )


def float_front(blocks: int) -> tuple[str, ...]:
    """The modules `keep_float` names to keep the stem and the first `blocks` blocks in float32 (0: none). The
    exporter records the stem convolution under `bn1`, the batch norm folded into it."""
    return ("bn1", *(f"blocks.{block}" for block in range(blocks))) if blocks else ()


def nodes_of_modules(model_path: Path, modules: Sequence[str]) -> list[str]:
    """The names of the graph's nodes that the exporter recorded as parts of `modules` (each a module path or its
    prefix, e.g. `blocks.6`); raises DataError for a module no node belongs to, which would otherwise keep nothing
    float without a word."""
    import onnx

    if not modules:
        return []
    graph = onnx.load(str(model_path)).graph
    owners = {node.name: _module_path(node) for node in graph.node}
    chosen = []
    for module in modules:
        found = [name for name, path in owners.items() if path == module or path.startswith(module + ".")]
        if not found:
            raise DataError(f"no operator of the model belongs to module {module!r} (known modules: e.g. "
                            f"{sorted(set(owners.values()))[:5]})")
        chosen += found
    return chosen


def _module_path(node) -> str:
    """`blocks.6.0.conv_pw` from the exporter's namespace `: __main__.ModelOutputs/model.blocks.6: ...`: the
    module path within the wrapped network, or "" where the node belongs to no module (the graph's own outputs)."""
    namespace = next((entry.value for entry in node.metadata_props if entry.key == "namespace"), "")
    modules = [name for name in (part.split(":")[0].strip() for part in namespace.split("/")) if name.startswith("model")]
    deepest = modules[-1] if modules else ""
    return deepest.removeprefix("model").removeprefix(".").removeprefix("fine_tuned").removeprefix(".")


class _PhotoReader(CalibrationDataReader):
    """The calibration photos as preprocessed batches, made one at a time as the calibrator asks for them."""

    def __init__(self, batches: Iterator[np.ndarray], input_name: str) -> None:
        self.batches, self.input_name = batches, input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def _batches(photos: list[Image.Image], model: Classifier) -> Iterator[np.ndarray]:
    for start in range(0, len(photos), _CALIBRATION_BATCH):
        yield model.prepare_images(photos[start : start + _CALIBRATION_BATCH])
