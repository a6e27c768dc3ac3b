"""wildvision: spot illegal wildlife products (ivory and more) in marketplace listing photos.

    from wildvision import Classifier, KnownItemIndex
    classifier = Classifier()
    result = classifier.predict("listing.jpg")
    result.scores, result.label, result.decision, result.model_version
    KnownItemIndex("known.sqlite", classifier).match("listing.jpg")  # a re-post of a photo confirmed as illegal?
"""

from wildvision.classifier import Classifier, Decision, Prediction, default_model_path
from wildvision.explain import Explanation
from wildvision.images import ImageLoadError, load_image
from wildvision.known_items import IndexFormatError, KnownItemIndex, Match, MatchRule
from wildvision.model_info import ModelFormatError, ModelInfo, OperatingPoint, Preprocessing
from wildvision.scan import ScanInput, ScanRecord, files_from_list, find_images, scan, scan_to_file

__all__ = [
    "Classifier", "Decision", "Explanation", "ImageLoadError", "IndexFormatError", "KnownItemIndex", "Match", "MatchRule",
    "ModelFormatError", "ModelInfo", "OperatingPoint", "Prediction", "Preprocessing", "ScanInput", "ScanRecord",
    "default_model_path", "files_from_list", "find_images", "load_image", "scan", "scan_to_file",
]
