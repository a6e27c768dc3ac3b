"""The steps every command that writes a model file shares (export, adapt, quantise), in one place each, so that no
two commands can come to disagree on them:

- `staged`: write to a temporary place, check, replace: nothing appears at a destination unless every check
  passed, and the files of one write (a model, its int8 twin, its reference) appear together or not at all;
- `check_logits`: parity, the written model against what it was made from (the largest logit difference and the
  top labels they disagree on, against a tolerance);
- `set_model_info`: the `wildvision` metadata entry of an ONNX graph.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from training.errors import ParityError
from wildvision.model_info import METADATA_KEY, ModelInfo

if TYPE_CHECKING:
    import onnx

__all__ = ["Staging", "check_logits", "set_model_info", "staged"]


class Staging:
    """A scratch folder beside the destinations, and the files written there that are to replace them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._destinations: dict[Path, Path] = {}  # staged file -> destination, in the order they were asked for

    def path(self, destination: Path) -> Path:
        """Where to write what is to appear at `destination`: a file of the same name in the scratch folder, so a
        file named after it (`twin_path`, `reference_path`) is staged too when it is asked for."""
        staged = self.folder / destination.name
        self._destinations[staged] = destination
        return staged

    def _replace(self) -> None:
        """Move every staged file that was written onto its destination (a rename in one folder: atomic per file);
        one that was asked for but not written leaves its destination as it was."""
        for staged, destination in self._destinations.items():
            if staged.exists():
                staged.replace(destination)


@contextmanager
def staged(folder: Path) -> Iterator[Staging]:
    """A `Staging` in `folder` (made if absent): the staged files replace their destinations when the block ends
    without an error; where a check raises, nothing is moved and the scratch folder is removed."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as scratch:  # same file system as the destinations: renames
        staging = Staging(Path(scratch))
        yield staging
        staging._replace()


def check_logits(
    expected: np.ndarray, actual: np.ndarray, tolerance: float, *, differ: str, also: tuple[np.ndarray, ...] = ()
) -> float:
    """The largest difference between `expected` and `actual` logits (photos x labels); `ParityError` when it
    exceeds `tolerance` or any photo's top label differs. `also`: other logits that must lie within `tolerance` of
    `actual` (adapt's logits read off the activation maps). `differ` names the two sides for the message."""
    difference = float(max(np.abs(other - actual).max() for other in (expected, *also)))
    disagreements = int((expected.argmax(1) != actual.argmax(1)).sum())
    if disagreements or difference > tolerance:
        raise ParityError(f"{differ} on {len(expected)} photos: {disagreements} top-label disagreements, max logit "
                          f"difference {difference:.2e} (tolerance {tolerance:.0e})")
    return difference


def set_model_info(model: onnx.ModelProto, info: ModelInfo) -> None:
    """Put `info` in the graph's `wildvision` metadata entry, replacing any earlier one; other entries are kept."""
    kept = [entry for entry in model.metadata_props if entry.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
