"""Where in a photo a label's evidence lies: the model's class activation map, laid over the photo for a reviewer.

The map comes out of the ONNX graph itself (see `OUTPUT_NAMES`), so explaining needs no torch and costs one forward
pass. It is coarse — one cell per 32 pixels of model input — which is what a reviewer needs: which object, not
which pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from wildvision.model_info import Preprocessing
from wildvision.text import TextEvidence

__all__ = ["Explanation", "heatmap_on_photo"]

# A dark-blue -> red -> yellow ramp: cold where there is no evidence, hot where there is most; readable when blended.
_RAMP = np.array([(0, 0, 96), (0, 64, 255), (255, 32, 0), (255, 224, 0)], dtype=np.float32)
_OVERLAY_OPACITY = 0.6  # at the strongest evidence; the photo shows through untinted where there is none
_CAPTION_HEIGHT = 0.06  # of the photo's shorter side, at least 12 pixels
_WORD_COLOUR = (0, 255, 255)  # cyan: outside the heat map's ramp, so a framed word never reads as image evidence


@dataclass(frozen=True)
class Explanation:
    """Where a photo shows one label's evidence (`Classifier.explain`): the class activation map as `heatmap`, over
    `photo` as it was scored, and `overlay()` to show a reviewer."""

    label: str
    score: float  # the label's calibrated probability
    # float32, the size of `photo`, 0 (no evidence) .. `score` (where the evidence is strongest): on one scale across
    # photos, so a photo the model barely suspects shows a faint map, not a full-strength hot spot.
    heatmap: np.ndarray
    photo: Image.Image  # the upright RGB photo as scored (a large JPEG is decoded at reduced scale, as for `predict`)
    text: TextEvidence | None = None  # the words read on the photo, when the classifier reads text
    frame: int = 0  # which frame of an animated or multi-page file `photo` is: the one that decided its prediction

    def overlay(self, photo: Image.Image | None = None) -> Image.Image:
        """The photo with the heat map blended over it where there is evidence, captioned with label and score, for a
        human reviewer; each line of text that named a product is framed and tagged with its label.

        `photo` draws it on another copy of the same photo, e.g. at full resolution (`load_image(path)`): the scored
        `photo` of a large JPEG is decoded at reduced scale (a 1200x1178 photo is scored at 300x295), too small for a
        reviewer. The map is coarse (one cell per 32 model pixels), so drawing it larger loses nothing."""
        base = self.photo if photo is None else photo.convert("RGB")
        heatmap = self.heatmap
        if base.size != self.photo.size:
            heatmap = np.asarray(Image.fromarray(heatmap, "F").resize(base.size, Image.Resampling.BILINEAR))
        positions = heatmap * (len(_RAMP) - 1)
        low = np.clip(positions.astype(int), 0, len(_RAMP) - 2)
        fraction = (positions - low)[..., np.newaxis]
        colours = _RAMP[low] * (1 - fraction) + _RAMP[low + 1] * fraction
        pixels = np.asarray(base, dtype=np.float32)
        opacity = (np.clip(heatmap, 0, 1) * _OVERLAY_OPACITY)[..., np.newaxis]  # untouched where there is no evidence
        overlay = Image.fromarray((pixels * (1 - opacity) + colours * opacity).round().astype(np.uint8), "RGB")
        if self.text is not None:
            _mark_words(overlay, self.text, scale=base.width / self.photo.width)
        _caption(overlay, f"{self.label} {self.score:.3f}")
        return overlay


def _caption(image: Image.Image, text: str) -> None:
    """`text` in white on a dark band across the top-left corner."""
    height = max(12, round(min(image.size) * _CAPTION_HEIGHT))
    font = ImageFont.load_default(size=height * 0.8)
    draw = ImageDraw.Draw(image)
    right = min(image.width, round(draw.textlength(text, font=font)) + height // 2)
    draw.rectangle((0, 0, right, height), fill=(0, 0, 0))
    draw.text((height // 4, height // 10), text, fill=(255, 255, 255), font=font)


def _mark_words(image: Image.Image, text: TextEvidence, *, scale: float = 1.0) -> None:
    """A frame around each line that named a product, its label on a band beneath it; `scale`: the image's size over
    that of the photo the text was read on (its boxes' coordinates)."""
    draw = ImageDraw.Draw(image)
    width = max(2, round(min(image.size) / 200))
    height = max(12, round(min(image.size) * _CAPTION_HEIGHT * 0.8))
    font = ImageFont.load_default(size=height * 0.8)
    for match in {match.box: match for match in text.matches}.values():  # one frame per line
        box = tuple(round(value * scale) for value in match.box)
        left, top, right, bottom = box
        draw.rectangle(box, outline=_WORD_COLOUR, width=width)
        tag = f"text: {match.label}"
        band_top = min(bottom, image.height - height)
        draw.rectangle((left, band_top, left + round(draw.textlength(tag, font=font)) + height // 2, band_top + height),
                       fill=_WORD_COLOUR)
        draw.text((left + height // 4, band_top + height // 10), tag, fill=(0, 0, 0), font=font)


def heatmap_on_photo(activation: np.ndarray, photo: Image.Image, spec: Preprocessing, *, score: float = 1.0) -> np.ndarray:
    """One label's (h, w) activation map as a 0..`score` map over the whole photo, undoing the preprocessing's geometry.

    Negative evidence is clipped: the map shows what argues *for* the label. The strongest evidence is drawn at the
    label's calibrated `score`, so maps compare across photos. With `center_crop` preprocessing the parts of the photo
    the model never saw stay at 0.
    """
    positive = np.maximum(activation.astype(np.float32), 0)
    peak = float(positive.max())
    normalised = positive * (score / peak) if peak > 0 else positive
    grid = Image.fromarray(normalised, "F")
    if spec.resize == "squash":
        return np.asarray(grid.resize(photo.size, Image.Resampling.BILINEAR), dtype=np.float32)
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    full = np.zeros((photo.height, photo.width), dtype=np.float32)
    full[top : top + side, left : left + side] = np.asarray(grid.resize((side, side), Image.Resampling.BILINEAR))
    return np.clip(full, 0, score)
