"""Admission: `Limits`, and the gate that lets `max_concurrency` requests in, queues `max_queue` more and refuses
the rest at once; each admitted request's slot reads its body and scores within its deadline."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import AsyncIterator, Awaitable, Callable, TypeVar

from fastapi import Request

from wildvision.service.bodies import _capped
from wildvision.service.metrics import _Metrics
from wildvision.service.schemas import _error

T = TypeVar("T")

DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # 20 MiB: above any phone JPEG (12 MP at high quality is about 8 MiB)

DEFAULT_MAX_DISCARD = 64 * 1024 * 1024  # 64 MiB: three times the default max_bytes

# A full queue drains in about (max_queue / photos per second); one second is the order of that for the defaults
# and keeps well-behaved clients from hammering a busy service.
_RETRY_AFTER_S = "1"


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
