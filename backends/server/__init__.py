"""``ulora serve``: a Tinker-compatible HTTP server on 127.0.0.1, backed by local engines.

The unmodified ``tinker`` SDK trains, saves, restores and samples against it offline::

    from ulora_remote.backends.server import ServerConfig, serve_in_thread

    server = serve_in_thread(ServerConfig(port=0, checkpoint_dir=tmp_path))
    client = tinker.ServiceClient(base_url=server.base_url, api_key="tml-local")
    ...
    server.counters.get(model_id).optim_step   # executed optimizer steps of one model
    server.stop()

Needs the 'server' extra (tinker, starlette, uvicorn, zstandard) and, for the default engine,
the 'local' extra. Importing this package imports tinker and starlette (and tinker imports
torch when it is installed); `import ulora_remote` alone imports none of them.
"""

from ulora_remote.extras import ensure_installed as _ensure_installed

_ensure_installed("server", "tinker", "starlette", "uvicorn", "zstandard")

from .config import FAULT_KINDS, FaultConfig, ServerConfig  # noqa: E402
from .counters import Counters, ModelCounts  # noqa: E402
from .engine import Engine, EngineSpec, local_engine_factory  # noqa: E402
from .runner import RunningServer, ready_url, serve_forever, serve_in_thread  # noqa: E402

__all__ = [
    "FAULT_KINDS",
    "Counters",
    "Engine",
    "EngineSpec",
    "FaultConfig",
    "ModelCounts",
    "RunningServer",
    "ServerConfig",
    "local_engine_factory",
    "ready_url",
    "serve_forever",
    "serve_in_thread",
]
