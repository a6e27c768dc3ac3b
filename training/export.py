"""Export a training checkpoint to a self-describing ONNX model, refusing one that disagrees with PyTorch.

`python -m training.export --checkpoint RUN/checkpoint.pt --out models/NAME.onnx`

The model's labels, preprocessing, calibration, operating points, provenance and held-out metrics go into the file's
`wildvision` metadata. Before the file is written, onnxruntime (through the wildvision library itself) and PyTorch
score the same real validation photos; a different top label or logits further apart than `--tolerance` abort the
export.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from training.backbone import build_model
from training.checkpoint import load_checkpoint
from training.data import prepare_samples_like
from wildvision.classifier import Classifier
from wildvision.images import load_image
from wildvision.model_info import METADATA_KEY, ModelInfo, OperatingPoint, Preprocessing
from wildvision.preprocess import to_batch

__all__ = ["main", "model_info_from_checkpoint", "ParityError"]

DEFAULT_NOTES = ("Flags listing photos for human review; a score is evidence, not a legal verdict. "
                 "See the model card for data, licences and known weaknesses.")


class ParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--data", type=Path, help="photos for the parity check (default: the checkpoint's training data)")
    parser.add_argument("--parity-photos", type=int, default=32, help="validation photos both runtimes must agree on")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="largest allowed logit difference")
    parser.add_argument("--notes", default=DEFAULT_NOTES, help="licences, intended use and weaknesses, stored in the file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    checkpoint = load_checkpoint(args.checkpoint)
    model = build_model(checkpoint["architecture"], len(checkpoint["labels"]), pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    info = model_info_from_checkpoint(checkpoint, notes=args.notes)
    photos = parity_photos(args.data or Path(checkpoint["config"]["data"]), checkpoint, args.parity_photos)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out.parent) as scratch:
        candidate = Path(scratch) / args.out.name
        write_onnx(model, info, candidate)
        try:
            difference = check_parity(model, candidate, photos, args.tolerance)
        except ParityError as error:
            print(f"export refused: {error}", file=sys.stderr)
            return 1
        candidate.replace(args.out)  # only a model that passed the parity check ever appears at --out
    print(f"wrote {args.out} ({info.full_name}); parity on {len(photos)} photos: max logit difference {difference:.2e}")
    return 0


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
                  "data": checkpoint["data"], "config": config},
        metrics={"split": "val", **checkpoint["metrics"]},
        notes=notes,
    )


def write_onnx(model: torch.nn.Module, info: ModelInfo, path: Path) -> None:
    import onnx

    size = info.preprocessing.input_size
    program = torch.onnx.export(
        model, (torch.zeros(1, 3, size, size),), input_names=["pixels"], output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, verbose=False,
    )
    graph = program.model_proto
    entry = graph.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    graph.producer_name = "wildvision"
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def parity_photos(data: Path, checkpoint: dict, count: int) -> list:
    """Up to `count` real validation photos (clean, as users would send them), spread over the labels."""
    samples, _ = prepare_samples_like(data, checkpoint["config"])
    val = [s for s in samples if s.split == "val"] or samples
    step = max(1, len(val) // count)
    return [load_image(s.path) for s in val[::step][:count]]


def check_parity(model: torch.nn.Module, onnx_path: Path, photos: list, tolerance: float) -> float:
    """Largest logit difference between PyTorch and the ONNX file through the wildvision library; raise if too large."""
    classifier = Classifier(onnx_path)
    batch = to_batch(photos, classifier.info.preprocessing)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).numpy()
    actual = classifier.logits(batch)
    difference = float(np.abs(expected - actual).max())
    disagreements = int((expected.argmax(1) != actual.argmax(1)).sum())
    if disagreements or difference > tolerance:
        raise ParityError(f"onnxruntime and PyTorch differ on {len(photos)} photos: {disagreements} top-label "
                          f"disagreements, max logit difference {difference:.2e} (tolerance {tolerance:.0e})")
    return difference


if __name__ == "__main__":
    sys.exit(main())
