"""Exceptions with messages meant for the user, not stack traces from deep inside torch."""


class TrojanscopeError(Exception):
    """Base class of every error trojanscope raises on purpose."""


class InputError(TrojanscopeError, ValueError):
    """Images, labels, parameters or a model's outputs are not what the call needs."""


class ModelFileError(TrojanscopeError):
    """A model file is missing, corrupt, truncated, untrusted (pickled code) or of unknown format."""


class DataNotFoundError(TrojanscopeError, FileNotFoundError):
    """A dataset file is not where it was expected; the message says where and how to get it."""
