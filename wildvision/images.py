"""Open real-world photos as plain RGB images, or say clearly why one cannot be opened.

Marketplace uploads come rotated by EXIF, in CMYK, palette, 16-bit or with alpha, animated, huge, truncated or not
images at all. Every source goes through `load_image`, so inference, batch scanning and training see identical pixels.
No process-wide PIL switch is flipped: the host application's PIL settings stay its own.
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from typing import BinaryIO, Iterator, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["DEFAULT_MAX_PIXELS", "ImageLoadError", "ImageSource", "load_image", "describe_source"]

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO, Image.Image, np.ndarray]

# 64 megapixels: larger than any phone photo (a 200 MP sensor bins to 12-50 MP), far below what exhausts memory.
DEFAULT_MAX_PIXELS = 64_000_000

# Alpha and transparency are flattened onto white: listing photos with cut-out backgrounds are shown on white.
_BACKGROUND = (255, 255, 255)


class ImageLoadError(ValueError):
    """A photo could not be turned into pixels; `source` names it, `reason` says why in words, `category` in one
    word for counting (`empty`, `not_an_image`, `corrupt`, `too_large`, `unreadable`, `unsupported_input`)."""

    def __init__(self, source: str, reason: str, category: str) -> None:
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
    """Return `source` as an upright 8-bit RGB image.

    `min_side`, when given, lets JPEG decoding skip detail the model will never see: the decoder scales down by up to
    8x but keeps both sides at least `min_side` pixels (much faster on large photos). Raises `ImageLoadError` for
    anything that is not a usable image.
    """
    name = describe_source(source)
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be a positive number of pixels, got {min_side}")
    if isinstance(source, np.ndarray):
        return _from_array(source, name)
    if isinstance(source, Image.Image):
        try:  # a lazily opened PIL image decodes only now
            return _to_rgb(_first_frame(source), name)
        except (OSError, SyntaxError) as error:
            raise ImageLoadError(name, f"corrupt or truncated image data ({error})", "corrupt") from None
    with _opened(source, name) as file:
        image = _open(file, name)
        if image.width * image.height > max_pixels:
            reason = f"{image.width}x{image.height} exceeds the {max_pixels:,}-pixel limit (possible decompression bomb)"
            raise ImageLoadError(name, reason, "too_large")
        if min_side is not None and image.format == "JPEG":
            _decode_reduced(image, min_side)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as error:
            raise ImageLoadError(name, f"corrupt or truncated image data ({error})", "corrupt") from None
        # Loaded pixels outlive the file, so the image is ours to rotate in place: no copy of a decoded photo.
        return _to_rgb(_first_frame(image), name, in_place=True)


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
    """Pillow's lazy open (header only), with its failures named."""
    try:
        return Image.open(file)
    except Image.DecompressionBombError as error:
        reason = f"too many pixels, refused as a possible decompression bomb ({error})"
        raise ImageLoadError(name, reason, "too_large") from None
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image file, or a format Pillow cannot read", "not_an_image") from None
    except OSError as error:
        raise ImageLoadError(name, f"cannot read file ({error.strerror or error})", "unreadable") from None


def _decode_reduced(image: Image.Image, min_side: int) -> None:
    # draft() picks the largest DCT scale (1/2, 1/4, 1/8) that keeps the image at least the requested size.
    scale = min(image.width, image.height) / min_side
    if scale >= 2:
        image.draft("RGB", (int(image.width / scale) + 1, int(image.height / scale) + 1))


def _first_frame(image: Image.Image) -> Image.Image:
    """Animated GIF/PNG/WebP: the first frame is the listing's cover picture."""
    # tell(), not is_animated: probing for a second frame reads on into the file, and a truncated later frame
    # would then fail a cover frame that decoded fine.
    if image.tell() != 0:
        image.seek(0)
    return image


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
