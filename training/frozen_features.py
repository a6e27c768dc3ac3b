"""The frozen front of the network, run once per photo and per augmented view, its outputs cached in the run folder.

Training's epochs run on this cache (`training.fine_tune`), so the expensive part of the network runs once however
many epochs follow. The cache is written in parts as it is computed: an interrupted run resumes where it stopped, and
ends with the same features as an uninterrupted one. It is valid only for the same photos, splits, network front,
input and augmentation (`cache_key`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from training.augment import ListingStyle
from training.data import Sample, manifest_hash
from training.progress import progress
from training.train_config import TrainConfig
from wildvision.images import ImageLoadError, load_image
from wildvision.model_info import Preprocessing
from wildvision.preprocess import to_tensor

__all__ = ["FeatureCache", "cache_key"]

_CACHE_FORMAT = 2  # bump when the way photos become cached features changes


class FeatureCache:
    """Frozen-front outputs (float16) of every clean photo and of `views` augmented views of each training photo."""

    def __init__(self, features: torch.Tensor, owners: list[int], views: list[int]) -> None:
        self.features, self.owners, self.views = features, owners, views

    @classmethod
    def build(cls, config: TrainConfig, samples: list[Sample], front: nn.Module) -> FeatureCache:
        views = {source.name: config.views if source.views is None else source.views for source in config.data}
        items = [(index, view) for index, sample in enumerate(samples)
                 for view in range(1 + (views[sample.dataset] if sample.split == "train" else 0))]
        key = cache_key(config, samples)
        path = config.out / f"features-{key}.pt"
        if path.is_file():
            print(f"reusing cached features {path}")
            stored = torch.load(path, weights_only=True)
            return cls(stored["features"], stored["owners"], stored["views"])
        backgrounds = [s.path for s in samples if s.split == "train" and s.source in config.background_sources]
        parts = _CachedParts(config.out / f"features-{key}.parts")
        remaining = [position for position in range(len(items)) if position not in parts.covered]
        if parts.covered:
            print(f"resuming the feature cache: {len(parts.covered)} of {len(items)} views already cached")
        photo_views = _PhotoViews(samples, items, config.preprocessing, backgrounds, config.seed)
        loader = DataLoader(Subset(photo_views, remaining), batch_size=32, num_workers=config.workers)
        front.eval().to(memory_format=torch.channels_last)  # channels-last runs depthwise convs ~2x faster on CPU
        with torch.no_grad():
            for pixels, ok, positions in progress(loader, "caching frozen features"):
                parts.add(front(pixels.to(memory_format=torch.channels_last)).to(torch.float16)[ok], positions, ok)
        features, kept, failed = parts.finish()
        if failed:
            paths = [str(samples[items[p][0]].path) for p in failed]
            print(f"skipped {len(failed)} unreadable photo view(s): {', '.join(paths[:10])}", file=sys.stderr)
        cache = cls(features, [items[p][0] for p in kept], [items[p][1] for p in kept])
        torch.save({"features": cache.features, "owners": cache.owners, "views": cache.views}, path)
        parts.remove()
        return cache

    def rows(self, samples: list[Sample], split: str, *, clean_only: bool) -> dict[int, list[int]]:
        """Cache rows per sample index, for the samples of one split."""
        rows: dict[int, list[int]] = {}
        for row, (owner, view) in enumerate(zip(self.owners, self.views)):
            if samples[owner].split == split and (view == 0 or not clean_only):
                rows.setdefault(owner, []).append(row)
        return rows

    def logits(
        self, tail: Callable[[torch.Tensor], torch.Tensor], samples: list[Sample], split: str
    ) -> tuple[np.ndarray, list[Sample]]:
        """Logits of the clean view of every photo of `split`, by `tail` (cached features -> logits), in sample order."""
        rows = self.rows(samples, split, clean_only=True)
        owners = sorted(rows)
        with torch.no_grad():
            outputs = [tail(self.features[[rows[o][0] for o in owners[i : i + 128]]].float())
                       for i in range(0, len(owners), 128)]
        logits = torch.cat(outputs).numpy() if outputs else np.zeros((0, 0))
        return logits, [samples[o] for o in owners]


class _CachedParts:
    """The feature cache written in parts as it is computed, so an interrupted run resumes where it stopped."""

    ROWS_PER_PART = 1024  # photo views: at 288 px on 2 cores, about two minutes of work lost at most

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stored = [torch.load(part, weights_only=True) for part in sorted(folder.glob("part-*.pt"))]
        self.covered = {p for part in self.stored for p in part["kept"] + part["failed"]}
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, features: torch.Tensor, positions: torch.Tensor, ok: torch.Tensor) -> None:
        self.pending.append((features, positions, ok))
        if sum(len(positions) for _, positions, _ in self.pending) >= self.ROWS_PER_PART:
            self._write()

    def finish(self) -> tuple[torch.Tensor, list[int], list[int]]:
        """All cached features in position order, the positions they belong to, and the unreadable positions."""
        self._write()
        kept = [p for part in self.stored for p in part["kept"]]
        order = sorted(range(len(kept)), key=kept.__getitem__)  # as an uninterrupted run, however it was resumed
        features = torch.cat([part["features"] for part in self.stored])[order]
        return features, sorted(kept), sorted(p for part in self.stored for p in part["failed"])

    def remove(self) -> None:
        for part in self.folder.glob("part-*.pt"):
            part.unlink()
        self.folder.rmdir()

    def _write(self) -> None:
        if not self.pending:
            return
        positions = torch.cat([positions for _, positions, _ in self.pending])
        ok = torch.cat([ok for _, _, ok in self.pending])
        part = {"features": torch.cat([features for features, _, _ in self.pending]),
                "kept": positions[ok].tolist(), "failed": positions[~ok].tolist()}
        path = self.folder / f"part-{int(positions.min()):08d}.pt"
        torch.save(part, path.with_suffix(".partial"))
        path.with_suffix(".partial").replace(path)  # a kill mid-write leaves no half part behind
        self.stored.append(part)
        self.pending = []


class _PhotoViews(Dataset):
    """(pixels, loaded?, position) for each (sample, view); view 0 is the clean photo, others are augmented."""

    def __init__(self, samples, items, spec: Preprocessing, backgrounds: list[Path], seed: int) -> None:
        self.samples, self.items, self.spec, self.backgrounds, self.seed = samples, items, spec, backgrounds, seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int):
        index, view = self.items[position]
        try:
            # The clean view is decoded exactly as the library decodes at inference; augmented views keep more detail.
            image = load_image(self.samples[index].path, min_side=self.spec.input_size * (2 if view else 1))
        except ImageLoadError:
            return torch.zeros(3, self.spec.input_size, self.spec.input_size), False, position
        if view:
            # Seeded per item: the same run configuration caches the same views.
            image = ListingStyle(self.backgrounds, seed=self.seed * 1_000_003 + position)(image)
        return torch.from_numpy(to_tensor(image, self.spec)), True, position


def cache_key(config: TrainConfig, samples: list[Sample]) -> str:
    """Cached features are valid only for the same photos, splits, network front, input and augmentation."""
    parts = [_CACHE_FORMAT, manifest_hash(samples), config.architecture, config.image_size, config.resize,
             config.trainable_from_block, config.views, [(s.name, s.views) for s in config.data],
             sorted(config.background_sources), config.seed, config.no_pretrained]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]
