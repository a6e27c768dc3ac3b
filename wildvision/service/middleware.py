"""ASGI middleware: the access log and request ids (`_Observed`), and reading a refused upload to its end so that
its client reads the answer (`_Drained`); the handlers that turn every error into the one JSON shape."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable

from fastapi import HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from wildvision.service.admission import Limits
from wildvision.service.metrics import _Metrics

# Refused uploads discarded at once; each holds at most uvicorn's 64 KiB buffer plus one 256 KiB socket read, so these
# stay under 100 MiB however many clients a burst brings. Beyond them a refused upload is answered and closed at once.
_MAX_DISCARDING = 256

# Request ids are echoed into logs and headers: accept only a plain token, else make one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access_log = logging.getLogger("wildvision.access")


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
