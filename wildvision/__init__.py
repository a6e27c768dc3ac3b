"""wildvision: spot illegal wildlife products (ivory and more) in marketplace listing photos.

    from wildvision import Classifier, KnownItemIndex
    classifier = Classifier()
    result = classifier.predict("listing.jpg")
    result.scores, result.label, result.decision, result.model_version
    KnownItemIndex("known.sqlite", classifier).match("listing.jpg")  # a re-post of a photo confirmed as illegal?
    Client("http://scorer:8000", api_key=key).predict("listing.jpg")  # the same, from a `wildvision serve` service
"""

from importlib.metadata import PackageNotFoundError, version

from wildvision.classifier import (
    Classifier,
    ListingPrediction,
    ModelIdentity,
    Prediction,
    PreparedPhoto,
    default_model_path,
)
from wildvision.client import Client, ServiceError
from wildvision.decision import Decision, MatchPolicy, Reason
from wildvision.errors import WildvisionError
from wildvision.explain import Explanation
from wildvision.images import ImageLoadError, load_frames, load_image
from wildvision.known_items import IndexFormatError, KnownItemIndex, Match, MatchRule
from wildvision.model_info import (
    ModelFormatError,
    ModelInfo,
    OperatingPoint,
    OperatingPointError,
    Preprocessing,
    read_operating_points,
)
from wildvision.records import ScanRecord
from wildvision.scan import (
    ResumeError,
    ScanInput,
    files_from_list,
    find_images,
    scan,
    scan_to_file,
)
from wildvision.scorer import Scorer

try:
    __version__ = version("wildvision")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = [
    "Classifier", "Client", "Decision", "Explanation", "ImageLoadError", "IndexFormatError", "KnownItemIndex", "ListingPrediction",
    "Match", "MatchPolicy",
    "MatchRule", "ModelFormatError", "ModelIdentity", "ModelInfo", "OperatingPoint", "OperatingPointError", "Prediction",
    "PreparedPhoto", "Preprocessing", "Reason", "ResumeError", "ScanInput", "ScanRecord", "Scorer", "ServiceError", "WildvisionError",
    "__version__",
    "default_model_path", "files_from_list", "find_images", "load_frames", "load_image", "read_operating_points",
    "scan", "scan_to_file",
]
