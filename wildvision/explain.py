"""Where in a photo a label's evidence lies: the model's class activation map, laid over the photo for a reviewer.

The map comes out of the ONNX graph itself (see `OUTPUT_NAMES`), so explaining needs no torch and costs one forward
pass. It is coarse — one cell per 32 pixels of model input — which is what a reviewer needs: which object, not
which pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from wildvision.model_info import Preprocessing

__all__ = ["Explanation", "heatmap_on_photo"]

# A dark-blue -> red -> yellow ramp: cold where there is no evidence, hot where there is most; readable when blended.
_RAMP = np.array([(0, 0, 96), (0, 64, 255), (255, 32, 0), (255, 224, 0)], dtype=np.float32)
_OVERLAY_OPACITY = 0.5


@dataclass(frozen=True)
class Explanation:
    label: str
    score: float  # the label's calibrated probability
    heatmap: np.ndarray  # float32, the photo's height x width, 0 (no evidence) .. 1 (strongest evidence)
    photo: Image.Image  # the upright RGB photo the map belongs to

    def overlay(self) -> Image.Image:
        """The photo with the heat map blended over it, for a human reviewer."""
        positions = self.heatmap * (len(_RAMP) - 1)
        low = np.minimum(positions.astype(int), len(_RAMP) - 2)
        fraction = (positions - low)[..., np.newaxis]
        colours = _RAMP[low] * (1 - fraction) + _RAMP[low + 1] * fraction
        heat = Image.fromarray(colours.astype(np.uint8), "RGB")
        return Image.blend(self.photo, heat, _OVERLAY_OPACITY)


def heatmap_on_photo(activation: np.ndarray, photo: Image.Image, spec: Preprocessing) -> np.ndarray:
    """One label's (h, w) activation map as a 0..1 map over the whole photo, undoing the preprocessing's geometry.

    Negative evidence is clipped: the map shows what argues *for* the label. With `center_crop` preprocessing the
    parts of the photo the model never saw stay at 0.
    """
    positive = np.maximum(activation.astype(np.float32), 0)
    peak = float(positive.max())
    normalised = positive / peak if peak > 0 else positive
    grid = Image.fromarray(normalised, "F")
    if spec.resize == "squash":
        return np.asarray(grid.resize(photo.size, Image.Resampling.BILINEAR), dtype=np.float32)
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    full = np.zeros((photo.height, photo.width), dtype=np.float32)
    full[top : top + side, left : left + side] = np.asarray(grid.resize((side, side), Image.Resampling.BILINEAR))
    return np.clip(full, 0, 1)
