"""Training checkpoints that describe themselves: weights plus architecture, labels, preprocessing, calibration,
operating points, metrics, data manifest and config, so export needs nothing but the file."""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["CHECKPOINT_FORMAT", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "wildvision-checkpoint/1"


def save_checkpoint(path: Path, checkpoint: dict) -> None:
    """Write atomically: a run killed mid-write never leaves half a checkpoint at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"format": CHECKPOINT_FORMAT, **checkpoint}, partial)
    partial.replace(path)


def load_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise SystemExit(f"checkpoint not found: {path}")
    # weights_only=False: the checkpoint holds plain config dicts next to tensors; only load checkpoints you made.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"{path} is not a wildvision training checkpoint")
    return checkpoint
