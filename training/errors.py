"""The errors training raises for a person to fix, and the one place a command turns them into an exit status.

Library code in `training/` raises a `TrainingError` whose message names the file or option to change; only a
command's `main(argv)` catches it, through `run_command`, and prints it as one line. Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable

from wildvision.errors import WildvisionError

__all__ = ["CheckpointError", "ConfigError", "DataError", "ExportRefused", "MissingDependencyError", "ParityError",
           "TrainingError", "run_command"]


class TrainingError(Exception):
    """Input, data or an artefact that a person must fix; the message says what and how."""

    exit_status = 2  # a usage or input error, as argparse and the `wildvision` command report them
    prefix = "error"


class DataError(TrainingError):
    """The data cannot be read or split as given; the message names the file or option to fix."""


class ConfigError(TrainingError):
    """A config file or option that cannot be used as given."""


class CheckpointError(TrainingError):
    """A file that is not a safe, complete wildvision training checkpoint (or training state)."""


class ExportRefused(TrainingError):
    """An exported model disagrees with the model it was made from; nothing was written."""

    exit_status = 1  # the inputs were fine: the result failed its check
    prefix = "export refused"


class ParityError(ExportRefused):
    """A written model does not reproduce what it was made from (export's PyTorch model, adapt's fitted head)."""


class MissingDependencyError(TrainingError, ImportError):
    """A package of the `[train]` extra is missing; the message says what to install."""


# Errors of the wildvision library that a training command reports as input errors: a missing or foreign model file,
# a thresholds file that is not safe, a photo that cannot be read.
_INPUT_ERRORS = (TrainingError, WildvisionError, FileNotFoundError)


def run_command(command: Callable[[], int]) -> int:
    """Run a command's body; an input error becomes one line on stderr and its exit status, a bug keeps its traceback."""
    try:
        return command()
    except _INPUT_ERRORS as error:
        print(f"{getattr(error, 'prefix', 'error')}: {error}", file=sys.stderr)
        return getattr(error, "exit_status", 2)
