"""Hashes of photos: perceptual (the same picture resized or re-compressed keeps nearly the same hash) and of a file's
exact bytes (`file_sha256`, the one place a file's SHA-256 is computed: model identities, training's data fingerprints
and feature cache).

A 256-bit difference hash (is each pixel of a 17x16 greyscale thumbnail brighter than its right neighbour?) survives
resizing and re-compression. 64 bits are too few for museum photos: a centred object on a plain background gives
nearly the same 64-bit hash whatever the object is. On the shared data, pairs within 12 of 256 bits are true
duplicates; unrelated studio photos start at about 14. Training uses it to keep duplicates on one side of a split; the
known-item index uses it to recognise re-posted photos.

PDQ (Meta's open perceptual hash, also 256 bits, with a quality score) is the hash the trust & safety industry
exchanges (ThreatExchange's `pdq` signal type, Hasher-Matcher-Actioner). `pdq_hashes` computes it with Meta's own C++
through `pdqhash` (the `pdq` extra), with the seven dihedral variants (rotations and mirrors) in the same pass. Its
bits are kept in the order of ThreatExchange's 64 hex digits, so `pdq_hex` and `pdq_from_hex` are plain hex.

The dihedral variants come from the photo's DCT, not from turned pixels, and are close rather than equal to the hash
of the turned photo: on 120 shared photos, 3 % of mirrors and 5 % of half turns land past Meta's 31 bits (up to 46),
as the downsampling before the DCT is not symmetric. A query therefore also hashes its own mirror (`with_mirror`), the
commonest change a re-poster makes: mirrored re-posts recalled at 31 bits rose from 98 % to 100 % (300 shared photos).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_MAX_DISTANCE", "HASH_BYTES", "PDQ_MATCH_DISTANCE", "PdqHashes", "difference_hash", "file_sha256",
    "hamming_distances", "pdq_available", "pdq_from_hex", "pdq_hashes", "pdq_hex",
]

DEFAULT_MAX_DISTANCE = 12  # bits of 256
HASH_BYTES = 32  # 256 bits
_READ_BLOCK = 1 << 20  # bytes read at a time: a model file of hundreds of MB is never held in memory whole
# Meta's recommended match threshold for PDQ (bits of 256, inclusive), as ThreatExchange and HMA use it.
PDQ_MATCH_DISTANCE = 31
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


@dataclass(frozen=True)
class PdqHashes:
    """A photo's PDQ hash and its seven dihedral variants, and PDQ's quality score (0-100; Meta advises not
    trusting matches of hashes below 50: flat or tiny photos).

    `hashes` is 8 x 32 uint8 in pdqhash's order: original, rotated 90, 180, 270, mirrored left-right, up-down, and
    about each diagonal; then, `with_mirror`, the same 8 of the photo mirrored left-right (16 x 32). `hashes[0]` is
    the photo's own hash, the one exchanged.
    """

    hashes: np.ndarray
    quality: int

    @property
    def own(self) -> np.ndarray:
        return self.hashes[0]


@functools.cache  # asked for every photo prepared for matching: a failed import searches the path each time
def pdq_available() -> bool:
    """Whether `pdqhash` (the `pdq` extra) is installed."""
    try:
        import pdqhash  # noqa: F401
    except ImportError:
        return False
    return True


def pdq_hashes(image: Image.Image, *, with_mirror: bool = False) -> PdqHashes:
    """PDQ of `image` and of its dihedral variants, by Meta's C++ (`pdqhash`), and `with_mirror` those of its mirror
    too (what a query is hashed with); without pdqhash, an ImportError naming the extra."""
    try:
        import pdqhash
    except ImportError:
        raise ImportError("PDQ hashes need pdqhash: pip install 'wildvision[pdq]' (it builds with a C++ compiler)"
                          ) from None
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    vectors, quality = pdqhash.compute_dihedral(np.ascontiguousarray(pixels))
    if with_mirror:
        vectors = [*vectors, *pdqhash.compute_dihedral(np.ascontiguousarray(pixels[:, ::-1]))[0]]
    return PdqHashes(np.packbits(np.stack(vectors).astype(bool), axis=1), int(quality))


def pdq_hex(hash_bytes: np.ndarray) -> str:
    """A PDQ hash (32 bytes) as ThreatExchange writes it: 64 lower-case hex digits."""
    return bytes(np.asarray(hash_bytes, np.uint8)).hex()


def pdq_from_hex(text: str) -> np.ndarray:
    """32 bytes from 64 hex digits (either case); raises ValueError naming the text otherwise."""
    cleaned = text.strip()
    if len(cleaned) != 2 * HASH_BYTES:
        raise ValueError(f"not a PDQ hash (64 hex digits): {text!r}")
    try:
        return np.frombuffer(bytes.fromhex(cleaned), np.uint8).copy()
    except ValueError:
        raise ValueError(f"not a PDQ hash (64 hex digits): {text!r}") from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, as 64 hex digits; raises `OSError` if it cannot be read."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(_READ_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
