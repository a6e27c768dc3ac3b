"""Write a wildvision ONNX model with another classifier head: the same graph, new classifier weights and labels.

`training.export` ends every graph with the classifier read twice: a `Gemm` from `embedding` to `logits`, and an
`Einsum` that weights the last feature map by the same classifier rows into `activation_map`. Both read one weight
initializer, so replacing it (and the bias) changes logits and explanations together; the outputs' label dimension
follows the new label count.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from training.artefacts import set_model_info
from training.errors import DataError
from training.head import Head
from wildvision.model_info import METADATA_KEY, ModelInfo

__all__ = ["network_digest", "read_head", "write_with_head"]


_ADDED_BIAS = "adapted.classifier.bias"


class HeadNotReadable(DataError):
    """A model whose classifier cannot be read from its graph: not exported by `training.export` (an int8 twin's
    classifier is quantised, for one)."""


def read_head(path: Path) -> Head:
    """The classifier weights and bias of a model written by `training.export`."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weight_name, bias_name = _classifier_names(graph, path)
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in (weight_name, bias_name)}
    weight = tensors[weight_name].astype(np.float32)
    bias = tensors[bias_name] if bias_name else np.zeros(len(weight))
    return Head(weight, bias.astype(np.float32))


def write_with_head(base: Path, head: Head, info: ModelInfo, out: Path) -> None:
    """Copy `base` to `out` with `head` as its classifier and `info` as its metadata."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(base))
    graph = model.graph
    weight_name, bias_name = _classifier_names(graph, base)
    if bias_name is None:  # the exporter drops an all-zero bias: give the Gemm one to hold the new bias
        bias_name = _ADDED_BIAS
        graph.initializer.append(numpy_helper.from_array(head.bias.astype(np.float32), bias_name))
        next(node for node in graph.node if "logits" in node.output).input.append(bias_name)
    replaced = {weight_name: head.weight.astype(np.float32), bias_name: head.bias.astype(np.float32)}
    for index, tensor in enumerate(graph.initializer):
        if tensor.name in replaced:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(replaced[tensor.name], tensor.name))
    for output in graph.output:
        if output.name in ("logits", "activation_map"):
            output.type.tensor_type.shape.dim[1].dim_value = len(info.labels)
    del graph.value_info[:]  # intermediate shapes recorded for the old label count; onnxruntime infers its own
    set_model_info(model, info)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def network_digest(path: Path) -> str:
    """A digest of what a model's `embedding` output depends on, and of nothing else: its preprocessing and every
    node and weight of the graph except the classifier's.

    The file's own digest changes with any metadata (a new version, thresholds, notes) and with a new head (what
    `training.adapt` writes), none of which changes the vector a photo becomes; this one changes exactly when those
    vectors would, so reference vectors stay valid for a re-labelled release or an adapted model of the same network.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    classifier = {name for name in _classifier_names(graph, path) if name} | {_ADDED_BIAS}
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    if METADATA_KEY not in metadata:
        raise HeadNotReadable(f"{path}: not a wildvision model (no '{METADATA_KEY}' metadata)")
    preprocessing = ModelInfo.from_json(metadata[METADATA_KEY]).preprocessing
    digest = hashlib.sha256(json.dumps(asdict(preprocessing), sort_keys=True).encode())
    for node in graph.node:
        if not classifier & set(node.input):  # the nodes reading the head change shape and inputs with it
            digest.update(node.SerializeToString(deterministic=True))
    for tensor in sorted(graph.initializer, key=lambda t: t.name):
        if tensor.name not in classifier:
            digest.update(tensor.name.encode())
            digest.update(np.ascontiguousarray(numpy_helper.to_array(tensor)).tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"


def _classifier_names(graph, path: Path) -> tuple[str, str | None]:
    """The weight and bias (None where the exporter dropped an all-zero one) the final Gemm reads, checked to be the
    rows `activation_map` reads too."""
    producers = {output: node for node in graph.node for output in node.output}
    gemm, cam = producers.get("logits"), producers.get("activation_map")
    initializers = {t.name for t in graph.initializer}
    if (gemm is None or gemm.op_type != "Gemm" or list(gemm.input[:1]) != ["embedding"] or len(gemm.input) not in (2, 3)
            or not set(gemm.input[1:]) <= initializers or _attribute(gemm, "transB") != 1):
        raise HeadNotReadable(f"{path}: the graph does not end in the classifier training.export writes "
                               "(Gemm from 'embedding' to 'logits'); only wildvision models exported by "
                               "training.export can be adapted")
    if cam is not None and gemm.input[1] not in cam.input:
        raise HeadNotReadable(f"{path}: 'activation_map' does not read the classifier's weights; export it again")
    return gemm.input[1], gemm.input[2] if len(gemm.input) == 3 else None


def _attribute(node, name: str) -> object:
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)
