"""`wildvision.images.load_image`: every kind of real-world upload becomes an upright RGB image or an ImageLoadError.

All images are generated here, in memory or under tmp_path; nothing is read from shared data.
"""

from __future__ import annotations

import gc
import io
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFile

try:
    import resource
except ImportError:  # Windows
    resource = None

from wildvision.images import ImageLoadError, describe_source, load_image

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)
ORIENTATION = 0x0112  # EXIF tag


# ---------------------------------------------------------------------------------------------------------------------
# Image factories
# ---------------------------------------------------------------------------------------------------------------------


def solid(size: tuple[int, int], colour, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def marked(size: tuple[int, int], marker=RED, background=BLUE) -> Image.Image:
    """A `background` image with a `marker` square in its top-left corner (a third of the shorter side)."""
    image = solid(size, background)
    side = min(size) // 3
    ImageDraw.Draw(image).rectangle((0, 0, side - 1, side - 1), fill=marker)
    return image


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Random RGB pixels: compresses badly, so encoded data is long and truncation lands mid-scan."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def save(image: Image.Image, path: Path, fmt: str | None = None, **options) -> Path:
    image.save(path, fmt, **options)
    return path


def jpeg_with_orientation(path: Path, image: Image.Image, orientation: int, **options) -> Path:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return save(image, path, "JPEG", exif=exif, quality=95, **options)


def png_claiming_size(width: int, height: int) -> bytes:
    """A real 1x1 PNG whose IHDR is patched (CRC included) to claim `width` x `height`: a decompression bomb header."""
    data = bytearray(encode(solid((1, 1), RED), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:20] = width.to_bytes(4, "big")
    data[20:24] = height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # CRC over chunk type + 13 data bytes
    return bytes(data)


def corner(image: Image.Image, name: str) -> tuple[int, ...]:
    """The pixel a little inside one corner ("top-left", "top-right", "bottom-left", "bottom-right")."""
    inset = min(image.size) // 6
    vertical, horizontal = name.split("-")
    x = inset if horizontal == "left" else image.width - 1 - inset
    y = inset if vertical == "top" else image.height - 1 - inset
    return image.getpixel((x, y))


def close(pixel, expected, tolerance: int = 40) -> bool:
    return all(abs(int(a) - int(b)) <= tolerance for a, b in zip(pixel, expected, strict=True))


def assert_rgb(image: Image.Image, size: tuple[int, int] | None = None) -> None:
    assert isinstance(image, Image.Image)
    assert image.mode == "RGB"
    if size is not None:
        assert image.size == size


def load_error(source, **options) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as caught:
        load_image(source, **options)
    error = caught.value
    assert error.reason, "an ImageLoadError must say why"
    assert str(error) == f"{error.source}: {error.reason}"
    return error


def path_error(path: Path, *reason_words: str, **options) -> ImageLoadError:
    """Load `path` as str and as Path; both must fail naming the file and giving a reason with `reason_words`."""
    for source in (str(path), path):
        error = load_error(source, **options)
        assert error.source == str(path)
        assert str(path) in str(error)
        for word in reason_words:
            assert word.lower() in error.reason.lower(), error.reason
    return error


# ---------------------------------------------------------------------------------------------------------------------
# Input types
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def png_path(tmp_path) -> Path:
    return save(marked((30, 18)), tmp_path / "photo.png")


def assert_is_marked(image: Image.Image, size=(30, 18)) -> None:
    assert_rgb(image, size)
    assert image.getpixel((0, 0)) == RED
    assert image.getpixel((size[0] - 1, size[1] - 1)) == BLUE


def test_str_path(png_path):
    assert_is_marked(load_image(str(png_path)))


def test_pathlib_path(png_path):
    assert_is_marked(load_image(png_path))


def test_bytes(png_path):
    assert_is_marked(load_image(png_path.read_bytes()))


def test_bytearray(png_path):
    assert_is_marked(load_image(bytearray(png_path.read_bytes())))


def test_bytesio_file_object_is_read_and_left_open(png_path):
    buffer = io.BytesIO(png_path.read_bytes())
    assert_is_marked(load_image(buffer))
    assert not buffer.closed  # the caller owns the file


def test_open_binary_file(png_path):
    with png_path.open("rb") as file:
        assert_is_marked(load_image(file))
        assert not file.closed


def test_pil_image():
    assert_is_marked(load_image(marked((30, 18))))


def test_pil_image_result_does_not_share_the_callers_pixels():
    caller = marked((30, 18))
    result = load_image(caller)
    result.putpixel((0, 0), (1, 2, 3))
    assert result is not caller
    assert_is_marked(caller)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "YCbCr", "1", "I;16"])
