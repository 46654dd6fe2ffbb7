"""ulora-remote: LoRA training under the Unified-LoRA controller, on Tinker or locally.

``import ulora_remote`` needs neither torch nor tinker; the backends live in
``ulora_remote.backends`` and import their heavy dependencies only when used.
"""

from ulora_remote.backend import (
    AdamParams,
    Completed,
    Datum,
    Example,
    ForwardBackwardResult,
    Future,
    OptimStepResult,
    TrainingBackend,
)
from ulora_remote.controller import (
    MODE_NAMES,
    PRESETS,
    ControllerConfig,
    Decision,
    UnifiedController,
)
from ulora_remote.errors import (
    BackendError,
    CheckpointError,
    ConfigurationError,
    InputError,
    MissingExtraError,
    RemoteError,
    RemoteTimeoutError,
    StateLostError,
    UloraError,
)

__version__ = "0.1.0"

__all__ = [
    "MODE_NAMES",
    "PRESETS",
    "AdamParams",
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
    "MissingExtraError",
    "OptimStepResult",
    "RemoteError",
    "RemoteTimeoutError",
    "StateLostError",
    "TrainingBackend",
    "UloraError",
    "UnifiedController",
    "__version__",
]
