"""Run code that touches an untrusted model in a child process with hard limits.

A TorchScript or ``.pt2`` graph runs the model author's operators: it can loop forever, allocate
terabytes or crash the interpreter. :func:`run_isolated` runs such work in a child process

- with a wall-clock limit (``timeout``): on expiry the child's process group gets SIGTERM, then
  SIGKILL after a short grace, and :class:`SandboxTimeout` is raised;
- with a memory limit (``max_memory`` bytes, ``resource.setrlimit``: ``RLIMIT_AS`` on CPU,
  ``RLIMIT_DATA`` where CUDA may be used, since the CUDA driver reserves huge address ranges)
  and no core files: hitting it raises :class:`SandboxMemoryError`;
- with a cleaned environment: only the variables Python, torch and trojanscope need are kept,
  and nothing whose name looks like a credential (see :func:`clean_environment`);
- in its own process group, killed with its parent (``PR_SET_PDEATHSIG``), so a stuck native
  call never keeps the command alive: the parent only waits on a pipe with a deadline and stays
  responsive to SIGINT/SIGTERM, which kill the child before they propagate.

Nothing is ever unpickled from the child. It sends newline-delimited JSON messages on a pipe:
its stdout/stderr writes (relayed to the parent's streams), progress dicts, and finally the
result (JSON types; tensors as safetensors bytes) or the error (type name and message), which
the parent re-raises as a trojanscope error, so the CLI prints one ``error:`` line.

The child is started by ``fork`` on Linux (about a millisecond; the arguments need no
serialisation). Fork is only safe while the parent has not run multi-threaded torch work yet
(GNU OpenMP's thread pool does not survive a fork): the CLI forks before any computation. Other
callers can pass ``start="spawn"``: a fresh interpreter imports ``fn`` by name and gets ``kwargs``
as JSON (paths, numbers, strings, lists, dicts).
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import TrojanscopeError

GiB = 1 << 30
KILL_GRACE_S = 1.0  # SIGTERM -> SIGKILL of the child's process group
MAX_MESSAGE = 256 << 20  # one message from the child (a result, an output write) at most

# environment variables the child keeps (names, or prefixes ending in "_" / "*")
KEEP_ENV = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "LC_*", "TZ", "TMPDIR", "TEMP", "TMP",
    "TERM", "COLORTERM", "COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE",
    "PYTHONPATH", "PYTHONHOME", "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONUTF8", "PYTHONIOENCODING",
    "PYTHONDONTWRITEBYTECODE", "PYTHONNOUSERSITE", "PYTHONFAULTHANDLER", "VIRTUAL_ENV", "CONDA_PREFIX",
    "LD_LIBRARY_PATH", "OMP_*", "KMP_*", "MKL_*", "OPENBLAS_*", "GOMP_*", "ATEN_*", "TORCH_*",
    "PYTORCH_*", "CUDA_*", "NVIDIA_*", "CUBLAS_*", "CUDNN_*", "MPLBACKEND", "MPLCONFIGDIR",
    "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TROJANSCOPE_*",
)
# ... unless the name looks like a credential, whatever its prefix
SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|PRIVATE|API_?KEY|ACCESS_?KEY|"
                        r"AUTH|COOKIE|SESSION|(^|_)KEY($|_)|^AWS_|^AZURE_|^GCP_|^GOOGLE_", re.I)
# extra names the user wants passed through, comma-separated
KEEP_ENV_VAR = "TROJANSCOPE_SANDBOX_KEEP_ENV"


def _thread_ids() -> set[str] | None:
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return None


# threads of this process when the module was imported (the CLI imports it before any work). A
# native thread started since (not a Python thread) may belong to GNU OpenMP's pool, which would
# hang a forked child; Python's own threads simply do not exist in the child.
_BASELINE_THREADS = _thread_ids()


def _fork_is_safe() -> bool:
    now = _thread_ids()
    if not sys.platform.startswith("linux") or now is None or _BASELINE_THREADS is None:
        return False
    python_threads = {str(t.native_id) for t in threading.enumerate()}
    return not (now - _BASELINE_THREADS - python_threads)


class SandboxError(TrojanscopeError):
    """The isolated worker failed: it crashed, was killed, or its code raised an error."""


class SandboxTimeout(SandboxError):
    """The isolated worker ran past its wall-clock limit and was killed."""


class SandboxMemoryError(SandboxError):
    """The isolated worker hit its memory limit."""


def _keep(name: str, extra: set[str]) -> bool:
    if name in extra:
        return True
    if SECRET_ENV.search(name):
        return False
    return any(name == k or (k.endswith("*") and name.startswith(k[:-1])) for k in KEEP_ENV)


def clean_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the allow-listed variables of ``env`` (default ``os.environ``)
    without anything whose name looks like a credential (``*TOKEN*``, ``*SECRET*``, ``*PASSW*``,
    ``*KEY*``, ``AWS_*``, ...); names listed in ``$TROJANSCOPE_SANDBOX_KEEP_ENV`` always pass."""
    env = dict(os.environ if env is None else env)
    extra = {n.strip() for n in env.get(KEEP_ENV_VAR, "").split(",") if n.strip()}
    return {k: v for k, v in env.items() if _keep(k, extra)}


