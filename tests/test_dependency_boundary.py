"""A platform's install: numpy, pillow and onnxruntime only, and predicting never imports torch (or Spark)."""

import subprocess
import sys
import tomllib

from conftest import REPO


def test_inference_dependencies_are_exactly_three():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {requirement.split(">")[0].split("=")[0].strip() for requirement in project["dependencies"]}
    assert names == {"numpy", "pillow", "onnxruntime"}


def test_predicting_and_scanning_never_import_torch_or_spark(tmp_path):
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (300, 200), (200, 190, 170)).save(tmp_path / "photos" / "a.jpg")
    script = f"""
import sys
from pathlib import Path
import wildvision
from wildvision.cli import main
classifier = wildvision.Classifier()
classifier.predict({str(tmp_path / "photos" / "a.jpg")!r})
assert main(["scan", {str(tmp_path / "photos")!r}, "-o", {str(tmp_path / "out.jsonl")!r}]) == 0
heavy = sorted(name for name in ("torch", "torchvision", "timm", "onnx", "pyspark", "pandas") if name in sys.modules)
print(heavy)
sys.exit(1 if heavy else 0)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
