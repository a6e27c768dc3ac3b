"""`create_app`: the routes, wired to the classifier, the gate, the metrics and the middleware."""

from __future__ import annotations

import hashlib
import hmac
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Annotated, AsyncIterator, Awaitable, Callable, Sequence

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wildvision.classifier import Classifier, Prediction, PreparedPhoto
from wildvision.decision import MatchPolicy
from wildvision.images import ImageLoadError
from wildvision.known_items import KnownItemIndex, Match
from wildvision.service.admission import Limits, _Gate
from wildvision.service.bodies import (
    Points, _BATCH_BODIES, _batch_reader, _BATCH_TYPES, _BINARY_BODY, _call_points, _IMAGE_TYPES, _joined,
    _OPERATING_POINTS, _prepared_or_error, _require_content_type, _STATUS_BY_CATEGORY, _Words,
)
from wildvision.service.metrics import _Metrics
from wildvision.service.middleware import _counted_http_error, _Drained, _internal_error, _Observed
from wildvision.service.schemas import (
    BatchErrorOut, BatchOut, ErrorOut, HealthOut, ListingOut, MatchOut, PredictionOut, _error, _ErrorBody,
)
from wildvision.scorer import Scorer


_BEARER = HTTPBearer(auto_error=False, description="one of the service's API keys")


