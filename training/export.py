"""Export a training checkpoint to a self-describing ONNX model, refusing one that disagrees with PyTorch.

`python -m training.export --checkpoint RUN/checkpoint.safetensors --out models/NAME.onnx`

The model's labels, preprocessing, calibration, operating points, provenance and held-out metrics go into the file's
`wildvision` metadata. Before the file is written, onnxruntime (through the wildvision library itself) and PyTorch
score the same real validation photos; a different top label or logits further apart than `--tolerance` abort the
export. The photos come from the split training recorded next to the checkpoint (`RUN/split.json`), read once.

With `--int8` a statically quantised twin, `NAME.int8.onnx`, is written next to it: calibrated on photos of the
`calib` split (never `val`), checked against the float model on the same validation photos, and measured on the whole
`val` split next to the float model. Both files are written, or neither.

Beside the model goes its reference file, `NAME.reference.npz` (`training.reference`): embeddings of a sample of its
own train, calib and val photos, so that `training.adapt` can replay, anchor and bound the open world for a platform
that has none of the photos.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from training.artefacts import check_logits, set_model_info, staged
from training.backbone import build_model
from training.checkpoint import load_checkpoint
from training.data import Sample, spread
from training.errors import CheckpointError, ConfigError, DataError, ParityError, run_command
from training.evaluation import evaluate
from training.options import AT_LEAST_0, AT_LEAST_1, SHARE, check_ranges, option, parse
from training.pretrained import TwoTailNetwork
from training.quantize import (
    DEFAULT_FLOAT_BLOCKS, DEFAULT_MAX_PROBABILITY_DIFFERENCE, DEFAULT_MIN_AGREEMENT, float_front, quantize_model,
    write_model_info,
)
from training.reference import reference_path, write_model_reference
from training.split import SPLIT_FILE, load_split, recorded_data_option
from wildvision.classifier import Classifier, twin_path
from wildvision.images import ImageLoadError, load_image
from wildvision.model_info import OUTPUT_NAMES, ModelInfo, OperatingPoint, Preprocessing

__all__ = ["ParityError", "main", "model_from_checkpoint", "model_info_from_checkpoint"]

DEFAULT_NOTES = ("Flags listing photos for human review; a score is evidence, not a legal verdict. "
                 "See the model card for data, licences and known weaknesses.")


@dataclass(frozen=True)
class ExportConfig:
    """Which checkpoint to export, where, and the checks the written model must pass."""

    checkpoint: Path | None = option(None, "the training run's checkpoint.safetensors; required", changes_weights=False)
    out: Path | None = option(None, "the .onnx file to write; required", changes_weights=False)
    data: tuple[Path, ...] = recorded_data_option("checkpoint")
    parity_photos: int = option(32, "validation photos both runtimes must agree on", changes_weights=False,
                                bounds=AT_LEAST_1)
    # No range: a negative tolerance is how a test makes the parity check refuse (tests/test_training.py).
    tolerance: float = option(1e-3, "largest allowed logit difference", changes_weights=False)
    notes: str = option(DEFAULT_NOTES, "licences, intended use and weaknesses, stored in the file",
                        changes_weights=False)
    int8: bool = option(False, "also write a statically quantised NAME.int8.onnx next to --out", changes_weights=False)
    int8_calibration_photos: int = option(200, "calib-split photos that set the int8 activation ranges",
                                          changes_weights=False, bounds=AT_LEAST_1)
    int8_float_blocks: int = option(DEFAULT_FLOAT_BLOCKS, "keep the stem and this many first blocks in float32 in the "
                                    "int8 twin, where quantisation costs the most ranking (0: quantise them too)",
                                    changes_weights=False, bounds=AT_LEAST_0)
    # No range either: a share above 1 is how a test makes the int8 check refuse (tests/test_quantize.py).
    int8_min_agreement: float = option(DEFAULT_MIN_AGREEMENT, "fraction of parity photos whose top label int8 must "
                                       "keep", changes_weights=False)
    int8_max_probability_difference: float = option(
        DEFAULT_MAX_PROBABILITY_DIFFERENCE, "largest allowed mean difference of calibrated probabilities, int8 "
                                            "against float", changes_weights=False, bounds=SHARE)

    def __post_init__(self) -> None:
        missing = [f"--{name}" for name in ("checkpoint", "out") if getattr(self, name) is None]
        if missing:
            raise ConfigError(f"{', '.join(missing)}: required")
        check_ranges(self)


def parse_args(argv: Sequence[str] | None) -> ExportConfig:
    return parse(ExportConfig, argv, prog="python -m training.export", description=__doc__.split("\n")[0])


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(lambda: export(parse_args(argv)))


def export(args: ExportConfig) -> int:
    """Write the model (and its int8 twin) only once every check passed; `ExportRefused` where one fails."""
    checkpoint = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(checkpoint)
    info = model_info_from_checkpoint(checkpoint, notes=args.notes)
    samples = load_split(checkpoint, data=args.data, default=args.checkpoint.parent / SPLIT_FILE)
    photos = parity_photos(samples, args.parity_photos)
    twin = twin_path(args.out, "int8")

    with staged(args.out.parent) as staging:  # only a model that passed every check ever appears at --out
        candidate = staging.path(args.out)
        write_onnx(model, info, candidate)
        difference = check_parity(model, candidate, photos, args.tolerance)
        quantized = None
        if args.int8:
            staging.path(twin)  # export_int8 writes it beside the candidate
            quantized = export_int8(
                candidate, samples, info.preprocessing.input_size, photos,
                calibration_count=args.int8_calibration_photos, float_blocks=args.int8_float_blocks,
                min_agreement=args.int8_min_agreement,
                max_probability_difference=args.int8_max_probability_difference,
            )
        # The reference is computed by the checked model itself, so its vectors are the ones adapt will compute.
        write_model_reference(candidate, samples, out=staging.path(reference_path(args.out)))
    print(f"wrote {args.out} ({info.full_name}); parity on {len(photos)} photos: max logit difference {difference:.2e}")
    if quantized is not None:
        print(f"wrote {twin}")
    elif twin.exists():
        # Classifier(precision="int8") loads the twin by name: a stale one would answer for an older model.
        print(f"note: {twin} was left as it was and may belong to an earlier model; export with --int8 or delete it",
              file=sys.stderr)
    return 0


def model_from_checkpoint(checkpoint: dict) -> torch.nn.Module:
    """The checkpoint's network with its weights, in eval mode; `CheckpointError` where they do not fit."""
    model = build_model(checkpoint["architecture"], len(checkpoint["labels"]), pretrained=False)
    config = checkpoint["config"]
    if config.get("keep_pretrained") == "two-tails":  # the weights fill both tails; the copy only gives the shape
        model = TwoTailNetwork(model, copy.deepcopy(model), config["trainable_from_block"], config["pretrained_share"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:  # torch's way of saying that names or shapes differ
        raise CheckpointError(f"the checkpoint's weights do not fit {checkpoint['architecture']}: {error}") from None
    return model.eval()


def export_int8(
    float_model: Path, samples: Sequence[Sample], input_size: int, photos: list, *,
    calibration_count: int, float_blocks: int, min_agreement: float, max_probability_difference: float,
) -> Path:
    """Quantise `float_model` into a twin next to it and record both models' accuracy on `val` in the twin's metadata.

    Raises `QuantizationError` when the twin disagrees with the float model on the parity `photos`.
    """
    calibration = _load_photos(calibration_samples(samples, calibration_count), input_size)
    twin = twin_path(float_model, "int8")
    agreement = quantize_model(
        float_model, twin, calibration, parity_photos=photos,
        min_agreement=min_agreement, max_probability_difference=max_probability_difference,
        keep_float=float_front(float_blocks),
    )
    print(f"int8: calibrated on {len(calibration)} calib photos; against float32, {agreement}")
    float_accuracy = evaluate(Classifier(float_model), samples, split="val").metrics["accuracy"]
    quantized = Classifier(twin)
    evaluation = evaluate(quantized, samples, split="val")
    # The float file keeps the checkpoint's metrics; the twin's are its own, with the float model's accuracy measured
    # the same way beside them, so the cost of quantisation reads straight off the file.
    metrics = {"split": "val", **evaluation.metrics, "float_accuracy": float_accuracy}
    write_model_info(twin, replace(quantized.info, metrics=metrics))
    print(f"val accuracy on {evaluation.metrics['photos']} photos: float32 {float_accuracy}, "
          f"int8 {evaluation.metrics['accuracy']}")
    return twin


def model_info_from_checkpoint(checkpoint: dict, *, notes: str) -> ModelInfo:
    config = checkpoint["config"]
    pre = checkpoint["preprocessing"]
    return ModelInfo(
        name=config["name"],
        version=config["version"],
        labels=tuple(checkpoint["labels"]),
        preprocessing=Preprocessing(pre["input_size"], pre["resize"], tuple(pre["mean"]), tuple(pre["std"])),
        temperature=checkpoint["temperature"],
        operating_points={label: OperatingPoint(**point) for label, point in checkpoint["operating_points"].items()},
        training={"architecture": checkpoint["architecture"], "created": checkpoint["created"],
                  "data": checkpoint["data"], "config": config, "history": checkpoint.get("history", {}),
                  "parent": checkpoint.get("parent")},
        metrics={"split": "val", **checkpoint["metrics"]},
        notes=notes,
    )


class ModelOutputs(torch.nn.Module):
    """The classifier's logits, and from the same forward pass what explanations and known-item matching need.

    `embedding` is the pooled last feature map (the classifier's input); `activation_map` is that map before pooling
    weighted by each label's classifier row (a class activation map: where in the photo the label's evidence lies).
    Both cost almost nothing beside the network itself, and shipping them in the graph keeps torch out of inference.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(pixels)
        embedding = features.mean(dim=(2, 3))
        classifier = self.model.get_classifier()
        activation_map = torch.einsum("nchw,kc->nkhw", features, classifier.weight)
        return classifier(embedding), embedding, activation_map


def write_onnx(model: torch.nn.Module, info: ModelInfo, path: Path) -> None:
    import onnx

    size = info.preprocessing.input_size
    program = torch.onnx.export(
        ModelOutputs(model).eval(), (torch.zeros(1, 3, size, size),), input_names=["pixels"],
        output_names=list(OUTPUT_NAMES), dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False,
    )
    graph = program.model_proto
    set_model_info(graph, info)
    graph.producer_name = "wildvision"
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def parity_photos(samples: Sequence[Sample], count: int) -> list:
    """Up to `count` real validation photos (clean, as users would send them), spread over the labels."""
    val = [s for s in samples if s.split == "val"] or list(samples)
    return [load_image(s.path) for s in spread(val, count)]


def calibration_samples(samples: Sequence[Sample], count: int) -> list[Sample]:
    """Up to `count` photos of the `calib` split, spread over the labels: held out of training, and never `val`."""
    calib = [s for s in samples if s.split == "calib"]
    if not calib:
        raise DataError("no calib photos in the checkpoint's split to calibrate an int8 model on (calib_fraction 0?)")
    return spread(calib, count)


def _load_photos(samples: list[Sample], input_size: int) -> list:
    """The photos decoded as the library decodes them at inference; unreadable ones are named and left out."""
    photos, unreadable = [], []
    for sample in samples:
        try:
            photos.append(load_image(sample.path, min_side=input_size))
        except ImageLoadError as error:
            unreadable.append(str(error))
    if unreadable:
        print(f"{len(unreadable)} unreadable calibration photo(s) left out, e.g. {unreadable[0]}", file=sys.stderr)
    return photos


def check_parity(model: torch.nn.Module, onnx_path: Path, photos: list, tolerance: float) -> float:
    """Largest logit difference between PyTorch and the ONNX file through the wildvision library; raise if too large."""
    classifier = Classifier(onnx_path)
    batch = classifier.prepare_images(photos)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    return check_logits(expected, classifier.logits(batch), tolerance, differ="onnxruntime and PyTorch differ")


if __name__ == "__main__":
    sys.exit(main())
