"""`wildvision serve`: score uploaded photos over HTTP with one shared `Classifier` (FastAPI; `wildvision[serve]`).

A photo is POSTed as the raw request body (`Content-Type: image/jpeg`, `image/png`, ... or
`application/octet-stream`), or several to `/predict/batch` (a multipart form, or a JSON list of base64 strings).
What keeps the service standing under load, in the order a request meets it:

- an optional bearer token (`api_keys`), checked in constant time before anything else;
- admission (`Limits`): `max_concurrency` requests at once read, decode and score; `max_queue` more wait for a slot;
  any further request is answered 503 with `Retry-After` at once, before its body is read, so memory stays near
  `max_concurrency x max_bytes` plus the model however large a burst;
- the body must arrive within `read_timeout` (408) and stay under `max_bytes` (413), and the answer must be ready by
  the request's deadline, `timeout` seconds after it arrived (504);
- a request refused before its whole body arrived (503, 401, 413, 408, 504) is answered first, then the rest of its
  body is read and thrown away (`_Drained`: at most `max_discard` bytes, within `read_timeout`) and the connection is
  closed: a client still sending a photo reads its answer instead of a reset. A client that sent
  `Expect: 100-continue` was never invited to send the body, so it has none to throw away;
- scoring runs in a pool of `max_concurrency` threads, so the event loop keeps accepting requests while onnxruntime
  works; the classifier and the known-item index are safe to share across those threads.

Every request gets a request id (`X-Request-ID` in and out), one JSON access-log line (logger `wildvision.access`)
and Prometheus metrics (`GET /metrics`); every error, an unexpected one included, is JSON in one shape.
The API documentation pages (`/docs`, `/redoc`) load their scripts from the service itself (fastapi-offline), so
they work offline. This module imports FastAPI at the top: `wildvision` itself imports it only when `serve` runs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import (
    Annotated, Any, AsyncIterator, Awaitable, Callable, Literal, Optional, Sequence, TypeVar, get_type_hints,
)

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from pydantic import BaseModel, create_model
from starlette.datastructures import Headers, MutableHeaders, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wildvision.classifier import Classifier, Prediction, PreparedPhoto
from wildvision.decision import Decision, MatchPolicy, Reason
from wildvision.images import ImageLoadError
from wildvision.known_items import KnownItemIndex, Match
from wildvision.scorer import Scorer

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_DISCARD", "Limits", "create_app"]

T = TypeVar("T")
DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # 20 MiB: above any phone JPEG (12 MP at high quality is about 8 MiB)
DEFAULT_MAX_DISCARD = 64 * 1024 * 1024  # 64 MiB: three times the default max_bytes
# Refused uploads discarded at once; each holds at most uvicorn's 64 KiB buffer plus one 256 KiB socket read, so these
# stay under 100 MiB however many clients a burst brings. Beyond them a refused upload is answered and closed at once.
_MAX_DISCARDING = 256
_IMAGE_TYPES = ("image/", "application/octet-stream")
_BATCH_TYPES = ("multipart/form-data", "application/json")
# Why a photo could not be scored -> HTTP status: the client's request was at fault in every case (4xx).
_STATUS_BY_CATEGORY = {"empty": 400, "too_large": 413, "not_an_image": 422, "corrupt": 422}
_BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}
_BATCH_BODIES = {  # for the OpenAPI schema: the route reads its body itself, to bound it
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "photos": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "application/json": {"schema": {"type": "array", "items": {"type": "string", "format": "byte"}}},
}
# A full queue drains in about (max_queue / photos per second); one second is the order of that for the defaults
# and keeps well-behaved clients from hammering a busy service.
_RETRY_AFTER_S = "1"
# Request ids are echoed into logs and headers: accept only a plain token, else make one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Seconds: a service photo takes tens of milliseconds to score; queueing and slow uploads make the tail.
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
access_log = logging.getLogger("wildvision.access")
_BEARER = HTTPBearer(auto_error=False, description="one of the service's API keys")


@dataclass(frozen=True)
class Limits:
    """How much work the service takes on at once and how long it waits (`wildvision serve`'s options)."""

    max_bytes: int = DEFAULT_MAX_BYTES  # per request body: one photo, or a whole batch
    max_batch: int = 32  # photos per /predict/batch request
    max_concurrency: int = field(default_factory=lambda: os.cpu_count() or 1)  # requests reading/decoding/scoring
    max_queue: int = 64  # requests waiting for a slot; beyond them, 503 at once
    timeout: float = 30.0  # seconds from arrival to the answer (504)
    read_timeout: float = 10.0  # seconds to receive the body once a slot is free (408), or to discard a refused one
    # Bytes of a refused request's body read and thrown away so that its client reads the answer (see `_Drained`):
    # above `max_bytes`, so that a photo somewhat over the limit still learns it is too large (413) from an answer.
    max_discard: int = DEFAULT_MAX_DISCARD

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < (0 if name == "max_queue" else 1e-9):
                raise ValueError(f"{name} must be {'at least 0' if name == 'max_queue' else 'positive'}, got {value}")


def _response_model(source: type, name: str, **extra: Any) -> type[BaseModel]:
    """A response model with the fields and types of the library's dataclass `source`, so an answer's schema is
    stated once, in the library (`Prediction`, `Match`), and the OpenAPI document follows it."""
    hints = get_type_hints(source)
    described = {field.name: (hints[field.name], ...) for field in fields(source)}
    return create_model(name, __doc__=source.__doc__, **described, **extra)


MatchOut = _response_model(Match, "MatchOut")
# `Prediction.to_dict()`, plus `match` when the service runs with a known-item index.
PredictionOut = _response_model(Prediction, "PredictionOut", match=(Optional[MatchOut], None))


class ErrorOut(BaseModel):
    """Why a request, or one photo of a batch, was not scored: in words, and in one word for counting."""

    error: str
    category: str


class _ErrorBody(BaseModel):
    detail: ErrorOut


class BatchOut(BaseModel):
    results: list[PredictionOut | ErrorOut]  # one per photo, in the order sent


ReasonOut = _response_model(Reason, "ReasonOut")


class ListingOut(BaseModel):
    """A listing's decision from its photos and words (`ListingPrediction`): the decision, the prohibited labels it is
    flagged for, each label's fused score, the evidence with its source (`reasons`), the photo to see first
    (`deciding_photo`, its position; null without photos), and every photo's own answer in the order sent."""

    decision: Decision
    deciding_photo: int | None
    labels: list[str]
    scores: dict[str, float]
    reasons: list[ReasonOut]  # type: ignore[valid-type]
    photos: list[PredictionOut]  # type: ignore[valid-type]


class HealthOut(BaseModel):
    status: Literal["ok"]
    model_name: str
    model_version: str
    model_precision: str
    model_digest: str  # which model file answers (see `ModelIdentity`)
    known_items: int | None  # items in the known-item index; null when the service runs without one


def create_app(
    classifier: Classifier, *, index: KnownItemIndex | None = None, limits: Limits = Limits(),
    api_keys: Sequence[str] = (), match_policy: MatchPolicy = MatchPolicy(),
) -> FastAPI:
    """The service's FastAPI application; `index` adds known-item matching to every prediction (a match decides by
    `match_policy`, as in `wildvision.scorer.Scorer`), `api_keys` (bearer
    tokens) closes everything but /health and the API docs to callers without one."""
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
    score = scorer.predict

    def score_each(bodies: list[bytes | ErrorOut]) -> list[tuple[Prediction, Match | None] | ErrorOut]:
        """A batch's photos in one forward pass; a photo that cannot be read fails only itself."""
        prepared = [body if isinstance(body, ErrorOut) else _prepared_or_error(scorer, body) for body in bodies]
        scored = iter(scorer.score([item for item in prepared if isinstance(item, PreparedPhoto)]))
        return [item if isinstance(item, ErrorOut) else next(scored) for item in prepared]

    async def score_sent(
        request: Request, *, listing: bool = False
    ) -> tuple[list[tuple[Prediction, Match | None] | ErrorOut], _Words]:
        """The photos of a batch or listing request, each scored or its error, in the order sent (one gate slot), and
        a listing's words."""
        async with gate.slot() as slot:
            sent = await slot.read(request, _batch_reader(request, limits.max_batch, listing=listing))
            return (await slot.run(score_each, sent.photos) if sent.photos else []), sent.words

    def answer(prediction: Prediction, match: Match | None) -> PredictionOut:
        metrics.photos.labels(prediction.decision, prediction.label).inc()
        result = PredictionOut(**prediction.to_dict())
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
    async def predict(request: Request) -> PredictionOut:
        """Score the photo in the request body: every label's probability, the top label and the decision."""
        _require_content_type(request, _IMAGE_TYPES, "send the photo's bytes as the body with an image Content-Type "
                                                     "(image/jpeg, image/png, ...)")
        async with gate.slot() as slot:
            body = await slot.read(request, _joined)
            try:
                prediction, match = await slot.run(score, body)
            except ImageLoadError as error:
                raise _error(_STATUS_BY_CATEGORY.get(error.category, 422), error.category, error.reason) from None
        request.state.decision = prediction.decision
        return answer(prediction, match)

    @app.post("/predict/batch", response_model=BatchOut, response_model_exclude_unset=True, responses=errors,
              dependencies=guarded, openapi_extra={"requestBody": {"required": True, "content": _BATCH_BODIES}})
    async def predict_batch(request: Request) -> BatchOut:
        """Score several photos: one result or one error per photo, in the order sent; a bad photo fails only itself."""
        _require_content_type(request, _BATCH_TYPES, "send a multipart form of photo files, or a JSON list of "
                                                     "base64-encoded photos")
        outcomes, _ = await score_sent(request)
        results = [outcome if isinstance(outcome, ErrorOut) else answer(*outcome) for outcome in outcomes]
        for result in results:
            if isinstance(result, ErrorOut):
                metrics.errors.labels(result.category).inc()
        request.state.decision = [getattr(result, "decision", None) for result in results]
        return BatchOut(results=results)

    @app.post("/predict/listing", response_model=ListingOut, response_model_exclude_unset=True, responses=errors,
              dependencies=guarded, openapi_extra={"requestBody": {"required": True, "content": _BATCH_BODIES}})
    async def predict_listing(request: Request) -> ListingOut:
        """Decide a listing from its photos and its seller's words, as `Classifier.predict_listing` does: photos sent
        as for /predict/batch, with `title` and `description` as form fields (or, in JSON, an object with `photos`,
        `title` and `description`). Any of the three may be missing; a listing with words and no photo is decided on
        its words. A photo that cannot be read fails the listing, naming the photo: a listing decided without one of
        its photos could be wrongly allowed."""
        _require_content_type(request, _BATCH_TYPES, "send a multipart form of the listing's photo files (and title "
                                                     "and description fields), or a JSON object of them")
        outcomes, words = await score_sent(request, listing=True)
        for position, outcome in enumerate(outcomes):
            if isinstance(outcome, ErrorOut):
                raise _error(_STATUS_BY_CATEGORY.get(outcome.category, 422), outcome.category,
                             f"photo {position}: {outcome.error}")
        scored = [outcome for outcome in outcomes if not isinstance(outcome, ErrorOut)]
        listing = scorer.decide_listing(scored, title=words.title, description=words.description)
        request.state.decision = listing.decision
        return ListingOut(**{**listing.to_dict(), "photos": [answer(*outcome) for outcome in scored]})

    return app


class _Metrics:
    """The service's Prometheus metrics, in a registry of their own: two apps in one process (tests) never clash."""

    def __init__(self, classifier: Classifier) -> None:
        self.registry = registry = CollectorRegistry()
        Info("wildvision_model", "The model file answering", registry=registry).info(asdict(classifier.identity))
        self.requests = Counter("wildvision_http_requests", "HTTP requests answered, by route and status",
                                ["route", "status"], registry=registry)
        self.latency = Histogram("wildvision_http_request_duration_seconds", "Arrival to the last byte of the answer",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.photos = Counter("wildvision_photos", "Photos scored, by decision and top label", ["decision", "label"],
                              registry=registry)
        self.errors = Counter("wildvision_errors", "Errors answered (a request's, or one photo's in a batch), by "
                              "category", ["category"], registry=registry)
        self.queued = Gauge("wildvision_queue_depth", "Requests waiting for a slot", registry=registry)
        self.active = Gauge("wildvision_requests_active", "Requests holding a slot: reading, decoding or scoring",
                            registry=registry)
        self.discarded = Counter("wildvision_discarded_bytes", "Request body bytes read and thrown away after a "
                                 "refusal, so that the client reads its answer", registry=registry)
        self.refused_uploads = Counter("wildvision_refused_uploads", "Requests answered before their body was in, by "
                                       "what became of the rest (see _Drained)", ["outcome"], registry=registry)


@dataclass(frozen=True)
class _Slot:
    """An admitted request's share of the service: its deadline, and the two things it may spend it on."""

    deadline: float  # event-loop time
    limits: Limits
    executor: ThreadPoolExecutor

    async def read(self, request: Request, parse: Callable[[AsyncIterator[bytes]], Awaitable[T]]) -> T:
        """The body, parsed as it streams in: 413 past `max_bytes`, 408 when it is not in within `read_timeout`."""
        until = min(self.deadline, asyncio.get_running_loop().time() + self.limits.read_timeout)
        async with _expiring(until, 408, "upload_timeout", "the request body did not arrive in time"):
            return await parse(_capped(request, self.limits.max_bytes))

    async def run(self, function: Callable[..., T], *args: object) -> T:
        """`function(*args)` in a scoring thread; 504 when it is not done by the deadline. A thread cannot be stopped:
        a late one finishes unseen, still one of the pool's `max_concurrency`, so the work done at once stays bounded."""
        async with _expiring(self.deadline, 504, "timeout", f"no answer within {self.limits.timeout:g} s"):
            return await asyncio.get_running_loop().run_in_executor(self.executor, function, *args)


class _Gate:
    """Admission: `max_concurrency` requests hold a slot, `max_queue` more wait for one, further ones get 503."""

    def __init__(self, limits: Limits, executor: ThreadPoolExecutor, metrics: _Metrics) -> None:
        self._slots = asyncio.Semaphore(limits.max_concurrency)
        self._capacity = limits.max_concurrency + limits.max_queue
        self._admitted = 0  # holding a slot or waiting for one; one event loop, so a plain counter is exact
        self._limits, self._executor, self._metrics = limits, executor, metrics

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[_Slot]:
        if self._admitted >= self._capacity:
            raise _error(503, "overloaded", "the service is at capacity; retry later", {"Retry-After": _RETRY_AFTER_S})
        deadline = asyncio.get_running_loop().time() + self._limits.timeout
        self._admitted += 1
        try:
            with self._metrics.queued.track_inprogress():
                async with _expiring(deadline, 504, "timeout", f"no slot free within {self._limits.timeout:g} s"):
                    await self._slots.acquire()
            try:
                with self._metrics.active.track_inprogress():
                    yield _Slot(deadline, self._limits, self._executor)
            finally:
                self._slots.release()
        finally:
            self._admitted -= 1


@asynccontextmanager
async def _expiring(when: float, status: int, category: str, reason: str) -> AsyncIterator[None]:
    """Cancel the block at event-loop time `when`, answering `status` instead."""
    try:
        async with asyncio.timeout_at(when):
            yield
    except TimeoutError:
        raise _error(status, category, reason) from None


def _error(status: int, category: str, reason: str, headers: dict[str, str] | None = None) -> HTTPException:
    """An error answer in the service's one shape: `{"detail": {"error": reason, "category": category}}`."""
    return HTTPException(status, {"error": reason, "category": category}, headers)


def _require_content_type(request: Request, accepted: tuple[str, ...], hint: str) -> None:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(accepted):
        raise _error(415, "wrong_content_type", f"{hint}, not {content_type or 'no Content-Type'}")


async def _capped(request: Request, max_bytes: int) -> AsyncIterator[bytes]:
    """The body's chunks, refused with 413 as soon as it is known to be over `max_bytes`."""
    too_large = _error(413, "too_large", f"the request body is over the {max_bytes}-byte limit")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    received = 0
    async for chunk in request.stream():  # a chunked upload has no Content-Length: count as it arrives
        received += len(chunk)
        if received > max_bytes:
            raise too_large
        yield chunk


async def _joined(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


@dataclass(frozen=True)
class _Words:
    """A listing's own words, as sent with its photos."""

    title: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class _Sent:
    photos: list[bytes | ErrorOut]  # each its bytes or, where the JSON item is not base64, that item's error
    words: _Words


def _batch_reader(
    request: Request, max_batch: int, *, listing: bool
) -> Callable[[AsyncIterator[bytes]], Awaitable[_Sent]]:
    """The photos of a batch or listing body and, for a listing, its title and description."""

    async def read(chunks: AsyncIterator[bytes]) -> _Sent:
        if request.headers["content-type"].startswith("multipart/form-data"):
            sent = await _form_parts(request, chunks, max_batch)
        else:
            sent = _json_body(await _joined(chunks), max_batch, listing=listing)
        if not listing and (sent.words.title or sent.words.description):
            raise _error(400, "malformed", "title and description are a listing's: send them to /predict/listing")
        if not sent.photos and not (sent.words.title or sent.words.description):
            raise _error(400, "empty", "the listing has no photo, title or description" if listing
                         else "the batch holds no photos")
        return sent

    return read


async def _form_parts(request: Request, chunks: AsyncIterator[bytes], max_batch: int) -> _Sent:
    """Every file part of a multipart form, in order, and its `title` and `description` fields (Starlette's parser:
    parts over 1 MiB spool to disk)."""
    try:
        form = await MultiPartParser(request.headers, chunks, max_files=max_batch, max_fields=max_batch).parse()
    except MultiPartException as error:
        raise _error(400, "malformed", f"not a usable multipart form: {error.message}") from None
    try:
        photos: list[bytes | ErrorOut] = [await part.read() for _, part in form.multi_items()
                                          if isinstance(part, UploadFile)]
        words = {name: value for name, value in form.multi_items() if isinstance(value, str)}
        return _Sent(photos, _Words(words.get("title"), words.get("description")))
    finally:
        await form.close()


def _json_body(body: bytes, max_batch: int, *, listing: bool) -> _Sent:
    """A JSON list of base64-encoded photos or, for a listing, also an object with `photos`, `title`, `description`."""
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise _error(400, "malformed", f"not JSON: {error}") from None
    if listing and isinstance(value, dict):
        unknown = sorted(set(value) - {"photos", "title", "description"})
        words = [value.get(name) for name in ("title", "description")]
        if unknown or not all(word is None or isinstance(word, str) for word in words):
            raise _error(400, "malformed", "a listing is a JSON object of photos (a list of base64-encoded photos), "
                         f"title and description (text){f'; unknown: {unknown}' if unknown else ''}")
        return _Sent(_json_photos(value.get("photos", []), max_batch), _Words(*words))
    return _Sent(_json_photos(value, max_batch), _Words())


def _json_photos(items: object, max_batch: int) -> list[bytes | ErrorOut]:
    if not isinstance(items, list):
        raise _error(400, "malformed", "send a JSON list of base64-encoded photos")
    if len(items) > max_batch:
        raise _error(400, "malformed", f"{len(items)} photos; at most {max_batch} per batch")
    return [_base64_photo(item) for item in items]


def _base64_photo(item: object) -> bytes | ErrorOut:
    try:
        return base64.b64decode(item, validate=True) if isinstance(item, str) else ErrorOut(
            error=f"expected a base64-encoded photo (a JSON string), got {json.dumps(item)[:40]}",
            category="not_an_image")
    except binascii.Error as error:
        return ErrorOut(error=f"not valid base64 ({error})", category="not_an_image")


def _prepared_or_error(scorer: Scorer, body: bytes) -> PreparedPhoto | ErrorOut:
    """One photo of a batch, ready for the model, or why it cannot be scored (which fails only that photo)."""
    try:
        return scorer.prepare(body)
    except ImageLoadError as error:
        return ErrorOut(error=error.reason, category=error.category)


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


def _counted_http_error(metrics: _Metrics) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        if isinstance(error.detail, dict):  # the service's own errors; routing's 404/405 have no category
            metrics.errors.labels(error.detail["category"]).inc()
        return await http_exception_handler(request, error)

    return handle


def _internal_error(metrics: _Metrics) -> Callable[[Request, Exception], Awaitable[Response]]:
    """Any unexpected exception: a JSON 500 in the service's shape (Starlette then re-raises it, so the server logs
    the traceback)."""

    async def handle(request: Request, error: Exception) -> Response:
        metrics.errors.labels("internal").inc()
        detail = {"error": "internal error; the service's log has the details", "category": "internal"}
        request_id = request.scope.get("state", {}).get("request_id", "")
        return JSONResponse({"detail": detail}, status_code=500, headers={"X-Request-ID": request_id})

    return handle


@dataclass
class _Upload:
    """What has arrived of one request's body, as the application asked for it."""

    declared: int | None  # Content-Length; None for a chunked body, or none at all
    expects_continue: bool  # `Expect: 100-continue`: the client sends the body only when invited
    complete: bool  # the whole body is in (or there is none), or the client went away
    received: int = 0
    asked: bool = False  # the application has asked for the body, which makes uvicorn send `100 Continue`

    @classmethod
    def of(cls, scope: Scope) -> _Upload:
        headers = Headers(scope=scope)
        length = headers.get("content-length", "")
        declared = int(length) if length.isdigit() else None
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        return cls(declared=declared, expects_continue=headers.get("expect", "").lower() == "100-continue",
                   complete=not chunked and not declared)

    def saw(self, message: Message) -> None:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = self.complete or not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            self.complete = True


class _Drained:
    """ASGI middleware: a client refused before its whole body arrived reads its answer instead of a reset.

    A server that answers early and closes a connection with unread bytes in it makes the kernel send a reset, which
    throws away the answer still waiting in the client's buffer: a client sending a photo larger than the socket
    buffers sees "connection reset by peer", never the 503 and its `Retry-After` (issue 25). So an answer that starts
    before the body is in goes out at once, with `Connection: close`; then the rest of the body is read and thrown
    away (64 KiB at a time, nothing kept), at most `max_discard` bytes within `read_timeout`, and only then does the
    answer end and the server close the connection, cleanly. What became of each such upload is counted in
    `wildvision_refused_uploads_total{outcome}`, the bytes in `wildvision_discarded_bytes_total`.
    """

    def __init__(self, app: ASGIApp, metrics: _Metrics, limits: Limits) -> None:
        self.app, self.metrics, self.limits = app, metrics, limits
        self._discarding = 0  # uploads being discarded now; one event loop, so a plain counter is exact

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = _Upload.of(scope)
        early = False  # the answer started before the body was in

        async def tracked_receive() -> Message:
            upload.asked = True
            message = await receive()
            upload.saw(message)
            return message

        async def answering(message: Message) -> None:
            nonlocal early
            if message["type"] == "http.response.start" and not upload.complete:
                early = True
                # The rest of the body is not a next request: this connection ends with the answer.
                MutableHeaders(scope=message)["Connection"] = "close"
            elif message["type"] == "http.response.body" and early and not message.get("more_body", False):
                await send({**message, "more_body": True})  # the whole answer, on its way to the client
                scope.setdefault("state", {})["bytes_discarded"] = await self._discard(upload, receive)
                message = {"type": "http.response.body", "body": b"", "more_body": False}  # ends it; uvicorn closes
            await send(message)

        await self.app(scope, tracked_receive, answering)

    async def _discard(self, upload: _Upload, receive: Receive) -> int:
        """Read and drop the rest of `upload`'s body; returns the bytes dropped."""
        outcome, dropped = self._hopeless(upload), 0
        if outcome is None:
            self._discarding += 1
            try:
                async with asyncio.timeout(self.limits.read_timeout):
                    while not upload.complete and dropped <= self.limits.max_discard:
                        message = await receive()
                        upload.saw(message)
                        dropped += len(message.get("body", b""))
                        if message["type"] == "http.disconnect":
                            outcome = "disconnected"
                outcome = outcome or ("drained" if upload.complete else "over_cap")
            except TimeoutError:  # a client that stalls is not waited for longer than one that was admitted
                outcome = "stalled"
            finally:
                self._discarding -= 1
        self.metrics.refused_uploads.labels(outcome).inc()
        self.metrics.discarded.inc(dropped)
        return dropped

    def _hopeless(self, upload: _Upload) -> str | None:
        """Why the rest of `upload` is not worth reading, if it is not: the connection then closes at once."""
        if upload.expects_continue and not upload.asked:
            return "not_sent"  # never invited with `100 Continue`, the client sends no body
        if upload.declared is not None and upload.declared - upload.received > self.limits.max_discard:
            return "over_cap"
        if self._discarding >= _MAX_DISCARDING:
            return "busy"
        return None


class _Observed:
    """ASGI middleware: a request id per request (`X-Request-ID` in, else made; returned in the answer), one JSON
    access-log line, and the request counter and latency histogram. Headers are never logged: they carry the tokens."""

    def __init__(self, app: ASGIApp, metrics: _Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        offered = Headers(scope=scope).get("x-request-id", "")
        request_id = offered if _REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        seen = {"status": 500, "bytes_in": 0, "bytes_out": 0}  # 500 unless an answer starts: an unexpected error

        async def counted_receive() -> Message:
            message = await receive()
            seen["bytes_in"] += len(message.get("body", b""))
            return message

        async def tagged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            elif message["type"] == "http.response.body":
                seen["bytes_out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counted_receive, tagged_send)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", "unmatched")  # templates, not raw paths: bounded labels
            self.metrics.requests.labels(route, str(seen["status"])).inc()
            self.metrics.latency.labels(route).observe(seconds)
            access_log.info(json.dumps({
                "request_id": request_id, "method": scope["method"], "path": scope["path"], **seen,
                "bytes_discarded": state.get("bytes_discarded", 0),
                "latency_ms": round(seconds * 1000, 1), "client": (scope.get("client") or ("",))[0],
                "decision": state.get("decision"),
            }))


def _documented_errors(limits: Limits) -> dict[int | str, dict[str, object]]:
    texts = {400: "empty body, or a malformed batch", 401: "no valid API key (when the service has keys)",
             408: f"the body did not arrive within {limits.read_timeout:g} s",
             413: f"body over {limits.max_bytes} bytes, or too many pixels", 415: "a Content-Type the route does not take",
             422: "not an image, or a corrupt one", 503: "at capacity: retry after Retry-After seconds",
             504: f"no answer within {limits.timeout:g} s"}
    return {status: {"description": text, "model": _ErrorBody} for status, text in texts.items()}
