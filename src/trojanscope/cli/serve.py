"""``trojanscope serve``: the input guard in front of a model, as an HTTP service."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from ._common import ArchOpt, DataDirOpt, DataOpt, ModuleOpt, NormalizeOpt, SeedOpt, console
from .inputs import DEFAULT_METHODS, parse_params


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_token(path: Path) -> str:
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read --token-file {path}: {e}") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise InputError(f"--token-file {path}: the token must be at least 16 characters with no "
                         f"spaces (e.g. `python -c 'import secrets; print(secrets.token_urlsafe())'`)")
    return token


def serve_cmd(
    model_path: Annotated[Path, typer.Argument(metavar="MODEL", help="model file (.safetensors, .pt2, "
                                               ".pt, .pth)")],
    data: DataOpt = "digits",
    data_dir: DataDirOpt = None,
    guard: Annotated[str, typer.Option("--guard", help="comma-separated input detectors: strip, kde, "
                                       "mutation, activation_space, lid, uncertainty, squeeze")] = DEFAULT_METHODS,
    fpr: Annotated[float, typer.Option("--fpr", help="target false-positive rate of the whole guard "
                                       "on clean inputs (split over the detectors)")] = 0.05,
    n_clean: Annotated[int, typer.Option("--n-clean", help="clean reference images per class, from "
                                         "the dataset's training split")] = 200,
    param: Annotated[list[str] | None, typer.Option("--param", help="METHOD.KEY=VALUE detector "
                                                    "parameter (repeatable)")] = None,
    host: Annotated[str, typer.Option("--host", help="address to bind; anything but loopback "
                                      "needs --token-file")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port (0 = any free port)")] = 8080,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="file holding the bearer "
                                                    "token every endpoint but health requires")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", help="images per request and per forward "
                                           "pass")] = 64,
    max_body: Annotated[int, typer.Option("--max-body", help="bytes per request body")] = 16 << 20,
    max_queue: Annotated[int, typer.Option("--max-queue", help="requests waiting for the model; "
                                           "more are answered 429")] = 64,
    batch_wait_ms: Annotated[float, typer.Option("--batch-wait-ms", help="how long a forward pass "
                                                 "waits for more requests to batch")] = 5.0,
    forward_timeout: Annotated[float, typer.Option("--forward-timeout", help="seconds one forward "
                                                   "pass may take; then 503 and a fresh worker")] = 30.0,
    startup_timeout: Annotated[float, typer.Option("--startup-timeout", help="seconds to load the "
                                                   "model and fit the guard")] = 600.0,
    max_memory: Annotated[float, typer.Option("--max-memory", help="GiB of address space for the "
                                              "model worker (0 = no limit)")] = 8.0,
    module: ModuleOpt = None,
    arch: ArchOpt = None,
    normalize: NormalizeOpt = None,
    seed: SeedOpt = 0,
) -> None:
    """Serve MODEL behind input detectors: POST /v1/predict, GET /v1/health, GET /metrics."""
    import uvicorn

    from .._registry import names as registry_names
    from ..serve import GuardedService, ServeSettings, Worker, WorkerConfig, create_app

    methods = registry_names("input_detector", guard, what="--guard")
    if not model_path.is_file():
        raise InputError(f"no such model file: {model_path}")
    for name, v, lo in (("--max-batch", max_batch, 1), ("--max-body", max_body, 1024),
                        ("--max-queue", max_queue, 1)):
        if v < lo:
            raise InputError(f"{name} must be at least {lo}, got {v}")
    if not 0 < fpr < 1:
        raise InputError(f"--fpr must be in (0, 1), got {fpr}")
    if forward_timeout <= 0 or startup_timeout <= 0 or max_memory < 0 or batch_wait_ms < 0:
        raise InputError("--forward-timeout and --startup-timeout must be positive, "
                         "--max-memory and --batch-wait-ms not negative")
    token = _read_token(token_file) if token_file is not None else None
    if token is None and not _is_loopback(host):
        raise InputError(f"refusing to serve on {host} without --token-file: without a token only "
                         f"a loopback address (127.0.0.1, ::1, localhost) may be bound")
    cfg = WorkerConfig(model=str(model_path.resolve()), data=data,
                       data_dir=str(data_dir) if data_dir else None,
                       detectors=parse_params(param, methods), fpr=fpr, split_fpr=True,
                       n_clean=n_clean, seed=seed, normalize=normalize, module=module, arch=arch,
                       max_memory=int(max_memory * (1 << 30)))
    if data_dir is None:
        import os

        cfg.data_dir = os.environ.get("TROJANSCOPE_DATA")  # the worker's environment is cleaned
    settings = ServeSettings(max_batch=max_batch, max_body=max_body, max_queue=max_queue,
                             batch_wait=batch_wait_ms / 1000, token=token)
    try:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections queue up while the guard is being fitted
    except OSError as e:
        raise InputError(f"cannot bind {host}:{port}: {e.strerror or e}") from None
    bound = sock.getsockname()[1]

    server: uvicorn.Server | None = None

    def fatal(msg: str) -> None:  # reported once, as the command's error line, after shutdown
        if server is not None:
            server.should_exit = True

    service = GuardedService(Worker(cfg, startup_timeout=startup_timeout,
                                    forward_timeout=forward_timeout), settings, on_fatal=fatal)
    config = uvicorn.Config(create_app(service), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=max(forward_timeout * 2, 30), lifespan="on")
    server = uvicorn.Server(config)
    shown = f"[{host}]" if fam == socket.AF_INET6 else host
    console.print(f"serving http://{shown}:{bound} (guard: {', '.join(methods)}; fitting on "
                  f"{data} ...; GET /v1/health says when ready)", markup=False, highlight=False)
    import signal

    # uvicorn drains the requests in flight on SIGTERM/SIGINT, which may take longer than the CLI's
    # exit watchdog allows: detach the watchdog (it waits on the signal wakeup fd)
    signal.set_wakeup_fd(-1)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the SIGTERM/SIGINT it turned into a graceful shutdown once every
        # request in flight has been answered: that is a normal stop, not an interruption
        if not server.should_exit:
            raise
    if service.fatal:
        raise InputError(service.fatal)
    console.print("stopped", markup=False)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