def default_max_memory() -> int:
    """Three quarters of the machine's physical memory (at least 2 GiB), in bytes."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * GiB
    return max(2 * GiB, int(total * 0.75))


def parse_memory(text: str | int | float | None) -> int:
    """``"8G"``, ``"8GiB"``, ``"512M"``, ``"1.5"`` (GiB), ``"0"`` (no limit), ``"auto"`` -> bytes."""
    from .errors import InputError

    if text is None or str(text).strip().lower() in ("", "auto"):
        return default_max_memory()
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": GiB, "T": 1 << 40}.get(s[-1:], None)
    try:
        value = float(s[:-1] if mult else s) * (mult or GiB)
    except ValueError:
        value = -1.0
    if not value >= 0 or value != value or value > (1 << 60):
        raise InputError(f"--max-memory must look like 8G, 512M or 0 (no limit); got {text!r}")
    if 0 < value < 256 << 20:
        raise InputError(f"--max-memory {text} is too small: torch alone needs several hundred MiB")
    return int(value)


def describe_bytes(n: int) -> str:
    return f"{n / GiB:.3g} GiB" if n >= GiB else f"{n / (1 << 20):.0f} MiB"


# ---------------------------------------------------------------- wire format (JSON, no pickles)

def encode(obj: Any) -> Any:
    """JSON types pass; tensors become ``{"__tensor__": base64 safetensors}``; paths strings."""
    import torch

    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        from safetensors.torch import save

        return {"__tensor__": base64.b64encode(save({"t": obj.detach().cpu().contiguous()})).decode()}
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and hasattr(obj, "dtype"):  # numpy scalars
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"the isolated worker can only return JSON data and tensors, not {type(obj).__name__}")


def decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            from safetensors.torch import load

            return load(base64.b64decode(obj["__tensor__"]))["t"]
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


# ---------------------------------------------------------------- the child's side

class _Channel:
    """The child's end of the pipe: one JSON object per line, from any thread."""

    def __init__(self, fd: int):
        self.fd = fd
        self.lock = threading.Lock()

    def send(self, msg: dict) -> None:
        data = (json.dumps(msg) + "\n").encode()
        with self.lock:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]


class _RelayStream(io.TextIOBase):
    """sys.stdout / sys.stderr of the child: every write goes to the parent as a message."""

    def __init__(self, chan: _Channel, name: str, tty: bool, encoding: str = "utf-8"):
        self._chan, self._name, self._tty, self._encoding = chan, name, tty, encoding

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._tty

    def write(self, s: str) -> int:
        if s:
            self._chan.send({self._name: s})
        return len(s)