def test_pil_image_in_other_modes_becomes_rgb(mode):
    image = marked((30, 18)).convert(mode) if mode != "I;16" else Image.fromarray(np.full((18, 30), 65535, np.uint16))
    loaded = load_image(image)
    assert_rgb(loaded, (30, 18))
    if mode == "I;16":
        assert loaded.getpixel((0, 0)) == WHITE
    elif mode == "L":
        assert loaded.getpixel((0, 0)) == (76, 76, 76)  # ITU-R 601 luma of pure red
    elif mode != "1":
        assert close(loaded.getpixel((0, 0)), RED) and close(loaded.getpixel((29, 17)), BLUE)


def test_array_grey_uint8_is_height_by_width():
    array = np.zeros((2, 3), np.uint8)
    array[0, 2] = 200
    array[1, 0] = 7
    image = load_image(array)
    assert_rgb(image, (3, 2))
    assert image.getpixel((2, 0)) == (200, 200, 200)
    assert image.getpixel((0, 1)) == (7, 7, 7)
    assert image.getpixel((0, 0)) == BLACK


def test_array_rgb_uint8_exact_pixels():
    array = np.zeros((4, 5, 3), np.uint8)
    array[0, 0] = (10, 20, 30)
    array[3, 4] = (250, 128, 1)
    image = load_image(array)
    assert_rgb(image, (5, 4))
    assert image.getpixel((0, 0)) == (10, 20, 30)
    assert image.getpixel((4, 3)) == (250, 128, 1)
    np.testing.assert_array_equal(np.asarray(image), array)


def test_array_rgba_alpha_flattened_onto_white():
    array = np.zeros((1, 3, 4), np.uint8)
    array[0, 0] = (255, 0, 0, 0)  # fully transparent red
    array[0, 1] = (255, 0, 0, 255)  # opaque red
    array[0, 2] = (0, 0, 0, 128)  # half-transparent black
    image = load_image(array)
    assert_rgb(image, (3, 1))
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 0)) == RED
    assert close(image.getpixel((2, 0)), (127, 127, 127), tolerance=2)


def test_array_single_channel_equals_grey():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    image = load_image(grey[:, :, None])
    assert_rgb(image, (4, 3))
    np.testing.assert_array_equal(np.asarray(image), np.asarray(load_image(grey)))
    assert image.getpixel((3, 2)) == (220, 220, 220)


@pytest.mark.parametrize("dtype", [np.uint16, ">u2", "<u2"])
def test_array_uint16_maps_full_range_to_8_bits(dtype):
    array = np.array([[0, 32896, 65535]], dtype=dtype)
    image = load_image(array)
    assert_rgb(image, (3, 1))
    assert [image.getpixel((x, 0)) for x in range(3)] == [BLACK, (128, 128, 128), WHITE]


def test_array_uint16_rgb():
    array = np.zeros((2, 2, 3), np.uint16)
    array[0, 0] = (65535, 32896, 0)
    assert load_image(array).getpixel((0, 0)) == (255, 128, 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_array_float_in_unit_range(dtype):
    array = np.array([[0.0, 0.5, 1.0]], dtype=dtype)
    image = load_image(array)
    assert_rgb(image, (3, 1))
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_array_float_rgb():
    array = np.zeros((2, 2, 3), np.float32)
    array[1, 0] = (1.0, 0.0, 0.25)
    assert load_image(array).getpixel((0, 1)) == (255, 0, 64)


def test_array_not_contiguous():
    array = np.zeros((4, 6, 3), np.uint8)
    array[0, 5] = RED
    flipped = array[:, ::-1]  # negative stride
    image = load_image(flipped)
    assert_rgb(image, (6, 4))
    assert image.getpixel((0, 0)) == RED
    transposed = load_image(array.transpose(1, 0, 2))
    assert_rgb(transposed, (4, 6))
    assert transposed.getpixel((0, 5)) == RED


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4, 4, 5), np.uint8),
        np.zeros(16, np.uint8),
        np.zeros((2, 4, 4, 3), np.uint8),
        np.zeros((0, 4), np.uint8),
        np.zeros((4, 0, 3), np.uint8),
    ],
    ids=["2-channels", "5-channels", "1-d", "4-d", "zero-height", "zero-width"],
)
def test_array_wrong_shape(array):
    error = load_error(array)
    assert error.source == f"<array {array.dtype} {array.shape}>"
    assert "HxW" in error.reason


