"""`wildvision serve`: score uploaded photos over HTTP with one shared `Classifier` (FastAPI; `wildvision[serve]`).

A photo is POSTed as the raw request body (`Content-Type: image/jpeg`, `image/png`, ... or
`application/octet-stream`): no form encoding to parse, and the size limit is enforced while the body streams in,
before anything is decoded. Scoring runs in the server's thread pool, so the event loop keeps accepting requests
while onnxruntime works; the classifier and the known-item index are safe to share across those threads.
This module imports FastAPI at the top: `wildvision` itself imports it only when `serve` runs.
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from wildvision.classifier import Classifier, Prediction
from wildvision.images import ImageLoadError
from wildvision.known_items import KnownItemIndex, Match

__all__ = ["DEFAULT_MAX_BYTES", "create_app"]

DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # 20 MiB: above any phone JPEG (12 MP at high quality is about 8 MiB)
_ACCEPTED_TYPES = ("image/", "application/octet-stream")
# Why a photo could not be scored -> HTTP status: the client's request was at fault in every case (4xx).
_STATUS_BY_CATEGORY = {"empty": 400, "too_large": 413, "not_an_image": 422, "corrupt": 422}
_BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}


class MatchOut(BaseModel):
    id: int
    reference: str
    hash_distance: int
    cosine: float


class PredictionOut(BaseModel):
    """`Prediction.to_dict()`, plus `match` when the service runs with a known-item index."""

    scores: dict[str, float]
    label: str
    decision: Literal["allow", "review", "block"]
    model_name: str
    model_version: str
    match: MatchOut | None = None


class HealthOut(BaseModel):
    status: Literal["ok"]
    model_name: str
    model_version: str
    known_items: int | None  # items in the known-item index; null when the service runs without one


def create_app(
    classifier: Classifier, *, index: KnownItemIndex | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> FastAPI:
    """The service's FastAPI application; `index` adds known-item matching to every prediction."""
    app = FastAPI(title="wildvision", version=classifier.info.version,
                  description="Spot illegal wildlife products in listing photos.")
    errors = {status: {"description": text} for status, text in (
        (400, "empty body"), (413, f"body over {max_bytes} bytes, or too many pixels"),
        (415, "Content-Type is not an image type"), (422, "not an image, or a corrupt one"))}

    @app.get("/health", response_model=HealthOut)
    def health() -> HealthOut:
        info = classifier.info
        return HealthOut(status="ok", model_name=info.name, model_version=info.version,
                         known_items=len(index) if index is not None else None)

    @app.post("/predict", response_model=PredictionOut, response_model_exclude_unset=True, responses=errors,
              openapi_extra={"requestBody": {"required": True, "content": {
                  "image/*": _BINARY_BODY, "application/octet-stream": _BINARY_BODY}}})
    async def predict(request: Request) -> PredictionOut:
        """Score the photo in the request body: every label's probability, the top label and the decision."""
        body = await _read_body(request, max_bytes)
        try:
            prediction, match = await run_in_threadpool(_score, classifier, index, body)
        except ImageLoadError as error:
            status = _STATUS_BY_CATEGORY.get(error.category, 422)
            raise HTTPException(status, {"error": error.reason, "category": error.category}) from None
        result = PredictionOut(**prediction.to_dict())
        if index is not None:
            result.match = MatchOut(**match.to_dict()) if match else None  # set, so it is sent even when null
        return result

    return app


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with a 4xx as soon as its type or size is known to be wrong."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(_ACCEPTED_TYPES):
        raise HTTPException(415, {"error": f"send the photo's bytes as the body with an image Content-Type "
                                           f"(image/jpeg, image/png, ...), not {content_type or 'no Content-Type'}",
                                  "category": "wrong_content_type"})
    too_large = HTTPException(413, {"error": f"the photo is over the {max_bytes}-byte limit", "category": "too_large"})
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():  # a chunked upload has no Content-Length: count as it arrives
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)


def _score(classifier: Classifier, index: KnownItemIndex | None, body: bytes) -> tuple[Prediction, Match | None]:
    if index is not None:
        return index.predict_and_match(body)
    return classifier.predict(body), None
