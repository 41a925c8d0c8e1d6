"""The guarded inference service: an ASGI app (Starlette) in front of a :class:`Worker`.

Concurrent requests are micro-batched into one forward pass (waiting at most ``batch_wait``
seconds for company), through a bounded queue that answers 429 when full. One batch runs at a
time in the worker process; a forward past its time limit answers 503 and the worker is
restarted (re-fitting the guard), while the server keeps answering.
"""

from __future__ import annotations

import asyncio
import bisect
import hmac
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .decode import BadRequest, Limits, decode
from .worker import Worker, WorkerError, WorkerTimeout

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class ServeSettings:
    """Limits and behaviour of the service (the CLI options of ``trojanscope serve``)."""

    max_batch: int = 64          # images per request and per forward pass
    max_body: int = 16 << 20     # bytes per request body
    max_queue: int = 64          # requests waiting for the model; more answer 429
    batch_wait: float = 0.005    # seconds a batch waits for more requests
    max_pixels: int = 4096 * 4096
    token: str | None = None     # Bearer token required on every endpoint but health


@dataclass
class _Pending:
    x: np.ndarray
    future: asyncio.Future[list[dict[str, Any]]]


@dataclass
class _Metrics:
    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    inputs: int = 0
    flagged: int = 0
    flagged_by: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    restarts: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class GuardedService:
    """State of one running service: the worker, the queue, the batcher and the metrics."""

    def __init__(self, worker: Worker, settings: ServeSettings, *,
                 on_fatal: Callable[[str], None] | None = None) -> None:
        self.worker = worker
        self.settings = settings
        self.on_fatal = on_fatal
        self.metrics = _Metrics()
        self.ready = False
        self.fatal: str | None = None
        self.limits: Limits | None = None
        self._queue: asyncio.Queue[_Pending] | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trojanscope-model")
        self._starting = threading.Lock()

    # ---- worker life cycle (runs in a thread: start-up fits the guard, which takes a while)
    def _start_worker(self) -> None:
        with self._starting:
            self.ready = False
            try:
                info = self.worker.start()
            except WorkerError as e:
                self.fatal = str(e)
                if self.on_fatal:
                    self.on_fatal(self.fatal)
                return
            self.limits = Limits(tuple(info["in_shape"]), self.settings.max_batch,  # type: ignore[arg-type]
                                 self.settings.max_pixels)
            self.ready = True

    # ---- the batcher
    async def _run_batches(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            batch, n = [first], len(first.x)
            deadline = loop.time() + self.settings.batch_wait
            while n < self.settings.max_batch:
                try:
                    nxt = self._queue.get_nowait() if self._queue.qsize() else await asyncio.wait_for(
                        self._queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                if n + len(nxt.x) > self.settings.max_batch:
                    carry = nxt  # starts the next batch
                    break
                batch.append(nxt)
                n += len(nxt.x)
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            x = np.concatenate([p.x for p in live])
            try:
                results = await loop.run_in_executor(self._pool, self.worker.predict, x)
            except WorkerTimeout as e:
                self._fail(live, 503, str(e) + "; the worker is restarting")
                self.metrics.restarts += 1
                threading.Thread(target=self._start_worker, daemon=True).start()
                continue
            except WorkerError as e:
                self._fail(live, 503, str(e))
                if not self.worker.alive:
                    self.metrics.restarts += 1
                    threading.Thread(target=self._start_worker, daemon=True).start()
                continue
            self.metrics.batches += 1
            i = 0
            for p in live:
                k = len(p.x)
                if not p.future.done():
                    p.future.set_result(results[i:i + k])
                i += k

    def _fail(self, pending: list[_Pending], status: int, message: str) -> None:
        self.ready = False if status == 503 and not self.worker.alive else self.ready
        for p in pending:
            if not p.future.done():
                p.future.set_exception(BadRequest(status, message))

    # ---- HTTP
    def _authorised(self, request: Request) -> bool:
        if self.settings.token is None:
            return True
        given = request.headers.get("authorization", "")
        want = "Bearer " + self.settings.token
        return hmac.compare_digest(given.encode(), want.encode())

    def _answer(self, request: Request, status: int, body: dict[str, Any], t0: float) -> Response:
        self.metrics.requests[(request.url.path, status)] += 1
        self.metrics.observe(time.perf_counter() - t0)
        return JSONResponse(body, status_code=status,
                            headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)

    async def predict(self, request: Request) -> Response:
        t0 = time.perf_counter()
        if not self._authorised(request):
            return self._answer(request, 401, {"error": "missing or wrong bearer token"}, t0)
        if not self.ready or self.limits is None or self._queue is None:
            return self._answer(request, 503, {"error": "the guard is not ready yet"}, t0)
        try:
            body = await self._read_body(request)
            x = decode(body, request.headers.get("content-type", ""), self.limits)
            if self._queue.full():
                raise BadRequest(429, "the server is busy (queue full); retry later")
            fut: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
            self._queue.put_nowait(_Pending(x, fut))
            results = await fut
        except BadRequest as e:
            return self._answer(request, e.status, {"error": e.message}, t0)
        self.metrics.inputs += len(results)
        for r in results:
            self.metrics.flagged += bool(r["flagged"])
        for name, thr in self.worker.info.get("guard", {}).items():
            self.metrics.flagged_by[name] += sum(r["scores"][name] > thr for r in results)
        return self._answer(request, 200, {"results": results, "model": self.worker.info.get("model"),
                                           "guard": self.worker.info.get("guard", {})}, t0)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise BadRequest(413, f"the body has {int(declared)} bytes; at most {limit}")
            except ValueError:
                raise BadRequest(400, "malformed Content-Length") from None
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise BadRequest(413, f"the body is larger than {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def health(self, request: Request) -> Response:
        if self.fatal:
            return JSONResponse({"status": "failed", "error": self.fatal}, status_code=503)
        if not self.ready:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ready", "model": self.worker.info.get("model"),
                             "guard": self.worker.info.get("guard", {}),
                             "in_shape": self.worker.info.get("in_shape")})

    async def metrics_text(self, request: Request) -> Response:
        t0 = time.perf_counter()
        if not self._authorised(request):
            return self._answer(request, 401, {"error": "missing or wrong bearer token"}, t0)
        m = self.metrics
        lines = ["# HELP trojanscope_requests_total HTTP requests by path and status.",
                 "# TYPE trojanscope_requests_total counter"]
        lines += [f'trojanscope_requests_total{{path="{p}",code="{c}"}} {v}'
                  for (p, c), v in sorted(m.requests.items())]
        lines += ["# HELP trojanscope_inputs_total Images answered.",
                  "# TYPE trojanscope_inputs_total counter", f"trojanscope_inputs_total {m.inputs}",
                  "# HELP trojanscope_flagged_total Images flagged by at least one detector.",
                  "# TYPE trojanscope_flagged_total counter", f"trojanscope_flagged_total {m.flagged}",
                  "# HELP trojanscope_flagged_fraction Fraction of images flagged, per detector.",
                  "# TYPE trojanscope_flagged_fraction gauge"]
        for name in self.worker.info.get("guard", {}):
            frac = m.flagged_by[name] / m.inputs if m.inputs else 0.0
            lines.append(f'trojanscope_flagged_fraction{{detector="{name}"}} {frac:.6g}')
        lines += ["# HELP trojanscope_request_seconds Request latency.",
                  "# TYPE trojanscope_request_seconds histogram"]
        acc = 0
        for b, c in zip((*LATENCY_BUCKETS, float("inf")), m.latency_counts, strict=True):
            acc += c
            le = "+Inf" if b == float("inf") else f"{b:g}"
            lines.append(f'trojanscope_request_seconds_bucket{{le="{le}"}} {acc}')
        lines += [f"trojanscope_request_seconds_sum {m.latency_sum:.6f}",
                  f"trojanscope_request_seconds_count {acc}",
                  "# HELP trojanscope_queue_depth Requests waiting for the model.",
                  "# TYPE trojanscope_queue_depth gauge",
                  f"trojanscope_queue_depth {self._queue.qsize() if self._queue else 0}",
                  "# HELP trojanscope_worker_restarts_total Model workers restarted after a failure.",
                  "# TYPE trojanscope_worker_restarts_total counter",
                  f"trojanscope_worker_restarts_total {m.restarts}",
                  "# TYPE trojanscope_ready gauge", f"trojanscope_ready {int(self.ready)}"]
        self.metrics.requests[(request.url.path, 200)] += 1
        return PlainTextResponse("\n".join(lines) + "\n",
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---- start-up and graceful shutdown
    @asynccontextmanager
    async def lifespan(self, app: Starlette):  # type: ignore[no-untyped-def]
        self._queue = asyncio.Queue(maxsize=self.settings.max_queue)
        self._batcher = asyncio.create_task(self._run_batches())
        threading.Thread(target=self._start_worker, daemon=True).start()
        try:
            yield
        finally:
            # the server has stopped taking connections and finished the open ones: every
            # accepted request has been answered, so the batcher can go
            self._batcher.cancel()
            try:
                await self._batcher
            except asyncio.CancelledError:
                pass
            await asyncio.get_running_loop().run_in_executor(self._pool, self.worker.close)
            self._pool.shutdown(wait=False)


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"no such endpoint: {request.method} {request.url.path}"},
                        status_code=404)


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"},
                        status_code=405)


async def _server_error(request: Request, exc: Exception) -> Response:
    # a bug of ours must still not leak a traceback to the client
    return JSONResponse({"error": "internal error"}, status_code=500)


def create_app(service: GuardedService) -> Starlette:
    """The ASGI application of ``service``."""
    return Starlette(
        routes=[Route("/v1/predict", service.predict, methods=["POST"]),
                Route("/v1/health", service.health, methods=["GET"]),
                Route("/metrics", service.metrics_text, methods=["GET"])],
        exception_handlers={404: _not_found, 405: _not_allowed, 500: _server_error},
        lifespan=service.lifespan)
