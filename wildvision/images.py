"""Open real-world photos as plain RGB images, or say clearly why one cannot be opened.

Marketplace uploads come rotated by EXIF, in CMYK, palette, 16-bit or with alpha, animated, huge, truncated, damaged
or not images at all. Every source goes through `load_image` (the cover frame) or `load_frames` (every frame), so
inference, batch scanning and training see identical pixels, and every failure to decode is an `ImageLoadError`.
No process-wide PIL switch is flipped: the host application's PIL settings stay its own.
"""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
import zlib
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Literal, Union, get_args

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wildvision.errors import WildvisionError

__all__ = [
    "DEFAULT_MAX_FRAMES", "DEFAULT_MAX_PIXELS", "ERROR_CATEGORIES", "IMAGE_SUFFIXES", "ErrorCategory", "ImageLoadError",
    "ImageSource", "describe_source", "load_frames", "load_image",
]

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Image.Image, np.ndarray]

# Why a photo could not be turned into pixels, in one word for counting.
ErrorCategory = Literal[
    "empty",  # 0 bytes
    "not_an_image",  # no image format recognised (text, a folder, random bytes)
    "corrupt",  # an image format, but the data is damaged or truncated
    "too_large",  # over the pixel or frame limit (possible decompression bomb)
    "unreadable",  # the file system refused: no permission, vanished, I/O error
    "unsupported_input",  # a Python object or array layout that is not an image
    "unsupported_format",  # an image format that needs an optional extra (HEIC: wildvision[heic])
]
ERROR_CATEGORIES: tuple[ErrorCategory, ...] = get_args(ErrorCategory)

# What `scan` picks up in a folder. HEIC/HEIF (iPhones' default) decode with the `heic` extra; the rest with Pillow.
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif", ".heic", ".heif",
})

# 64 megapixels: larger than any phone photo (a 200 MP sensor bins to 12-50 MP), far below what exhausts memory.
DEFAULT_MAX_PIXELS = 64_000_000
# Animated GIF/WebP/PNG and multi-page TIFF: every frame is scored (a seller could hide ivory in frame 2), so a file
# with more frames than this is refused rather than scored in part. 32 covers listing slideshows; the frames' pixels
# together must also stay within the pixel limit.
DEFAULT_MAX_FRAMES = 32

# Alpha and transparency are flattened onto white: listing photos with cut-out backgrounds are shown on white.
_BACKGROUND = (255, 255, 255)
# ISO base media brands of HEIC/HEIF photos (bytes 8-12 of the file, after "ftyp"); AVIF's own brands Pillow reads.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"heif"})
_heif_lock = threading.Lock()
_warnings_lock = threading.Lock()


class ImageLoadError(WildvisionError, ValueError):
    """A photo could not be turned into pixels; `source` names it, `reason` says why in words, `category` in one
    word for counting (see `ErrorCategory`)."""

    def __init__(self, source: str, reason: str, category: ErrorCategory) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason
        self.category = category


def describe_source(source: ImageSource) -> str:
    """A short human name for a source, for error messages and records."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.width}x{source.height}>"
    if isinstance(source, np.ndarray):
        return f"<array {source.dtype} {source.shape}>"
    return f"<file {getattr(source, 'name', type(source).__name__)}>"


def load_image(
    source: ImageSource, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Return `source` as an upright 8-bit RGB image; for an animated or multi-page file, its first frame.

    `min_side`, when given, lets JPEG decoding skip detail the model will never see: the decoder scales down by up to
    8x but keeps both sides at least `min_side` pixels (much faster on large photos). Raises `ImageLoadError` for
    anything that is not a usable image.
    """
    return _load(source, min_side=min_side, max_pixels=max_pixels, max_frames=1)[0]


def load_frames(
    source: ImageSource, *, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
    max_frames: int = DEFAULT_MAX_FRAMES,
) -> list[Image.Image]:
    """Every frame of `source` as upright RGB images: one for a still photo, each frame of an animated GIF/WebP/PNG or
    each page of a TIFF. A file with more than `max_frames` frames, or more pixels in all than `max_pixels`, is
    refused (`too_large`), so no frame goes unseen."""
    if max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    return _load(source, min_side=min_side, max_pixels=max_pixels, max_frames=max_frames)


