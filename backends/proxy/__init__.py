"""``ulora proxy``: the screening guard in front of any Tinker program (docs/proxy.md).

    from ulora_remote.backends.proxy import ProxyConfig, proxy_in_thread

    proxy = proxy_in_thread(ProxyConfig(upstream="http://127.0.0.1:8000", out=tmp_path))
    client = tinker.ServiceClient(base_url=proxy.base_url)   # nothing else changes
    ...
    proxy.stop()

Needs the 'server' extra (tinker, starlette, uvicorn, httpx). Importing this package imports
tinker and starlette; ``import ulora_remote`` alone imports neither.
"""

import importlib.util as _util

from ulora_remote.errors import MissingExtraError as _MissingExtraError

for _module in ("tinker", "starlette", "uvicorn", "httpx", "zstandard"):
    if _util.find_spec(_module) is None:
        raise _MissingExtraError("server", _module)

from .app import ProxyConfig  # noqa: E402
from .core import GuardCore, StepPlan, StepRecords, example_loss, judge_losses  # noqa: E402
from .runner import RunningProxy, proxy_forever, proxy_in_thread  # noqa: E402

__all__ = [
    "GuardCore",
    "ProxyConfig",
    "RunningProxy",
    "StepPlan",
    "StepRecords",
    "example_loss",
    "judge_losses",
    "proxy_forever",
    "proxy_in_thread",
]