@pytest.mark.parametrize("value", [1.5, -0.1, np.nan, np.inf, -np.inf])
def test_array_float_out_of_range_or_not_finite(value):
    array = np.full((3, 3), 0.5)
    array[1, 1] = value
    assert "[0, 1]" in load_error(array).reason


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, np.int8, np.int16, object])
def test_array_unsupported_dtype(dtype):
    array = np.zeros((3, 3), dtype=dtype)
    assert "dtype" in load_error(array).reason


@pytest.mark.parametrize("source", [42, 3.5, None, ["photo.jpg"], {"path": "photo.jpg"}])
def test_unsupported_input_type(source):
    error = load_error(source)
    assert "unsupported input type" in error.reason
    assert type(source).__name__ in error.reason


def test_describe_source(tmp_path):
    assert describe_source("a/b.jpg") == "a/b.jpg"
    assert describe_source(Path("a") / "b.jpg") == str(Path("a") / "b.jpg")
    assert describe_source(b"abc") == "<3 bytes>"
    assert describe_source(bytearray(5)) == "<5 bytes>"
    assert describe_source(solid((4, 3), RED)) == "<PIL image RGB 4x3>"
    assert describe_source(np.zeros((3, 4), np.uint8)) == "<array uint8 (3, 4)>"
    assert describe_source(io.BytesIO()) == "<file BytesIO>"
    path = save(solid((2, 2), RED), tmp_path / "x.png")
    with path.open("rb") as file:
        assert describe_source(file) == f"<file {path}>"


# ---------------------------------------------------------------------------------------------------------------------
# EXIF orientation
# ---------------------------------------------------------------------------------------------------------------------

# Orientation tag value -> (does width/height swap, where the stored top-left marker is shown).
EXIF_CASES = {
    1: (False, "top-left"),
    3: (False, "bottom-right"),  # rotated 180
    6: (True, "top-right"),  # stored 90 degrees anticlockwise; shown turned 90 degrees clockwise
    8: (True, "bottom-left"),  # stored 90 degrees clockwise; shown turned 90 degrees anticlockwise
}


@pytest.mark.parametrize("orientation", sorted(EXIF_CASES))
def test_exif_orientation_is_applied(tmp_path, orientation):
    path = jpeg_with_orientation(tmp_path / "rotated.jpg", marked((60, 30)), orientation)
    with Image.open(path) as raw:  # the file really stores the unrotated pixels plus the tag
        assert raw.size == (60, 30) and raw.getexif()[ORIENTATION] == orientation
    swapped, marker_at = EXIF_CASES[orientation]
    image = load_image(path)
    assert_rgb(image, (30, 60) if swapped else (60, 30))
    for name in ("top-left", "top-right", "bottom-left", "bottom-right"):
        assert close(corner(image, name), RED if name == marker_at else BLUE), (name, corner(image, name))


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_for_bytes_file_and_pil_inputs(tmp_path, orientation):
    path = jpeg_with_orientation(tmp_path / "rotated.jpg", marked((60, 30)), orientation)
    marker_at = EXIF_CASES[orientation][1]
    with Image.open(path) as opened:
        sources = [path.read_bytes(), io.BytesIO(path.read_bytes()), opened]
        for source in sources:
            image = load_image(source)
            assert_rgb(image, (30, 60))
            assert close(corner(image, marker_at), RED)


def test_exif_orientation_with_reduced_decode(tmp_path):
    path = jpeg_with_orientation(tmp_path / "big_rotated.jpg", marked((1600, 1200)), 6)
    image = load_image(path, min_side=100)
    assert image.height > image.width  # still turned upright
    assert 100 <= image.width < 1200
    assert close(corner(image, "top-right"), RED)
    assert close(corner(image, "top-left"), BLUE)


