"""The model and its fitted guard live in a child process, so that a model file we do not trust
never runs inside the server: a forward that hangs or allocates without bound is killed (the
request answers 503) and the server goes on with a fresh worker.

Protocol: length-prefixed frames over the child's stdin/stdout. Parent -> child: the start-up
configuration (JSON), then per batch a JSON header and the raw float32 bytes of the images.
Child -> parent: JSON only, never a pickle (the child may be running hostile code).
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from ..sandbox import clean_environment  # the one allow-list, as for every isolated command

_LEN = struct.Struct(">Q")
MAX_FRAME = 1 << 30  # a reply larger than this is hostile or broken

class WorkerError(Exception):
    """The worker failed: it could not start, it crashed, or it answered with an error."""


class WorkerTimeout(WorkerError):
    """The worker did not answer within its time limit and was killed."""


def _write_frame(f: BinaryIO, data: bytes) -> None:
    f.write(_LEN.pack(len(data)))
    f.write(data)
    f.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    chunks: list[bytes] = []
    while n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise WorkerTimeout("timed out")
        b = os.read(fd, min(n, 1 << 20))
        if not b:
            raise EOFError
        chunks.append(b)
        n -= len(b)
    return b"".join(chunks)


def _read_frame(fd: int, deadline: float | None = None) -> bytes:
    (n,) = _LEN.unpack(_read_exact(fd, _LEN.size, deadline))
    if n > MAX_FRAME:
        raise WorkerError(f"the worker sent an oversized reply ({n} bytes)")
    return _read_exact(fd, n, deadline)


@dataclass
class WorkerConfig:
    """What the worker needs to build the guarded model (all plain data, sent as JSON)."""

    model: str
    data: str = "digits"
    data_dir: str | None = None
    detectors: dict[str, dict[str, Any]] = field(default_factory=dict)
    fpr: float = 0.05
    split_fpr: bool = True
    n_clean: int = 200
    seed: int = 0
    normalize: str | None = None
    module: str | None = None
    arch: str | None = None
    max_memory: int = 0  # bytes of address space; 0 = no limit
    threads: int = 1


class Worker:
    """One child process holding the model and the fitted guard; thread-compatible, not
    thread-safe: callers serialise :meth:`predict` (the server runs one batch at a time)."""

    def __init__(self, config: WorkerConfig, *, startup_timeout: float = 600.0,
                 forward_timeout: float = 30.0) -> None:
        self.config = config
        self.startup_timeout = startup_timeout
        self.forward_timeout = forward_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> dict[str, Any]:
        """Start the child, wait until the guard is fitted; returns its description (model name,
        input shape, classes, thresholds). Raises WorkerError with the child's message."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trojanscope.serve._child"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=clean_environment(), start_new_session=True)
        assert self.proc.stdin is not None
        try:
            _write_frame(self.proc.stdin, json.dumps(self.config.__dict__).encode())
            msg = self._reply(time.monotonic() + self.startup_timeout, "start-up")
        except BaseException:
            self.kill()
            raise
        self.info = msg
        return msg

    def _reply(self, deadline: float, what: str) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            raw = _read_frame(self.proc.stdout.fileno(), deadline)
        except WorkerTimeout:
            limit = self.startup_timeout if what == "start-up" else self.forward_timeout
            self.kill()
            raise WorkerTimeout(f"the model did not finish its {what} within {limit:g} s and was "
                                f"stopped") from None
        except (EOFError, OSError):
            code = self.proc.wait()
            self.proc = None
            why = f"signal {-code}" if code < 0 else f"status {code}"
            hint = " (out of memory?)" if code in (-signal.SIGKILL, -signal.SIGSEGV) else ""
            raise WorkerError(f"the model worker died during {what} ({why}){hint}") from None
        try:
            msg = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self.kill()
            raise WorkerError("the model worker sent a malformed reply") from None
        if not isinstance(msg, dict):
            self.kill()
            raise WorkerError("the model worker sent a malformed reply")
        if "error" in msg:
            raise WorkerError(str(msg["error"]))
        return msg

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def predict(self, x: np.ndarray) -> list[dict[str, Any]]:
        """Label, probabilities, flag and per-detector scores for every image of ``x``
        (float32 [N, C, H, W] in [0, 1])."""
        if not self.alive:
            raise WorkerError("the model worker is not running")
        assert self.proc is not None and self.proc.stdin is not None
        x = np.ascontiguousarray(x, dtype=np.float32)
        try:
            _write_frame(self.proc.stdin, json.dumps({"op": "predict", "shape": list(x.shape)}).encode())
            _write_frame(self.proc.stdin, x.tobytes())
        except (BrokenPipeError, OSError):
            self.kill()
            raise WorkerError("the model worker died") from None
        msg = self._reply(time.monotonic() + self.forward_timeout, "forward pass")
        results = msg.get("results")
        if not isinstance(results, list) or len(results) != len(x):
            self.kill()
            raise WorkerError("the model worker sent a malformed reply")
        return results

    def kill(self) -> None:
        """Stop the child (and anything it started) at once."""
        p, self.proc = self.proc, None
        if p is None:
            return
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        p.wait()
        for f in (p.stdin, p.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass

    def close(self) -> None:
        """Ask the child to stop; kill it if it does not within 5 s."""
        p = self.proc
        if p is None:
            return
        try:
            assert p.stdin is not None
            _write_frame(p.stdin, json.dumps({"op": "stop"}).encode())
            p.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()
