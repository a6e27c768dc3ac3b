"""Sellers' captions rendered onto photos, in the script each language needs: the text-evidence tests and
`benchmarks/text_evidence.py` draw the phrases of `tests/text_phrases.toml` this way.

Fonts come from Debian's packages (`.ci/run` installs fonts-noto-cjk and fonts-noto-core); `font_for` is None where a
script's font is missing, so callers skip with a reason rather than draw boxes of tofu.
"""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PHRASES_FILE = Path(__file__).with_name("text_phrases.toml")
_LATIN = [Path("/usr/share/fonts/truetype/noto/NotoSans-Bold.ttf"),
          Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")]
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
    latin = next((path for path in _LATIN if path.is_file()), None)
    return ImageFont.truetype(str(latin), size) if latin else None


def caption(photo: Image.Image, text: str, language: str, *, seed: int = 0) -> tuple[Image.Image, tuple[int, ...]]:
    """`photo` with `text` written on it as a seller would (a band across the top or bottom, or bold outlined
    letters), and the box it was drawn in (left, top, right, bottom). Raises LookupError without the script's font."""
    rng = random.Random(seed)
    image = photo.convert("RGB").copy()
    size = max(14, round(image.height * rng.uniform(0.07, 0.1)))
    font = font_for(language, size)
    if font is None:
        raise LookupError(f"no font for {language} installed (fonts-noto-cjk, fonts-noto-core)")
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