# ---------------------------------------------------------------------------------------------------------------------
# Formats and modes
# ---------------------------------------------------------------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb_with_sensible_colours(tmp_path):
    image = Image.new("CMYK", (40, 20), (0, 255, 255, 0))  # red in CMYK
    ImageDraw.Draw(image).rectangle((20, 0, 39, 19), fill=(255, 0, 0, 0))  # cyan right half
    path = save(image, tmp_path / "cmyk.jpg", "JPEG", quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    loaded = load_image(path)
    assert_rgb(loaded, (40, 20))
    assert close(loaded.getpixel((5, 10)), RED)
    assert close(loaded.getpixel((34, 10)), (0, 255, 255))


def palette_image() -> Image.Image:
    image = Image.new("P", (4, 2), 0)
    image.putpalette([*BLACK, *RED, *GREEN, *BLUE] + [0] * (256 - 4) * 3)
    image.putpixel((1, 0), 1)
    image.putpixel((2, 0), 2)
    image.putpixel((3, 0), 3)
    return image


def test_palette_png_without_transparency(tmp_path):
    path = save(palette_image(), tmp_path / "palette.png")
    with Image.open(path) as raw:
        assert raw.mode == "P" and "transparency" not in raw.info
    image = load_image(path)
    assert_rgb(image, (4, 2))
    assert [image.getpixel((x, 0)) for x in range(4)] == [BLACK, RED, GREEN, BLUE]
    assert image.getpixel((0, 1)) == BLACK


def test_palette_png_with_transparency_becomes_white(tmp_path):
    path = save(palette_image(), tmp_path / "palette_t.png", transparency=0)  # index 0 (black) is transparent
    with Image.open(path) as raw:
        assert raw.mode == "P" and raw.info.get("transparency") is not None
    image = load_image(path)
    assert_rgb(image, (4, 2))
    assert [image.getpixel((x, 0)) for x in range(4)] == [WHITE, RED, GREEN, BLUE]
    assert image.getpixel((0, 1)) == WHITE


def test_la_png_alpha_flattened_onto_white(tmp_path):
    image = Image.new("LA", (3, 1))
    image.putpixel((0, 0), (0, 0))  # transparent black
    image.putpixel((1, 0), (50, 255))  # opaque dark grey
    image.putpixel((2, 0), (0, 128))  # half-transparent black
    path = save(image, tmp_path / "la.png")
    with Image.open(path) as raw:
        assert raw.mode == "LA"
    loaded = load_image(path)
    assert_rgb(loaded, (3, 1))
    assert loaded.getpixel((0, 0)) == WHITE
    assert loaded.getpixel((1, 0)) == (50, 50, 50)
    assert close(loaded.getpixel((2, 0)), (127, 127, 127), tolerance=2)


def test_rgba_png_alpha_flattened_onto_white(tmp_path):
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((1, 0), (255, 0, 0, 255))  # opaque red
    image.putpixel((2, 0), (0, 0, 255, 128))  # half-transparent blue
    path = save(image, tmp_path / "rgba.png")
    loaded = load_image(path)
    assert_rgb(loaded, (3, 1))
    assert loaded.getpixel((0, 0)) == WHITE
    assert loaded.getpixel((1, 0)) == RED
    assert close(loaded.getpixel((2, 0)), (127, 127, 255), tolerance=2)


def test_grayscale_png(tmp_path):
    image = Image.new("L", (3, 2), 77)
    image.putpixel((2, 1), 200)
    loaded = load_image(save(image, tmp_path / "grey.png"))
    assert_rgb(loaded, (3, 2))
    assert loaded.getpixel((0, 0)) == (77, 77, 77)
    assert loaded.getpixel((2, 1)) == (200, 200, 200)


def test_one_bit_png(tmp_path):
    image = Image.new("1", (4, 2), 0)
    image.putpixel((1, 0), 1)
    image.putpixel((3, 1), 1)
    path = save(image, tmp_path / "bits.png")
    with Image.open(path) as raw:
        assert raw.mode == "1"
    loaded = load_image(path)
    assert_rgb(loaded, (4, 2))
    assert loaded.getpixel((0, 0)) == BLACK
    assert loaded.getpixel((1, 0)) == WHITE
    assert loaded.getpixel((3, 1)) == WHITE


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    array = np.array([[0, 32896, 65535, 257]], dtype=np.uint16)
    path = save(Image.fromarray(array), tmp_path / "grey16.png")
    assert path.read_bytes()[24] == 16  # IHDR bit depth: a real 16-bit PNG
    image = load_image(path)
    assert_rgb(image, (4, 1))
    assert [image.getpixel((x, 0)) for x in range(4)] == [BLACK, (128, 128, 128), WHITE, (1, 1, 1)]


def test_16_bit_big_endian_tiff(tmp_path):
    values = np.array([[0, 32896, 65535]], dtype=">u2")
    path = save(Image.frombytes("I;16B", (3, 1), values.tobytes()), tmp_path / "grey16_mm.tif")
    assert path.read_bytes()[:2] == b"MM"  # big-endian TIFF, as some scanners write
    image = load_image(path)
    assert_rgb(image, (3, 1))
    assert [image.getpixel((x, 0)) for x in range(3)] == [BLACK, (128, 128, 128), WHITE]


def animation(fmt: str, path: Path) -> Path:
    frames = [solid((16, 12), colour) for colour in (RED, GREEN, BLUE)]
    options = {"lossless": True} if fmt == "WEBP" else {}
    return save(frames[0], path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **options)


@pytest.mark.parametrize("fmt, suffix", [("GIF", "gif"), ("PNG", "png"), ("WEBP", "webp")])
def test_animated_image_gives_first_frame(tmp_path, fmt, suffix):
    path = animation(fmt, tmp_path / f"animated.{suffix}")
    with Image.open(path) as raw:
        assert raw.n_frames == 3
    image = load_image(path)
    assert_rgb(image, (16, 12))
    assert close(image.getpixel((8, 6)), RED, tolerance=2)


def test_animated_pil_image_seeked_elsewhere_gives_first_frame(tmp_path):
    path = animation("GIF", tmp_path / "animated.gif")
    with Image.open(path) as opened:
        opened.seek(2)
        image = load_image(opened)
    assert_rgb(image, (16, 12))
    assert image.getpixel((8, 6)) == RED


def test_animated_gif_with_truncated_later_frame_gives_intact_first_frame():
    data = encode(solid((64, 64), RED), "GIF", save_all=True, append_images=[solid((64, 64), BLUE)], duration=100)
    frame_starts = [i for i in range(len(data)) if data[i : i + 3] == b"\x21\xf9\x04"]  # graphic control extensions
    assert len(frame_starts) == 2
    for cut in range(frame_starts[1], frame_starts[1] + 30):  # ends inside the second frame's headers or data
        image = load_image(data[:cut])
        assert_rgb(image, (64, 64))
        assert image.getpixel((32, 32)) == RED, cut


def test_tiff(tmp_path):
    path = save(marked((30, 18)), tmp_path / "photo.tiff", "TIFF")
    assert_is_marked(load_image(path))


def test_webp_lossless(tmp_path):
    path = save(marked((30, 18)), tmp_path / "photo.webp", "WEBP", lossless=True)
    assert_is_marked(load_image(path))


def test_webp_lossy_and_with_alpha(tmp_path):
    lossy = load_image(save(marked((48, 48)), tmp_path / "lossy.webp", "WEBP", quality=90))
    assert_rgb(lossy, (48, 48))
    assert close(corner(lossy, "top-left"), RED) and close(corner(lossy, "bottom-right"), BLUE)
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    clear.putpixel((7, 7), (0, 0, 255, 255))
    flat = load_image(save(clear, tmp_path / "alpha.webp", "WEBP", lossless=True, exact=True))
    assert flat.getpixel((0, 0)) == WHITE and flat.getpixel((7, 7)) == BLUE


def test_bmp(tmp_path):
    assert_is_marked(load_image(save(marked((30, 18)), tmp_path / "photo.bmp")))


# Pillow cannot write these combinations at all, so there is no such file to load.
UNWRITABLE = {("RGBA", "JPEG"), ("LA", "JPEG"), ("P", "JPEG"), ("LA", "BMP"), ("CMYK", "BMP"), ("CMYK", "PNG"),
              ("CMYK", "GIF")}
MODES_BY_FORMAT = [
    (mode, fmt)
    for fmt in ("PNG", "JPEG", "GIF", "TIFF", "WEBP", "BMP")
    for mode in ("RGB", "RGBA", "L", "LA", "P", "1", "CMYK")
    if (mode, fmt) not in UNWRITABLE
]


@pytest.mark.parametrize("mode, fmt", MODES_BY_FORMAT)
def test_result_is_always_rgb(mode, fmt):
    loaded = load_image(encode(marked((48, 32)).convert(mode), fmt))
    assert_rgb(loaded, (48, 32))
    if mode in ("RGB", "RGBA", "P", "CMYK"):  # colour survives (grey and 1-bit modes drop it)
        assert close(corner(loaded, "top-left"), RED, tolerance=60), corner(loaded, "top-left")
        assert close(corner(loaded, "bottom-right"), BLUE, tolerance=60), corner(loaded, "bottom-right")


# ---------------------------------------------------------------------------------------------------------------------
# Large JPEGs and min_side
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def large_jpeg(tmp_path) -> Path:
    return save(marked((4000, 3000)), tmp_path / "large.jpg", "JPEG", quality=85)


def test_large_jpeg_full_size_without_min_side(large_jpeg):
    image = load_image(large_jpeg)
    assert_rgb(image, (4000, 3000))
    assert close(corner(image, "top-left"), RED) and close(corner(image, "bottom-right"), BLUE)


def test_large_jpeg_reduced_decode_with_min_side(large_jpeg):
    image = load_image(large_jpeg, min_side=224)
    assert_rgb(image)
    assert 224 <= min(image.size) <= 3000 // 4  # DCT-scaled decode, not a full decode
    assert abs(image.width / image.height - 4 / 3) < 0.02
    assert close(corner(image, "top-left"), RED) and close(corner(image, "bottom-right"), BLUE)


@pytest.mark.parametrize("min_side", [224, 375, 376, 800, 1500, 2999])
def test_min_side_is_always_respected(tmp_path, min_side):
    path = save(solid((4000, 3000), GREEN), tmp_path / "large.jpg", "JPEG", quality=70)
    image = load_image(path, min_side=min_side)
    assert min(image.size) >= min_side
    assert min(image.size) <= 3000


def test_min_side_larger_than_image_gives_full_size(tmp_path):
    path = save(marked((300, 200)), tmp_path / "small.jpg", "JPEG", quality=95)
    assert load_image(path, min_side=1000).size == (300, 200)


def test_min_side_ignored_for_non_jpeg(tmp_path):
    path = save(marked((900, 600)), tmp_path / "large.png")
    assert load_image(path, min_side=64).size == (900, 600)


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    path_error(path, "empty")


@pytest.mark.parametrize("source", [b"", bytearray()])
def test_zero_bytes_input(source):
    error = load_error(source)
    assert error.source == "<0 bytes>"
    assert "empty" in error.reason


def test_empty_file_object():
    assert load_error(io.BytesIO()).source == "<file BytesIO>"


def test_text_file_with_jpg_suffix(tmp_path):
    path = tmp_path / "listing.jpg"
    path.write_text("<html>this is not a photo</html>\n")
    path_error(path, "not an image")


def test_text_file_object_names_file(tmp_path):
    path = tmp_path / "listing.jpg"
    path.write_text("not a photo")
    with path.open("rb") as file:
        error = load_error(file)
    assert error.source == f"<file {path}>"
    assert "not an image" in error.reason


def test_truncated_jpeg(tmp_path):
    data = encode(noise((128, 96)), "JPEG", quality=90)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(data[: len(data) // 2])
    path_error(path, "truncated")
    assert "truncated" in load_error(data[: len(data) // 2]).reason
    assert "truncated" in load_error(data[: len(data) // 2], min_side=16).reason


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "GIF", "BMP"])
def test_truncated_other_formats(fmt):
    data = encode(noise((64, 64)), fmt)
    error = load_error(data[: len(data) // 2])
    assert error.source == f"<{len(data) // 2} bytes>"


def test_directory(tmp_path):
    folder = tmp_path / "photos.jpg"
    folder.mkdir()
    path_error(folder, "directory")


def test_missing_file(tmp_path):
    path_error(tmp_path / "nowhere" / "missing.jpg", "cannot read")


def test_exceeding_max_pixels(tmp_path):
    path = save(solid((100, 100), RED), tmp_path / "big.png")
    error = path_error(path, "100x100", "1,000", max_pixels=1000)
    assert "pixel limit" in error.reason
    assert load_error(path.read_bytes(), max_pixels=1000).source == f"<{path.stat().st_size} bytes>"
    assert load_image(path, max_pixels=10_000).size == (100, 100)  # exactly at the limit is allowed


def max_rss_bytes() -> int:
    """Peak resident memory of this process so far (0 where the platform cannot say)."""
    if resource is None:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB


@pytest.mark.parametrize("input_kind", ["path", "bytes", "file"])
def test_decompression_bomb_png_header(tmp_path, input_kind):
    data = png_claiming_size(30_000, 30_000)
    with Image.open(io.BytesIO(png_claiming_size(300, 200))) as patched:  # the patch itself is read back by PIL
        assert patched.size == (300, 200)
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    source = {"path": path, "bytes": data, "file": io.BytesIO(data)}[input_kind]
    before = max_rss_bytes()
    error = load_error(source)
    assert max_rss_bytes() - before < 500 * 2**20  # refused from the header: 30000x30000 RGB would be 2.7 GB
    assert "decompression bomb" in error.reason
    if input_kind == "path":
        assert error.source == str(path)


def test_decompression_bomb_refused_even_when_host_disables_pil_limit(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    error = load_error(png_claiming_size(30_000, 30_000))
    assert "30000x30000" in error.reason and "decompression bomb" in error.reason


def test_header_between_our_limit_and_pil_limit_is_refused():
    # 100 MP: above DEFAULT_MAX_PIXELS but below twice PIL's limit, where PIL only warns.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        error = load_error(png_claiming_size(10_000, 10_000))
    assert "10000x10000" in error.reason


# ---------------------------------------------------------------------------------------------------------------------
# Independence, resources and global PIL state
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_result_is_independent_of_input_pil_image(mode):
    original = marked((10, 8)).convert(mode)
    before = original.tobytes()
    loaded = load_image(original)
    assert loaded is not original
    loaded.putpixel((0, 0), (1, 2, 3))
    ImageDraw.Draw(loaded).rectangle((0, 0, 9, 7), fill=GREEN)
    assert original.tobytes() == before
    original.putpixel((5, 5), 0 if mode in ("L", "P") else (0,) * len(mode))
    assert loaded.getpixel((5, 5)) == GREEN


@pytest.mark.parametrize("shape", [(8, 10), (8, 10, 3), (8, 10, 4)])
def test_result_is_independent_of_input_array(shape):
    array = np.full(shape, 255, np.uint8)
    loaded = load_image(array)
    loaded.putpixel((0, 0), BLACK)
    assert (array == 255).all()
    array[:] = 0
    assert loaded.getpixel((1, 1)) == WHITE


def test_each_load_returns_a_new_image(png_path):
    first, second = load_image(png_path), load_image(png_path)
    first.putpixel((0, 0), GREEN)
    assert second.getpixel((0, 0)) == RED


def test_files_are_closed(tmp_path):
    good = save(marked((30, 18)), tmp_path / "photo.png")
    animated = animation("GIF", tmp_path / "animated.gif")
    text = tmp_path / "text.jpg"
    text.write_text("not a photo")
    data = encode(noise((64, 48)), "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming_size(30_000, 30_000))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_image(good)
        load_image(animated)
        for path, options in [(text, {}), (truncated, {}), (bomb, {}), (good, {"max_pixels": 10})]:
            with pytest.raises(ImageLoadError):
                load_image(path, **options)
        gc.collect()
    leaks = [str(warning.message) for warning in caught if issubclass(warning.category, ResourceWarning)]
    assert leaks == []


def test_pil_global_settings_untouched_by_loads(tmp_path):
    truncated_before, pixels_before = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
    data = encode(noise((64, 48)), "JPEG")
    load_image(data, min_side=8)
    load_image(marked((10, 10)))
    load_image(np.zeros((3, 3), np.uint16))
    for bad in (data[: len(data) // 2], png_claiming_size(30_000, 30_000), b"not an image"):
        with pytest.raises(ImageLoadError):
            load_image(bad)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is truncated_before
    assert Image.MAX_IMAGE_PIXELS == pixels_before


def test_pil_global_settings_untouched_by_import_and_loads():
    """Import in a fresh interpreter, so settings flipped at import time would show."""
    script = """
import io
from PIL import Image, ImageFile
before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
import wildvision
from wildvision.images import load_image, ImageLoadError
buffer = io.BytesIO()
Image.new("RGB", (64, 48), (9, 9, 9)).save(buffer, "JPEG")
assert min(load_image(buffer.getvalue(), min_side=8).size) >= 8
try:
    load_image(buffer.getvalue()[:100])
except ImageLoadError:
    pass
after = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS)
assert before == after, (before, after)
print("ok", after)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