def _load(source: ImageSource, *, min_side: int | None, max_pixels: int, max_frames: int) -> list[Image.Image]:
    """The first `max_frames` frames, refusing files with more when `max_frames` > 1 (1: the cover frame only)."""
    name = describe_source(source)
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be a positive number of pixels, got {min_side}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    if isinstance(source, np.ndarray):
        return [_from_array(source, name)]
    if isinstance(source, Image.Image):
        with _decoding(name):  # a lazily opened PIL image decodes only now
            return _frames(source, name, max_pixels, max_frames, owned=False)
    with _opened(source, name) as file, _decoding(name):
        image = _open(file, name)
        if min_side is not None and image.format == "JPEG":
            _check_pixels(image.width * image.height, image, name, max_pixels)
            _decode_reduced(image, min_side)
        return _frames(image, name, max_pixels, max_frames, owned=True)


def _frames(image: Image.Image, name: str, max_pixels: int, max_frames: int, *, owned: bool) -> list[Image.Image]:
    """Decode the frames; `owned`: the image was opened here, so the single-frame result may be rotated in place."""
    # Only count frames when all are wanted: counting reads on through the file, and the cover frame alone must not
    # fail because a later frame is truncated.
    count = getattr(image, "n_frames", 1) if max_frames > 1 else 1
    _check_pixels(count * image.width * image.height, image, name, max_pixels, frames=count)
    if count > max_frames:
        raise ImageLoadError(name, f"{count} frames, over the {max_frames}-frame limit: every frame must be checked, "
                                   "so files with more are refused", "too_large")
    position = image.tell()
    frames = []
    for index in range(count):
        image.seek(index)
        image.load()
        frames.append(_to_rgb(image, name, in_place=owned and count == 1))
    if not owned and image.tell() != position:
        image.seek(position)  # a caller's image is left on the frame it was on
    return frames


def _check_pixels(pixels: int, image: Image.Image, name: str, max_pixels: int, frames: int = 1) -> None:
    if pixels > max_pixels:
        size = f"{image.width}x{image.height}" + (f" x {frames} frames" if frames > 1 else "")
        reason = f"{size} exceeds the {max_pixels:,}-pixel limit (possible decompression bomb)"
        raise ImageLoadError(name, reason, "too_large")


@contextmanager
def _decoding(name: str) -> Iterator[None]:
    """Any failure inside Pillow's decoders, whatever it raises, as an `ImageLoadError` naming the photo.

    Pillow's plugins raise OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error or
    RuntimeError (AVIF) on damaged data; a platform needs each one counted as `corrupt`, not a 500.
    """
    try:
        yield
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(name, f"too many pixels, refused as a possible decompression bomb ({error})",
                             "too_large") from None
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image file, or a format Pillow cannot read", "not_an_image") from None
    except OSError as error:
        if error.errno is not None:  # the file system's error (EIO, vanished file), not the decoder's
            raise ImageLoadError(name, f"cannot read file ({error.strerror or error})", "unreadable") from None
        raise ImageLoadError(name, f"corrupt or truncated image data ({error})", "corrupt") from None
    except (SyntaxError, ValueError, EOFError, RuntimeError, IndexError, struct.error, zlib.error) as error:
        raise ImageLoadError(name, f"corrupt image data ({type(error).__name__}: {error})", "corrupt") from None


