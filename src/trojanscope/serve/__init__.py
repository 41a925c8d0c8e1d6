"""The guarded inference service (``trojanscope serve``): the input guard of Jin et al. in
front of a model, as an HTTP server. The model runs in a child process with time and memory
limits (:mod:`.worker`); the ASGI app (:mod:`.app`) batches requests and enforces limits."""

from .app import GuardedService, ServeSettings, create_app
from .decode import BadRequest, Limits, decode
from .worker import Worker, WorkerConfig, WorkerError, WorkerTimeout

__all__ = ["BadRequest", "GuardedService", "Limits", "ServeSettings", "Worker", "WorkerConfig",
           "WorkerError", "WorkerTimeout", "create_app", "decode"]
