"""wildvision: spot illegal wildlife products (ivory and more) in marketplace listing photos.

    from wildvision import Classifier
    result = Classifier().predict("listing.jpg")
    result.scores, result.label, result.decision, result.model_version
"""

from wildvision.classifier import Classifier, Decision, Prediction, default_model_path
from wildvision.explain import Explanation
from wildvision.images import ImageLoadError, load_image
from wildvision.model_info import ModelFormatError, ModelInfo, OperatingPoint, Preprocessing
from wildvision.scan import ScanInput, ScanRecord, files_from_list, find_images, scan, scan_to_file

__all__ = [
    "Classifier", "Decision", "Explanation", "ImageLoadError", "ModelFormatError", "ModelInfo", "OperatingPoint", "Prediction",
    "Preprocessing", "ScanInput", "ScanRecord", "default_model_path", "files_from_list", "find_images", "load_image",
    "scan", "scan_to_file",
]
