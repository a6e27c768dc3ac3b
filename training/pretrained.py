"""Keeping what ImageNet knew: the pretrained tail beside, inside or under the fine-tuned one.

Fine-tuning the later blocks on museum photos bends them away from the rest of the world: frozen ImageNet features
transfer to real listings better than fine-tuned ones, and the two together beat each (LP-FT, Kumar et al., ICLR 2022;
WiSE-FT, Wortsman et al., CVPR 2022). Every way of keeping them works on the cached frozen-front features, so each
costs what the tail costs, never the whole network:

- `linear_probe`: a logistic head on the pretrained tail's pooled features, the tail left as ImageNet made it;
- LP-FT: fine-tuning starts from that head (`set_head`) instead of a zero one;
- L2-SP: fine-tuning pulls the tail towards its pretrained weights (`PullToStart`);
- WiSE-FT: the fine-tuned and the pretrained weights interpolated (`interpolate`): one network, no extra inference;
- two tails: the pretrained tail and its probe head beside the fine-tuned one, logits mixed in the graph
  (`TwoTailNetwork`): the tail runs twice.

`benchmarks/keep_pretrained.py` measures them all on one split with Towneley held out; the release recipe uses the
one it chose (`training/configs/ivory.toml`).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from training.backbone import build_model, split_model
from training.data import Sample
from training.fine_tune import label_weights
from training.frozen_features import FeatureCache
from training.head import Head, fit_head

__all__ = ["PROBE_STAY_CLOSE", "ProbedImageNet", "PullToStart", "TwoTailNetwork", "interpolate", "linear_probe",
           "pooled", "pull_to_start", "set_head"]

# The probe's L2 penalty towards a zero head, per unit of mean loss: adapt's default pull, which keeps L-BFGS from
# growing the weights without bound on separable features.
PROBE_STAY_CLOSE = 1e-3
_ROWS_PER_PASS = 256


def pooled(tail: nn.Sequential, features: torch.Tensor) -> np.ndarray:
    """The classifier's input (pooled embedding) for cached frozen-front `features`, through `tail` less its
    classifier, in eval mode and without gradients."""
    body = tail[:-1].eval()
    with torch.no_grad():
        parts = [body(features[start : start + _ROWS_PER_PASS].float().contiguous(memory_format=torch.channels_last))
                 for start in range(0, len(features), _ROWS_PER_PASS)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0), np.float32)


def linear_probe(tail: nn.Sequential, cache: FeatureCache, samples: list[Sample], labels: list[str]) -> Head:
    """A logistic head on `tail`'s pooled features of every cached view of the `train` photos.

    Labels are balanced as the training loss balances them (`label_weights`), each photo's weight shared among its
    views so that a photo with three views counts as much as one with one.
    """
    rows = cache.rows(samples, "train", clean_only=False)
    owners = sorted(rows)
    picked = [row for owner in owners for row in rows[owner]]
    targets = np.array([labels.index(samples[owner].label) for owner in owners for _ in rows[owner]])
    shares = np.array([1.0 / len(rows[owner]) for owner in owners for _ in rows[owner]])
    embeddings = pooled(tail, cache.features[picked])
    zero = Head(np.zeros((len(labels), embeddings.shape[1]), np.float32), np.zeros(len(labels), np.float32))
    balance = label_weights(torch.from_numpy(targets), len(labels)).numpy()
    return fit_head(embeddings, targets, balance[targets] * shares, zero, stay_close=PROBE_STAY_CLOSE)


class ProbedImageNet:
    """ImageNet's network as it is, with a logistic probe head fitted on its tail's features: the side a fine-tuned
    network is mixed with (`--keep-pretrained`)."""

    def __init__(self, architecture: str, trainable_from_block: int, cache: FeatureCache, samples: list[Sample],
                 labels: list[str]) -> None:
        self.trainable_from_block = trainable_from_block
        self.network = build_model(architecture, len(labels))
        tail = split_model(self.network, trainable_from_block)[1]
        set_head(tail[-1], linear_probe(tail, cache, samples, labels))
        self.network.eval()

    def mixed_with(self, fine_tuned: nn.Module, how: str, share: float) -> tuple[nn.Module, Callable]:
        """(the network to ship, what turns cached frozen-front features into its logits), ImageNet's side taking
        `share`: `wise-ft` interpolates the weights into `fine_tuned` itself, `two-tails` puts both tails in one
        network."""
        if how == "wise-ft":
            fine_tuned.load_state_dict(interpolate(self.network.state_dict(), fine_tuned.state_dict(), 1 - share))
            return fine_tuned, split_model(fine_tuned, self.trainable_from_block)[1].eval()
        if how == "two-tails":
            network = TwoTailNetwork(fine_tuned, self.network, self.trainable_from_block, share).eval()
            return network, network.from_front
        raise ValueError(f"unknown way of keeping the pretrained network: {how!r}")


def set_head(classifier: nn.Linear, head: Head) -> None:
    """Copy `head` into `classifier` (LP-FT: fine-tuning starts from the probe's decision, not from a zero one)."""
    with torch.no_grad():
        classifier.weight.copy_(torch.from_numpy(head.weight))
        classifier.bias.copy_(torch.from_numpy(head.bias))


class PullToStart:
    """L2-SP (Li et al., ICML 2018): `strength` / 2 times the squared distance of the tail's trained weights from
    where they started, the new classifier aside (it has no pretrained weights to keep)."""

    def __init__(self, tail: nn.Sequential, strength: float) -> None:
        classifier = {id(parameter) for parameter in tail[-1].parameters()}
        self.pairs = [(parameter, parameter.detach().clone()) for parameter in tail.parameters()
                      if parameter.requires_grad and id(parameter) not in classifier]
        self.strength = strength

    def __call__(self) -> torch.Tensor:
        return self.strength / 2 * sum((parameter - start).pow(2).sum() for parameter, start in self.pairs)


def pull_to_start(tail: nn.Sequential, strength: float) -> PullToStart | None:
    """The L2-SP penalty of `--pull-to-pretrained` for `tail` as it is now (its ImageNet weights), None at 0."""
    return PullToStart(tail, strength) if strength else None


def interpolate(
    pretrained: Mapping[str, torch.Tensor], fine_tuned: Mapping[str, torch.Tensor], share: float
) -> dict[str, torch.Tensor]:
    """WiSE-FT: `share` of the fine-tuned weights and 1 - `share` of the pretrained ones, tensor by tensor.

    Batch-norm statistics are interpolated like the weights; integer tensors (batch counts) are the fine-tuned ones.
    """
    if set(pretrained) != set(fine_tuned):
        raise ValueError(f"the two networks differ in their tensors: {sorted(set(pretrained) ^ set(fine_tuned))[:5]}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"the fine-tuned share must lie in [0, 1], got {share}")
    return {name: torch.lerp(pretrained[name], tensor, share) if tensor.is_floating_point() else tensor.clone()
            for name, tensor in fine_tuned.items()}


class TwoTailNetwork(nn.Module):
    """The frozen front shared, the fine-tuned and the pretrained tails side by side, one classifier over both.

    logits = (1 - share) * fine-tuned logits + share * probe logits. That is one linear layer over the two pooled
    embeddings concatenated, so the network keeps the shape every consumer expects: `forward_features` gives the
    feature map (both tails' channels), `get_classifier` the linear layer reading its pooled form, and the
    `embedding` output of an exported graph is that pooled form (`training.export.ModelOutputs`), which `adapt`
    fits new heads on as it does on a one-tail network.
    """

    def __init__(self, fine_tuned: nn.Module, pretrained: nn.Module, trainable_from_block: int, share: float) -> None:
        super().__init__()
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"the pretrained share must lie in [0, 1], got {share}")
        if not _same_front(fine_tuned, pretrained, trainable_from_block):
            raise ValueError(f"the two networks' fronts (blocks before {trainable_from_block}) differ: two tails share "
                             "one frozen front")
        self.trainable_from_block = trainable_from_block
        self.fine_tuned = fine_tuned
        self.pretrained_tail = nn.Sequential(*pretrained.blocks[trainable_from_block:], pretrained.conv_head,
                                             pretrained.bn2)
        first, second = fine_tuned.get_classifier(), pretrained.get_classifier()
        self.classifier = nn.Linear(first.in_features + second.in_features, first.out_features)
        with torch.no_grad():
            self.classifier.weight.copy_(torch.cat([(1 - share) * first.weight, share * second.weight], dim=1))
            self.classifier.bias.copy_((1 - share) * first.bias + share * second.bias)

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.tail_features(self.front(pixels))

    def front(self, pixels: torch.Tensor) -> torch.Tensor:
        """The shared frozen front's output: what `training.frozen_features` caches."""
        network = self.fine_tuned
        shared = network.bn1(network.conv_stem(pixels))
        for block in network.blocks[: self.trainable_from_block]:
            shared = block(shared)
        return shared

    def tail_features(self, shared: torch.Tensor) -> torch.Tensor:
        """Both tails' feature maps, channels concatenated (fine-tuned first)."""
        network, own = self.fine_tuned, shared
        for block in network.blocks[self.trainable_from_block :]:
            own = block(own)
        return torch.cat([network.bn2(network.conv_head(own)), self.pretrained_tail(shared)], dim=1)

    def from_front(self, shared: torch.Tensor) -> torch.Tensor:
        """Logits from cached front outputs: how training calibrates the network without running the front again."""
        return self.classifier(self.tail_features(shared).mean(dim=(2, 3)))

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(pixels).mean(dim=(2, 3)))


def _same_front(first: nn.Module, second: nn.Module, trainable_from_block: int) -> bool:
    def front(network: nn.Module) -> list[torch.Tensor]:
        modules = [network.conv_stem, network.bn1, *network.blocks[:trainable_from_block]]
        return [tensor for module in modules for tensor in module.state_dict().values()]

    return all(torch.equal(a, b) for a, b in zip(front(first), front(second), strict=True))
