"""Training checkpoints that describe themselves, in a format that cannot run code when loaded.

The weights are safetensors (raw tensor bytes behind a JSON header: loading one never unpickles anything) and
everything else (architecture, labels, preprocessing, calibration, operating points, metrics, data fingerprints and
config) is JSON in the file's header, so export needs nothing but the file and a checkpoint passed between colleagues
is data, never a program. Anything else, a pickled `torch.save` file included, is refused unopened.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from training.errors import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_NAME", "load_checkpoint", "load_training_state", "save_checkpoint"]

CHECKPOINT_FORMAT = "wildvision-checkpoint/2"  # 1 was a torch pickle: refused, since loading it could run code
CHECKPOINT_NAME = "checkpoint.safetensors"  # in the run folder, next to the split it was trained on


def save_checkpoint(path: Path, facts: Mapping[str, object], state_dict: Mapping[str, torch.Tensor]) -> None:
    """Write the weights and the JSON-ready `facts` atomically: a run killed mid-write never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    tensors = {name: tensor.detach().contiguous() for name, tensor in state_dict.items()}
    save_file(tensors, partial, metadata={"format": CHECKPOINT_FORMAT, "facts": json.dumps(facts)})
    partial.replace(path)


def load_checkpoint(path: Path) -> dict:
    """The checkpoint's facts, with its weights under `state_dict`; `CheckpointError` for anything else."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            state_dict = {name: handle.get_tensor(name) for name in handle.keys()}
    except SafetensorError as error:
        raise CheckpointError(_not_a_checkpoint(path, f"not a safetensors file ({error})")) from None
    if header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(_not_a_checkpoint(path, f"format {header.get('format')!r}"))
    try:
        facts = json.loads(header["facts"])
    except (KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(_not_a_checkpoint(path, f"unreadable facts ({error!r})")) from None
    return {**facts, "state_dict": state_dict}


def load_training_state(path: Path) -> dict:
    """A run's resume state (tensors, numbers and lists only), loaded without unpickling arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:  # a forbidden object, a damaged or cut file
        raise CheckpointError(f"{path} is not a training state this version can load safely ({type(error).__name__}); "
                              "delete it to train that run from its first epoch") from None


def _not_a_checkpoint(path: Path, why: str) -> str:
    return (f"{path} is not a wildvision checkpoint ({CHECKPOINT_FORMAT}): {why}. Checkpoints are safetensors files; "
            "an older pickled checkpoint.pt is never loaded (it could run code): run its training command again, "
            "which reuses the run's cached features and training state and writes a safe checkpoint")
