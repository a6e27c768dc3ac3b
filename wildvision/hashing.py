"""Hashes of photos: perceptual (the same picture resized or re-compressed keeps nearly the same hash) and of a file's
exact bytes (`file_sha256`, the one place a file's SHA-256 is computed: model identities, training's data fingerprints
and feature cache).

A 256-bit difference hash (is each pixel of a 17x16 greyscale thumbnail brighter than its right neighbour?) survives
resizing and re-compression. 64 bits are too few for museum photos: a centred object on a plain background gives
nearly the same 64-bit hash whatever the object is. On the shared data, pairs within 12 of 256 bits are true
duplicates; unrelated studio photos start at about 14. Training uses it to keep duplicates on one side of a split; the
known-item index uses it to recognise re-posted photos.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from PIL import Image

__all__ = ["DEFAULT_MAX_DISTANCE", "HASH_BYTES", "difference_hash", "file_sha256", "hamming_distances"]

DEFAULT_MAX_DISTANCE = 12  # bits of 256
HASH_BYTES = 32  # 256 bits
_READ_BLOCK = 1 << 20  # bytes read at a time: a model file of hundreds of MB is never held in memory whole
_POPCOUNT = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)  # set bits of each byte value


def difference_hash(image: Image.Image) -> np.ndarray:
    """256 bits as 32 bytes."""
    pixels = np.asarray(image.convert("L").resize((17, 16), Image.Resampling.BILINEAR), dtype=np.int16)
    return np.packbits(pixels[:, 1:] > pixels[:, :-1])


def hamming_distances(hashes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Bits differing between every row of `hashes` (M x 32) and every row of `others` (N x 32), as M x N.

    A byte lookup table rather than `np.unpackbits`: its temporary is M x N x 32 bytes instead of eight times that.
    """
    return _POPCOUNT[hashes[:, None, :] ^ others[None, :, :]].sum(axis=2, dtype=np.int32)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits; raises `OSError` if it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(_READ_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