def _scrub_env_block(dropped: list[str]) -> None:
    """Zero the dropped variables in the process's original environment block, which
    /proc/self/environ shows even after unsetenv (Linux; best effort)."""
    if not dropped or not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(Exception):
        stat = Path("/proc/self/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        start, end = int(fields[47]), int(fields[48])  # env_start, env_end (fields 50, 51)
        if not 0 < start < end or end - start > 64 << 20:
            return
        block = ctypes.string_at(start, end - start)
        prefixes = tuple(f"{n}=".encode() for n in dropped)
        pos = 0
        for entry in block.split(b"\0"):
            if entry.startswith(prefixes):
                ctypes.memset(start + pos, 0, len(entry))
            pos += len(entry) + 1


def _apply_limits(max_memory: int, limit_kind: str) -> None:
    import resource

    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if max_memory > 0:
        which = resource.RLIMIT_AS if limit_kind == "as" else resource.RLIMIT_DATA
        soft, hard = resource.getrlimit(which)
        cap = max_memory if hard == resource.RLIM_INFINITY else min(max_memory, hard)
        resource.setrlimit(which, (cap, hard))


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(137)


def _is_memory_error(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, (RuntimeError, OSError)) and any(
        s in text for s in ("can't allocate memory", "cannot allocate memory", "not enough memory",
                            "out of memory", "std::bad_alloc", "failed to allocate"))


def _caused_by_memory(e: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        if _is_memory_error(cur):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


def _error_message(e: BaseException) -> dict:
    if _caused_by_memory(e):  # also when a loader wrapped it ("the model fails on a batch ...")
        return {"error": "SandboxMemoryError", "message": ""}
    if isinstance(e, TrojanscopeError):
        return {"error": type(e).__name__, "message": str(e)}
    if type(e).__name__ == "Exit" and isinstance(getattr(e, "exit_code", None), int):
        return {"exit": e.exit_code}  # typer.Exit / click.exceptions.Exit: a verdict's status
    try:
        import click

        if isinstance(e, click.ClickException):
            return {"error": "ClickException", "message": e.format_message()}
    except ImportError:
        pass
    if isinstance(e, SystemExit):
        code = e.code if isinstance(e.code, int) or e.code is None else 1
        return {"exit": code or 0}
    # a model's own error (TorchScript interpreter, shape mismatch) or a bug: its last line
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    detail = lines[-1] if lines else ""
    if len(detail) > 400:
        detail = detail[:400] + " ..."
    return {"error": "SandboxError", "message": f"{type(e).__name__}: {detail}".rstrip(": ")}


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _child_main(chan_fd: int, fn: Callable, kwargs: dict, *, max_memory: int, limit_kind: str,
                env: dict[str, str], tty: tuple[bool, bool], want_progress: bool,
                parent: int) -> None:
    """Runs in the child, never returns."""
    code = 0
    try:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        _die_with_parent(parent)
        with contextlib.suppress(ValueError):  # the parent's exit watchdog must not hear our signals
            signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may still write
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM unwinds
        signal.signal(signal.SIGTERM, _raise_interrupt)
        dropped = [k for k in os.environ if k not in env]
        for k in dropped:
            os.environ.pop(k, None)
        for k, v in env.items():
            if os.environ.get(k) != v:
                os.environ[k] = v
        _scrub_env_block(dropped)
        chan = _Channel(chan_fd)
        enc = getattr(sys.stdout, "encoding", None) or "utf-8"
        sys.stdout = _RelayStream(chan, "out", tty[0], enc)
        sys.stderr = _RelayStream(chan, "err", tty[1], enc)
        _apply_limits(max_memory, limit_kind)
        try:
            if want_progress:
                kwargs = {**kwargs, "progress": lambda d: chan.send({"progress": encode(d)})}
            result = fn(**kwargs)
            msg: dict = {"result": encode(result)}
        except KeyboardInterrupt:
            code = 130
            return
        except BaseException as e:  # noqa: BLE001 - every failure goes back as data
            msg = _error_message(e)
            if "exit" not in msg and os.environ.get("TROJANSCOPE_DEBUG"):
                sys.stderr.write("".join(traceback.format_exception(e)))
        try:
            chan.send(msg)
        except MemoryError:
            chan.send({"error": "SandboxMemoryError", "message": ""})
    except BaseException:  # noqa: BLE001
        code = 70
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _spawn_entry() -> None:
    """``python -c 'from trojanscope.sandbox import _spawn_entry; _spawn_entry()'``: read the
    job (JSON) from stdin, then run it like a forked child."""
    spec = json.loads(sys.stdin.read())
    try:
        # limits first, before torch is imported, so the import counts towards them too
        _apply_limits(spec["max_memory"], spec["limit_kind"])
        fn: Any = importlib.import_module(spec["module"])
        for part in spec["qualname"].split("."):
            fn = getattr(fn, part)
        fn = getattr(fn, "__sandbox_target__", fn)
        kwargs = _from_spec(spec["kwargs"])
    except BaseException as e:  # noqa: BLE001
        _Channel(spec["fd"]).send(_error_message(e))
        os._exit(0)
    _child_main(spec["fd"], fn, kwargs, max_memory=spec["max_memory"], limit_kind=spec["limit_kind"],
                env=dict(os.environ), tty=tuple(spec["tty"]), want_progress=spec["progress"],
                parent=os.getppid())


def _to_spec(obj: Any) -> Any:
    if isinstance(obj, Path):
        return {"__path__": str(obj)}
    if isinstance(obj, dict):
        return {"__dict__": {str(k): _to_spec(v) for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        return [_to_spec(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"start='spawn' passes arguments as JSON; {type(obj).__name__} cannot be passed")


def _from_spec(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__path__" in obj:
            return Path(obj["__path__"])
        return {k: _from_spec(v) for k, v in obj["__dict__"].items()}
    if isinstance(obj, list):
        return [_from_spec(v) for v in obj]
    return obj


# ---------------------------------------------------------------- the parent's side

def _kill_group(pid: int, grace: float) -> int:
    """SIGTERM the child's process group, SIGKILL after ``grace`` s; reap; return the wait status."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        end = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < end:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return 0
            if done:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)  # anything it started
                return status
            time.sleep(0.02)
    return 0


def _raise_error(msg: dict, max_memory: int) -> None:
    from . import errors

    name, text = msg.get("error"), msg.get("message", "")
    if name == "SandboxMemoryError":
        limit = f" of {describe_bytes(max_memory)} (--max-memory)" if max_memory else ""
        raise SandboxMemoryError(f"the model exceeded the memory limit{limit}" if max_memory else
                                 "the machine ran out of memory while running the model")
    if name == "ClickException":
        import click

        raise click.UsageError(text)
    cls = getattr(errors, str(name), None) or globals().get(str(name))
    if not (isinstance(cls, type) and issubclass(cls, TrojanscopeError)):
        cls = TrojanscopeError
    raise cls(text)


def run_isolated(fn: Callable[..., Any], kwargs: dict[str, Any] | None = None, *,
                 timeout: float | None = None, max_memory: int | None = None,
                 progress: Callable[[Any], None] | None = None, start: str = "auto",
                 limit_kind: str = "as", what: str = "the model") -> Any:
    """Call ``fn(**kwargs)`` in a child process; return its (JSON-able) result.

    Args:
        fn: a function; for ``start="spawn"`` one importable by module and qualified name.
        kwargs: its arguments (for spawn: JSON types and paths).
        timeout: wall-clock limit in seconds (None or 0: none).
        max_memory: memory limit in bytes (None: :func:`default_max_memory`; 0: none).
        progress: when given, ``fn`` gets a ``progress`` callback whose dicts reach this one.
        start: ``"fork"``, ``"spawn"`` or ``"auto"`` (``$TROJANSCOPE_SANDBOX_START``, else fork on
            Linux unless this process has started native threads since it imported this module,
            as torch's OpenMP pool does: those do not survive a fork).
        limit_kind: ``"as"`` (RLIMIT_AS, address space) or ``"data"`` (RLIMIT_DATA, for CUDA).
        what: how the error messages name the work (``"the model"``, ``"model.pt"``).

    Raises:
        SandboxTimeout, SandboxMemoryError, SandboxError (crash, a non-trojanscope exception),
        or the child's own TrojanscopeError subclass; KeyboardInterrupt after killing the child
        when the parent is interrupted. Output written by ``fn`` reaches this process's
        ``sys.stdout``/``sys.stderr``.
    """
    kwargs = dict(kwargs or {})
    max_memory = default_max_memory() if max_memory is None else int(max_memory)
    start = os.environ.get("TROJANSCOPE_SANDBOX_START", start) if start == "auto" else start
    if start == "auto":
        start = "fork" if _fork_is_safe() else "spawn"
    env = clean_environment()
    tty = (_isatty(sys.stdout), _isatty(sys.stderr))
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    rfd, wfd = os.pipe()
    parent = os.getpid()
    proc = None
    try:
        if start == "fork":
            pid = os.fork()
            if pid == 0:  # the child
                os.close(rfd)
                _child_main(wfd, fn, kwargs, max_memory=max_memory, limit_kind=limit_kind, env=env,
                            tty=tty, want_progress=progress is not None, parent=parent)
        elif start == "spawn":
            target = getattr(fn, "__sandbox_name__", None) or (fn.__module__, fn.__qualname__)
            spec = {"module": target[0], "qualname": target[1], "kwargs": _to_spec(kwargs),
                    "max_memory": max_memory, "limit_kind": limit_kind, "fd": wfd, "tty": tty,
                    "progress": progress is not None}
            proc = subprocess.Popen(
                [sys.executable, "-c", "from trojanscope.sandbox import _spawn_entry; _spawn_entry()"],
                stdin=subprocess.PIPE, env=env, pass_fds=(wfd,), start_new_session=True)
            pid = proc.pid
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it died at once: _wait says how
                proc.stdin.write(json.dumps(spec).encode())
                proc.stdin.close()
        else:
            raise ValueError(f"start must be fork, spawn or auto, not {start!r}")
    finally:
        os.close(wfd)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    try:
        return _wait(pid, rfd, timeout, max_memory, progress, what)
    finally:
        os.close(rfd)
        if proc is not None:
            proc.returncode = 0  # reaped by _wait; keeps Popen.__del__ quiet


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except Exception:  # noqa: BLE001
        return False


def _emit(stream: Any, text: str) -> None:
    with contextlib.suppress(Exception):
        stream.write(text)
        stream.flush()


def _wait(pid: int, rfd: int, timeout: float | None, max_memory: int,
          progress: Callable[[Any], None] | None, what: str) -> Any:
    deadline = time.monotonic() + timeout if timeout else None
    buf = bytearray()
    final: dict | None = None
    status = None
    try:
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([rfd], [], [], wait)
            if not ready:  # the deadline passed
                _kill_group(pid, KILL_GRACE_S)
                status = -1
                raise SandboxTimeout(f"{what} did not finish within {timeout:g} s (--timeout) "
                                     f"and was stopped")
            chunk = os.read(rfd, 1 << 20)
            if not chunk:
                break
            buf += chunk
            while (nl := buf.find(b"\n")) >= 0:
                line = bytes(buf[:nl])
                del buf[:nl + 1]
                try:
                    msg = json.loads(line)
                except ValueError:
                    msg = None
                if not isinstance(msg, dict):
                    _kill_group(pid, 0.0)
                    status = -1
                    raise SandboxError(f"the worker running {what} sent a malformed message")
                if "out" in msg:
                    _emit(sys.stdout, str(msg["out"]))
                elif "err" in msg:
                    _emit(sys.stderr, str(msg["err"]))
                elif "progress" in msg:
                    if progress is not None:
                        progress(decode(msg["progress"]))
                else:
                    final = msg
            if len(buf) > MAX_MESSAGE:
                _kill_group(pid, 0.0)
                status = -1
                raise SandboxError(f"the worker running {what} sent more than "
                                   f"{MAX_MESSAGE >> 20} MiB in one message")
        # EOF: the child closed its end (it exited, or died)
        remaining = None if deadline is None else max(0.1, deadline - time.monotonic() + KILL_GRACE_S)
        status = _reap(pid, remaining)
    except BaseException:
        if status is None:  # interrupted (SIGINT/SIGTERM), or a bad message: stop the child
            _kill_group(pid, KILL_GRACE_S)
        raise
    if final is not None and "result" in final:
        return decode(final["result"])
    if final is not None and "exit" in final:
        raise SystemExit(final["exit"])
    if final is not None and "error" in final:
        _raise_error(final, max_memory)
    # no final message: the child died
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGKILL:
            raise SandboxMemoryError(f"the worker running {what} was killed (SIGKILL), most likely "
                                     f"by the system's out-of-memory killer")
        hint = (f"; the memory limit of {describe_bytes(max_memory)} (--max-memory) may have been "
                f"hit inside native code") if max_memory and sig in (signal.SIGABRT, signal.SIGSEGV,
                                                                      signal.SIGBUS) else ""
        raise SandboxError(f"the worker running {what} crashed ({name}){hint}")
    raise SandboxError(f"the worker running {what} exited with status {os.WEXITSTATUS(status)} "
                       f"without a result")


def _reap(pid: int, timeout: float | None) -> int:
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return status
        if end is not None and time.monotonic() > end:
            return _kill_group(pid, KILL_GRACE_S)
        time.sleep(0.005)
