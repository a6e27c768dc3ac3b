"""The root of wildvision's own errors: what a caller did wrong or gave us, never a bug.

Each kind lives with its module (`ImageLoadError` in images, `ModelFormatError` and `OperatingPointError` in
model_info, `IndexFormatError` in known_items, `ResumeError` and `RecordFormatError` in scan and records); all derive
from `WildvisionError` and, for callers written before it existed, from `ValueError`. The command line turns exactly
these (and file-system errors) into one line and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["WildvisionError"]


class WildvisionError(Exception):
    """Bad input, a bad file or a refused request, explained in the message."""