def create_app(
    classifier: Classifier, *, index: KnownItemIndex | None = None, limits: Limits = Limits(),
    api_keys: Sequence[str] = (), match_policy: MatchPolicy = MatchPolicy(),
) -> FastAPI:
    """The service's FastAPI application; `index` adds known-item matching to every prediction (a match decides by
    `match_policy`, as in `wildvision.scorer.Scorer`), `api_keys` (bearer tokens) closes everything but /health and
    the API docs to callers without one."""
    metrics = _Metrics(classifier)
    executor = ThreadPoolExecutor(limits.max_concurrency, thread_name_prefix="wildvision-score")
    gate = _Gate(limits, executor, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        executor.shutdown(wait=False, cancel_futures=True)  # uvicorn has already drained the requests

    # /docs and /redoc with Swagger UI's and ReDoc's scripts served from the fastapi-offline package, not a CDN: the
    # pages work where the service runs, behind a firewall too. No validator: Swagger UI would send the schema to
    # validator.swagger.io and show an error badge where that cannot be reached.
    app = FastAPIOffline(title="wildvision", version=classifier.info.version, lifespan=lifespan,
                         description="Spot illegal wildlife products in listing photos.",
                         swagger_ui_parameters={"validatorUrl": None})
    app.add_middleware(_Drained, metrics=metrics, limits=limits)
    app.add_middleware(_Observed, metrics=metrics)  # added last, so outermost: it counts and logs the discarded bytes
    app.add_exception_handler(HTTPException, _counted_http_error(metrics))
    app.add_exception_handler(Exception, _internal_error(metrics))
    guarded = [Depends(_token_check(api_keys))] if api_keys else []
    errors = _documented_errors(limits)

    scorer = Scorer(classifier, index=index, policy=match_policy)

    def score(body: bytes, points: Points) -> tuple[Prediction, Match | None]:
        return scorer.predict(body, operating_points=points)

    def score_each(
        bodies: list[bytes | ErrorOut], points: Points = None
    ) -> list[tuple[Prediction, Match | None] | ErrorOut]:
        """A batch's photos in one forward pass; a photo that cannot be read fails only itself."""
        prepared = [body if isinstance(body, ErrorOut) else _prepared_or_error(scorer, body) for body in bodies]
        photos = [item for item in prepared if isinstance(item, PreparedPhoto)]
        scored = iter(scorer.score(photos, operating_points=points))
        return [item if isinstance(item, ErrorOut) else next(scored) for item in prepared]

    async def score_sent(
        request: Request, points: Points = None, *, listing: bool = False
    ) -> tuple[list[str], list[tuple[Prediction, Match | None] | ErrorOut], _Words]:
        """The photos of a batch or listing request, each scored or its error, in the order sent (one gate slot), the
        name each was sent under (`_batch_reader`), and a listing's words."""
        async with gate.slot() as slot:
            sent = await slot.read(request, _batch_reader(request, limits.max_batch, listing=listing))
            names, photos = [name for name, _ in sent.photos], [photo for _, photo in sent.photos]
            return names, (await slot.run(score_each, photos, points) if photos else []), sent.words

    def answer(prediction: Prediction, match: Match | None, name: str | None = None) -> PredictionOut:
        metrics.photos.labels(prediction.decision, prediction.label or "").inc()  # "": allowed, nothing flagged
        result = PredictionOut(**prediction.to_dict())
        if name is not None:  # a batch's answers, each with the name its photo was sent under
            result.name = name
        if index is not None:
            result.match = MatchOut(**match.to_dict()) if match else None  # set, so it is sent even when null
        return result

    @app.get("/health", response_model=HealthOut)
    def health() -> HealthOut:
        return HealthOut(status="ok", **classifier.identity.to_fields(),
                         known_items=len(index) if index is not None else None)

    @app.get("/metrics", dependencies=guarded, response_class=Response)
    def prometheus() -> Response:
        """Prometheus metrics in the text exposition format."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/predict", response_model=PredictionOut, response_model_exclude_unset=True, responses=errors,
              dependencies=guarded, openapi_extra={"requestBody": {"required": True, "content": {
                  "image/*": _BINARY_BODY, "application/octet-stream": _BINARY_BODY}}})
    async def predict(request: Request, operating_points: str | None = _OPERATING_POINTS) -> PredictionOut:
        """Score the photo in the request body: every label's probability, the decision and the label it is about,
        and the top label."""
        _require_content_type(request, _IMAGE_TYPES, "send the photo's bytes as the body with an image Content-Type "
                                                     "(image/jpeg, image/png, ...)")
        points = _call_points(classifier, operating_points)
        async with gate.slot() as slot:
            body = await slot.read(request, _joined)
            try:
                prediction, match = await slot.run(score, body, points)
            except ImageLoadError as error:
                raise _error(_STATUS_BY_CATEGORY.get(error.category, 422), error.category, error.reason) from None
        request.state.decision = prediction.decision
        return answer(prediction, match)

    @app.post("/predict/batch", response_model=BatchOut, response_model_exclude_unset=True, responses=errors,
              dependencies=guarded, openapi_extra={"requestBody": {"required": True, "content": _BATCH_BODIES}})
    async def predict_batch(request: Request, operating_points: str | None = _OPERATING_POINTS) -> BatchOut:
        """Score several photos: one result or one error per photo, in the order sent, each with the name its photo
        was sent under (a multipart part's filename, else its position); a bad photo fails only itself."""
        _require_content_type(request, _BATCH_TYPES, "send a multipart form of photo files, or a JSON list of "
                                                     "base64-encoded photos")
        names, outcomes, _ = await score_sent(request, _call_points(classifier, operating_points))
        results = [BatchErrorOut(**outcome.model_dump(), name=name) if isinstance(outcome, ErrorOut)
                   else answer(*outcome, name=name) for name, outcome in zip(names, outcomes)]
        for result in results:
            if isinstance(result, ErrorOut):
                metrics.errors.labels(result.category).inc()
        request.state.decision = [getattr(result, "decision", None) for result in results]
        return BatchOut(results=results)

    @app.post("/predict/listing", response_model=ListingOut, response_model_exclude_unset=True, responses=errors,
              dependencies=guarded, openapi_extra={"requestBody": {"required": True, "content": _BATCH_BODIES}})
    async def predict_listing(request: Request, operating_points: str | None = _OPERATING_POINTS) -> ListingOut:
        """Decide a listing from its photos and its seller's words, as `Classifier.predict_listing` does: photos sent
        as for /predict/batch, with `title` and `description` as form fields (or, in JSON, an object with `photos`,
        `title` and `description`). Any of the three may be missing; a listing with words and no photo is decided on
        its words. A photo that cannot be read fails the listing, naming the photo: a listing decided without one of
        its photos could be wrongly allowed. `operating_points` as for /predict."""
        _require_content_type(request, _BATCH_TYPES, "send a multipart form of the listing's photo files (and title "
                                                     "and description fields), or a JSON object of them")
        points = _call_points(classifier, operating_points)
        names, outcomes, words = await score_sent(request, points, listing=True)
        for position, outcome in enumerate(outcomes):
            if isinstance(outcome, ErrorOut):
                raise _error(_STATUS_BY_CATEGORY.get(outcome.category, 422), outcome.category,
                             f"photo {position}: {outcome.error}")
        scored = [outcome for outcome in outcomes if not isinstance(outcome, ErrorOut)]
        listing = scorer.decide_listing(scored, title=words.title, description=words.description,  # type: ignore[arg-type]
                                        operating_points=points)
        request.state.decision = listing.decision
        return ListingOut(**{**listing.to_dict(), "photos": [answer(*outcome, name=name)
                                                             for name, outcome in zip(names, scored)]})

    return app


def _token_check(api_keys: Sequence[str]) -> Callable[..., Awaitable[None]]:
    """A dependency that lets through only requests bearing one of `api_keys`."""
    # SHA-256 first: every comparison is then of two 32-byte digests, so its time reveals neither a key's content nor
    # its length; every key is compared (a list, not a short-circuiting generator), so neither does which one matched.
    digests = [hashlib.sha256(key.encode()).digest() for key in api_keys]

    async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]) -> None:
        offered = hashlib.sha256(credentials.credentials.encode() if credentials else b"").digest()
        if not any([hmac.compare_digest(offered, digest) for digest in digests]):  # noqa: C419 (every key compared)
            raise _error(401, "unauthorized", "a valid API key is required: Authorization: Bearer <key>",
                         {"WWW-Authenticate": "Bearer"})

    return check


def _documented_errors(limits: Limits) -> dict[int | str, dict[str, object]]:
    texts = {400: "empty body, or a malformed batch", 401: "no valid API key (when the service has keys)",
             408: f"the body did not arrive within {limits.read_timeout:g} s",
             413: f"body over {limits.max_bytes} bytes, or too many pixels", 415: "a Content-Type the route does not take",
             422: "not an image, or a corrupt one", 503: "at capacity: retry after Retry-After seconds",
             504: f"no answer within {limits.timeout:g} s"}
    return {status: {"description": text, "model": _ErrorBody} for status, text in texts.items()}
