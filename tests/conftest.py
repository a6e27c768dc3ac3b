"""Shared fixtures: generated labelled photos, a tiny model trained and exported from them, and the shipped model."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from wildvision.hashing import pdq_available

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "wildlife-products-v1"
EVERYDAY_DATA = REPO.parent / "shared" / "data" / "everyday-v1"  # harmless photos of every kind: the open world
# pdqhash is in no extra the README's test command installs (its sdist builds with a C++ compiler); .ci/run adds it.
needs_pdq = pytest.mark.skipif(not pdq_available(), reason="PDQ needs pdqhash: pip install 'wildvision[pdq]' (a C++ build)")

# Three visually distinct synthetic "products", so a few epochs on a few photos can learn them.
_LOOKS = {
    "ivory": ((236, 226, 200), "ellipse"),
    "horn": ((90, 60, 40), "triangle"),
    "not_ivory": ((40, 90, 200), "rectangle"),
}


def make_photo(label: str, seed: int, size: tuple[int, int] = (120, 96)) -> Image.Image:
    """A cluttered-background photo with one object whose colour and shape depend on `label`."""
    rng = random.Random(f"{label}-{seed}")
    colour, shape = _LOOKS[label]
    image = Image.new("RGB", size, tuple(rng.randint(60, 200) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(6):  # clutter shared by all labels
        x, y = rng.randint(0, size[0]), rng.randint(0, size[1])
        draw.line((x, y, x + rng.randint(-40, 40), y + rng.randint(-40, 40)), fill=(rng.randint(0, 255),) * 3, width=2)
    box = (rng.randint(5, 30), rng.randint(5, 25), rng.randint(70, size[0] - 5), rng.randint(60, size[1] - 5))
    jitter = tuple(max(0, min(255, c + rng.randint(-15, 15))) for c in colour)
    if shape == "ellipse":
        draw.ellipse(box, fill=jitter)
    elif shape == "triangle":
        draw.polygon([(box[0], box[3]), ((box[0] + box[2]) // 2, box[1]), (box[2], box[3])], fill=jitter)
    else:
        draw.rectangle(box, fill=jitter)
    return image


def make_dataset(root: Path, labels: tuple[str, ...], per_label: int) -> Path:
    """A folder-per-label tree of generated JPEG photos."""
    for label in labels:
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_label):
            make_photo(label, index).save(root / label / f"{label}_{index:03d}.jpg", quality=90)
    return root


def identity_onnx(path: Path, outputs: int, metadata: str | None) -> Path:
    """An ONNX graph that passes its input through as `logits`, with optional wildvision metadata: a stand-in model."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from wildvision.model_info import METADATA_KEY

    graph = helper.make_graph(
        [helper.make_node("Identity", ["pixels"], ["logits"])], "identity",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", outputs])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", outputs])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if metadata is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, metadata
    onnx.save(model, path)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict[str, Path]:
    """Train and export a small model on generated photos, once per test session (torch, about a minute on 2 cores)."""
    pytest.importorskip("torch", reason="training tests need the [train] extra")
    from training import export, train

    root = tmp_path_factory.mktemp("tiny")
    data = make_dataset(root / "data", ("ivory", "horn", "not_ivory"), per_label=14)
    run = root / "run"
    status = train.main([
        "--data", str(data), "--out", str(run), "--name", "tiny", "--version", "0.0.1",
        "--prohibited", "ivory", "horn", "--image-size", "64", "--views", "1", "--epochs", "3",
        "--batch-size", "8", "--lr", "3e-3", "--val-fraction", "0.25", "--calib-fraction", "0.3",
        "--workers", "0", "--threads", "2", "--allow-rare",  # a few generated photos per label, knowingly
    ])
    assert status == 0
    model = root / "tiny.onnx"
    checkpoint = run / "checkpoint.safetensors"
    assert export.main(["--checkpoint", str(checkpoint), "--out", str(model), "--parity-photos", "8"]) == 0
    return {"data": data, "run": run, "checkpoint": checkpoint, "model": model}


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    from wildvision.classifier import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The site as `mkdocs build --strict` writes it (about 2 s)."""
    pytest.importorskip("mkdocs", reason="the documentation site needs the docs extra: pip install '.[docs]'")
    pytest.importorskip("material", reason="the documentation site needs the docs extra: pip install '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                           cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stderr[-3000:]
    return out
