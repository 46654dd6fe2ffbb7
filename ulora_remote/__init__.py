"""ulora-remote: LoRA training under the Unified-LoRA controller, on Tinker or locally.

``import ulora_remote`` needs neither torch nor tinker; the backends live in
``ulora_remote.backends`` and import their heavy dependencies only when used.
"""

from ulora_remote.backend import (
    AdamParams,
    AdapterBackend,
    Completed,
    Datum,
    Example,
    ForwardBackwardResult,
    Future,
    Message,
    OptimStepResult,
    TrainingBackend,
)
from ulora_remote.control.config import PRESETS, ControllerConfig
from ulora_remote.control.controller import MODE_NAMES, UnifiedController
from ulora_remote.control.policy import Decision
from ulora_remote.errors import (
    BackendError,
    CheckpointError,
    ConfigurationError,
    InputError,
    MissingExtraError,
    RemoteError,
    RemoteTimeoutError,
    RunDirError,
    StateLostError,
    StorageError,
    UloraError,
)

__version__ = "0.1.0"

# The run API pulls in pandas and the scenario schema; load it on first use so that
# `import ulora_remote` stays light.
_LAZY = {
    "RunResult": "ulora_remote.run.api",
    "load_run": "ulora_remote.run.api",
    "resume_run": "ulora_remote.run.api",
    "run_scenario": "ulora_remote.run.api",
    "compare_scenario": "ulora_remote.study.compare",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ulora_remote' has no attribute {name!r}")

__all__ = [
    "MODE_NAMES",
    "PRESETS",
    "AdamParams",
    "AdapterBackend",
    "BackendError",
    "CheckpointError",
    "Completed",
    "ConfigurationError",
    "ControllerConfig",
    "Datum",
    "Decision",
    "Example",
    "ForwardBackwardResult",
    "Future",
    "InputError",
    "Message",
    "MissingExtraError",
    "OptimStepResult",
    "RemoteError",
    "RemoteTimeoutError",
    "RunDirError",
    "RunResult",
    "StateLostError",
    "StorageError",
    "TrainingBackend",
    "UloraError",
    "UnifiedController",
    "__version__",
    "compare_scenario",
    "load_run",
    "resume_run",
    "run_scenario",
]