@contextmanager
def _opened(source: ImageSource, name: str) -> Iterator[BinaryIO]:
    """`source` as a readable file: one opened here is closed on leaving, a caller's own file is left open."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageLoadError(name, "empty input (0 bytes)", "empty")
        yield io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            file = open(source, "rb")
        except IsADirectoryError:
            raise ImageLoadError(name, "is a directory, not an image file", "not_an_image") from None
        except OSError as error:
            raise ImageLoadError(name, f"cannot read file ({error.strerror or error})", "unreadable") from None
        with file:
            if os.fstat(file.fileno()).st_size == 0:
                raise ImageLoadError(name, "empty file (0 bytes)", "empty")
            yield file
    elif hasattr(source, "read"):
        yield source
    else:
        reason = f"unsupported input type {type(source).__name__}; give a path, bytes, a file, a PIL image or an array"
        raise ImageLoadError(name, reason, "unsupported_input")


def _open(file: BinaryIO, name: str) -> Image.Image:
    """Pillow's lazy open (header only); a HEIC photo through pillow-heif, when the `heic` extra is installed."""
    try:
        return _open_quietly(file)
    except UnidentifiedImageError:
        if not _is_heif(file):
            raise
    if not _register_heif():
        raise ImageLoadError(name, "a HEIC/HEIF photo: install the heic extra to read it (pip install "
                                   "'wildvision[heic]')", "unsupported_format")
    file.seek(0)
    return _open_quietly(file)


def _open_quietly(file: BinaryIO) -> Image.Image:
    """`Image.open` without Pillow's warnings on stderr: the pixel limit is checked right after (an oversized photo
    becomes a `too_large` error), and a header Pillow reads past damage to ("Truncated File Read", "Tag data larger
    than file" in a TIFF's directory) either decodes or fails as `corrupt`, not as a line in the host's log."""
    # catch_warnings swaps the process's filter list, so our threads take turns; a host thread warning meanwhile
    # sees these extra filters, which silence nothing but Pillow's own.
    with _warnings_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")
        return Image.open(file)


def _is_heif(file: BinaryIO) -> bool:
    try:
        file.seek(0)
        head = file.read(12)
    except (OSError, ValueError):  # not seekable: Pillow would not have read it either
        return False
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _register_heif() -> bool:
    """Teach Pillow HEIF (adds a format, changes nothing else), once; False when pillow-heif is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    with _heif_lock:
        if "HEIF" not in Image.OPEN:
            pillow_heif.register_heif_opener()
    return True


def _decode_reduced(image: Image.Image, min_side: int) -> None:
    # draft() picks the largest DCT scale (1/2, 1/4, 1/8) that keeps the image at least the requested size.
    scale = min(image.width, image.height) / min_side
    if scale >= 2:
        image.draft("RGB", (int(image.width / scale) + 1, int(image.height / scale) + 1))


def _to_rgb(image: Image.Image, name: str, *, in_place: bool = False) -> Image.Image:
    """`image` upright in RGB; without `in_place` the result never shares pixels with `image` (a caller's own)."""
    if in_place:
        ImageOps.exif_transpose(image, in_place=True)
    else:
        image = ImageOps.exif_transpose(image)  # always a new image
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _from_array(np.asarray(image), name)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        flat = Image.new("RGB", image.size, _BACKGROUND)
        flat.paste(image, mask=image.getchannel("A"))
        return flat
    # CMYK, YCbCr, L, 1 and RGB convert directly.
    return image.convert("RGB") if image.mode != "RGB" else image
def _from_array(array: np.ndarray, name: str) -> Image.Image:
    """Arrays are HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA); 8-bit, 16-bit, or floats in [0, 1]."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape:
        raise ImageLoadError(name, "array must be HxW, HxWx3 or HxWx4 with non-zero sides", "unsupported_input")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype.newbyteorder("=") in (np.uint16, np.int32, np.int64, np.uint32):  # big-endian too (TIFF "MM")
        # 16-bit photos: map the full 16-bit range onto 8 bits (65535 / 257 = 255).
        pixels = np.clip(array.astype(np.float64) / 257.0, 0, 255).round().astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ImageLoadError(name, "float arrays must hold finite values in [0, 1]", "unsupported_input")
        pixels = (array * 255.0).round().astype(np.uint8)
    else:
        raise ImageLoadError(name, f"unsupported array dtype {array.dtype}", "unsupported_input")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels)), name)
