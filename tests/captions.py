"""Sellers' captions rendered onto photos, in the script each language needs: the text-evidence tests and
`benchmarks/text_evidence.py` draw the phrases of `tests/text_phrases.toml` this way.

Fonts for Chinese, Japanese and Thai come from Debian's packages (`.ci/run` installs fonts-noto-cjk and
fonts-noto-core); `font_for` is None where a script's font is missing, so callers skip with a reason naming the package
(`skip_without_font`) rather than draw boxes of tofu. Latin captions need no system package: where Debian's Noto Sans
Bold is absent they are drawn in the Noto Sans that the `fontpkg-noto-sans` wheel ships (the test extra), so the
README's test command reads them on a bare machine too. Not DejaVu Sans, which many machines have: the OCR reads its
capital I as a lower-case l ("Mammoth lvory Netsuke"), and the caption then names nothing.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PHRASES_FILE = Path(__file__).with_name("text_phrases.toml")
_LATIN = Path("/usr/share/fonts/truetype/noto/NotoSans-Bold.ttf")  # Debian's fonts-noto-core, where CI has it
_BOLD = 700  # the weight of the wheel's variable Noto Sans that matches Debian's static Bold
_CJK = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc")
_CJK_FACE = {"ja": 0, "zh-Hans": 2, "zh-Hant": 3}  # faces of the Noto Sans CJK collection: JP, KR, SC, TC, HK
_THAI = Path("/usr/share/fonts/truetype/noto/NotoSansThai-Bold.ttf")


@dataclass(frozen=True)
class Phrase:
    language: str
    text: str
    label: str | None  # None: a harmless phrase that must name nothing


def phrases() -> tuple[list[Phrase], list[Phrase]]:
    """The positive phrases (each names one label) and the negative ones, from tests/text_phrases.toml."""
    document = tomllib.loads(PHRASES_FILE.read_text(encoding="utf-8"))
    positive = [Phrase(item["language"], item["text"], item["label"]) for item in document["positive"]]
    negative = [Phrase(item["language"], item["text"], None) for item in document["negative"]]
    return positive, negative


def font_for(language: str, size: int) -> ImageFont.FreeTypeFont | None:
    """A bold font that has the language's script, or None where it is not installed."""
    if language in _CJK_FACE:
        return ImageFont.truetype(str(_CJK), size, index=_CJK_FACE[language]) if _CJK.is_file() else None
    if language == "th":
        return ImageFont.truetype(str(_THAI), size) if _THAI.is_file() else None
    if _LATIN.is_file():
        return ImageFont.truetype(str(_LATIN), size)
    try:
        import fontpkg
    except ImportError:
        return None
    font = ImageFont.truetype(str(fontpkg.path("Noto Sans")), size)  # variable: width and weight axes
    font.set_variation_by_axes([100, _BOLD])  # full width, bold
    return font


def package_of(language: str) -> str:
    """What to install for a language's font: the message of a skipped test."""
    if language in _CJK_FACE:
        return "apt-get install fonts-noto-cjk (.ci/run installs it)"
    if language == "th":
        return "apt-get install fonts-noto-core (.ci/run installs it)"
    return "pip install fontpkg-noto-sans (the test extra), or apt-get install fonts-noto-core"


def skip_without_font(language: str) -> None:
    """Skip the calling test, naming the package to install, where no font for the language's script is installed."""
    if font_for(language, 20) is None:
        import pytest

        pytest.skip(f"no font for {language}: {package_of(language)}")


def caption(photo: Image.Image, text: str, language: str, *, seed: int = 0) -> tuple[Image.Image, tuple[int, ...]]:
    """`photo` with `text` written on it as a seller would (a band across the top or bottom, or bold outlined
    letters), and the box it was drawn in (left, top, right, bottom). Raises LookupError without the script's font."""
    rng = random.Random(seed)
    image = photo.convert("RGB").copy()
    size = max(14, round(image.height * rng.uniform(0.07, 0.1)))
    font = font_for(language, size)
    if font is None:
        raise LookupError(f"no font for {language} installed: {package_of(language)}")
    draw = ImageDraw.Draw(image)
    while draw.textlength(text, font=font) > image.width * 0.92 and size > 10:  # one line, inside the photo
        size -= 1
        font = font_for(language, size)
    width = round(draw.textlength(text, font=font))
    left = rng.randint(0, max(0, image.width - width - 8))
    top = rng.choice([round(image.height * 0.04), round(image.height * 0.82)])
    if rng.random() < 0.5:  # a promotional band
        colour = rng.choice([(200, 20, 20), (250, 250, 250), (20, 20, 20), (250, 200, 0)])
        draw.rectangle((left, top - size // 4, left + width + 8, top + size + size // 3), fill=colour)
        ink = (0, 0, 0) if sum(colour) > 450 else (255, 255, 255)
        draw.text((left + 4, top), text, font=font, fill=ink)
    else:  # outlined letters straight on the photo
        draw.text((left + 4, top), text, font=font, fill=(255, 255, 255), stroke_width=max(1, size // 12),
                  stroke_fill=(0, 0, 0))
    return image, (left, top, left + width + 8, top + size + size // 3)
