"""How a long training step reports progress: a bar on a terminal, a plain line a minute in a log."""

from __future__ import annotations

import sys
import time

__all__ = ["logged_progress", "progress"]


def progress(iterable, description: str):
    """A progress bar on a terminal; elsewhere (a log file, CI) a plain line a minute, so a log never goes quiet."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, desc=description, unit="batch", mininterval=5)
    return logged_progress(iterable, description)


def logged_progress(iterable, description: str, interval_s: float = 60.0):
    total = len(iterable)
    start = last = time.monotonic()
    for done, item in enumerate(iterable, start=1):
        yield item
        now = time.monotonic()
        if now - last >= interval_s and done < total:
            left = (now - start) / done * (total - done)
            print(f"{description}: {done}/{total} batches, {(now - start) / 60:.1f} min so far, "
                  f"about {left / 60:.0f} min left", flush=True)
            last = now
