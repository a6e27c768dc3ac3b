"""Augmentations that push museum studio photos toward marketplace listing photos.

Listing photos are taken with phones: off-centre crops, clutter and patterned backgrounds, warm or cold light, blur,
heavy JPEG compression, prices and watermarks written over them. Each augmentation takes and returns an RGB PIL
image; the library's own `wildvision.preprocess.to_tensor` always runs after them.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

from wildvision.images import load_image

__all__ = ["ListingStyle"]

_OVERLAY_TEXTS = ("SALE", "$25", "€120 obo", "FREE SHIPPING", "antique", "vintage lot", "@shop_4521", "NEW", "50% OFF",
                  "collectible", "rare!!", "DM for price", "sold as is", "Lot 17", "estate find")


class ListingStyle:
    """A random listing-photo look; `backgrounds` are photo files (e.g. phone snapshots) the object may be placed on."""

    def __init__(self, backgrounds: Sequence[Path] = (), *, working_size: int = 448, seed: int | None = None):
        self.backgrounds = list(backgrounds)
        self.working_size = working_size  # augment at about twice the model input: fast, and enough detail
        self.random = random.Random(seed)

    def __call__(self, image: Image.Image) -> Image.Image:
        image = ImageOps.contain(image, (self.working_size, self.working_size))
        steps = (
            (0.3, self.place_on_background), (0.8, self.crop), (0.5, self.mirror), (0.3, self.rotate),
            (0.8, self.light), (0.25, self.blur), (0.3, self.overlay_text), (0.7, self.compress),
        )
        for probability, step in steps:
            if self.random.random() < probability:
                image = step(image)
        return image

    def place_on_background(self, image: Image.Image) -> Image.Image:
        """The object photo, shrunk, on a cluttered scene: several things in one picture, off centre."""
        if not self.backgrounds:
            return image
        # Loaded when needed: a few hundred decoded backgrounds would be copied into every data-loading worker.
        scene = load_image(self.random.choice(self.backgrounds), min_side=self.working_size)
        scene = ImageOps.fit(scene, (self.working_size, self.working_size))
        scale = self.random.uniform(0.45, 0.85)
        item = ImageOps.contain(image, (int(self.working_size * scale),) * 2)
        x = self.random.randint(0, scene.width - item.width)
        y = self.random.randint(0, scene.height - item.height)
        scene.paste(item, (x, y))
        return scene

    def crop(self, image: Image.Image) -> Image.Image:
        """A random crop keeping 40-100% of the area, aspect between 3:4 and 4:3."""
        area = image.width * image.height * self.random.uniform(0.4, 1.0)
        aspect = self.random.uniform(0.75, 1.333)
        width = min(image.width, int(round((area * aspect) ** 0.5)))
        height = min(image.height, int(round((area / aspect) ** 0.5)))
        x = self.random.randint(0, image.width - width)
        y = self.random.randint(0, image.height - height)
        return image.crop((x, y, x + width, y + height))

    def mirror(self, image: Image.Image) -> Image.Image:
        return ImageOps.mirror(image)

    def rotate(self, image: Image.Image) -> Image.Image:
        """Phones are held a little crooked; the corners fill with a neutral grey."""
        return image.rotate(self.random.uniform(-15, 15), resample=Image.Resampling.BILINEAR, fillcolor=(128, 128, 128))

    def light(self, image: Image.Image) -> Image.Image:
        """Exposure, contrast, saturation and a warm/cool white-balance cast; hue is kept, ivory's colour matters."""
        image = ImageEnhance.Brightness(image).enhance(self.random.uniform(0.65, 1.35))
        image = ImageEnhance.Contrast(image).enhance(self.random.uniform(0.7, 1.3))
        image = ImageEnhance.Color(image).enhance(self.random.uniform(0.7, 1.3))
        warmth = self.random.uniform(-0.08, 0.08)
        red, green, blue = image.split()
        red = red.point(lambda value: min(255, int(value * (1 + warmth))))
        blue = blue.point(lambda value: min(255, int(value * (1 - warmth))))
        return Image.merge("RGB", (red, green, blue))

    def blur(self, image: Image.Image) -> Image.Image:
        """Out of focus, or a small photo enlarged."""
        if self.random.random() < 0.5:
            return image.filter(ImageFilter.GaussianBlur(self.random.uniform(0.5, 2.0)))
        factor = self.random.uniform(0.25, 0.6)
        small = image.resize((max(8, int(image.width * factor)), max(8, int(image.height * factor))))
        return small.resize(image.size, Image.Resampling.BILINEAR)

    def overlay_text(self, image: Image.Image) -> Image.Image:
        """Prices, shop handles and watermarks written over the photo."""
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default(size=self.random.randint(14, max(15, image.height // 8)))
        for _ in range(self.random.randint(1, 3)):
            text = self.random.choice(_OVERLAY_TEXTS)
            x = self.random.randint(0, max(0, image.width - 40))
            y = self.random.randint(0, max(0, image.height - 20))
            colour = self.random.choice([(255, 255, 255), (0, 0, 0), (220, 30, 30), (250, 220, 0)])
            draw.text((x, y), text, fill=colour, font=font, stroke_width=1, stroke_fill=(40, 40, 40))
        return image

    def compress(self, image: Image.Image) -> Image.Image:
        """Re-encoded by a phone, an app and a marketplace: JPEG quality 25-90."""
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=self.random.randint(25, 90))
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")
