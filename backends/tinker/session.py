"""Opening a Tinker session safely: key checks, the offered models, the SDK import.

Everything here runs before any training step, so that a bad key, an unknown base model or a
missing extra fails at once with a message that names the fix and never shows the key.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import urllib.parse
import urllib.request
import warnings
from typing import Any

from ulora_remote.errors import (
    ConfigurationError,
    RemoteError,
    RemoteTimeoutError,
)
from ulora_remote.extras import import_extra

from .futures import call_with_deadline, map_sdk_error, scrub

__all__ = [
    "check_base_model",
    "import_tinker",
    "probe_service",
    "resolve_api_key",
    "resolve_base_url",
    "rest_client",
]

logger = logging.getLogger(__name__)

SUPPORTED_PREFIX = "0.38."  # keep in step with pyproject: tinker>=0.38,<0.39


def import_tinker() -> Any:
    """Import the SDK, or raise ``MissingExtraError("tinker", "tinker")``."""
    tinker = import_extra("tinker", "tinker")
    version = str(getattr(tinker, "__version__", "unknown"))
    if not version.startswith(SUPPORTED_PREFIX):
        logger.warning(
            "tinker %s is outside the supported range >=0.38,<0.39 (pyproject's 'tinker' "
            "extra); install it with: pip install 'ulora-remote[tinker]'",
            version,
        )
    return tinker


def resolve_api_key(api_key: str | None) -> str:
    """The key to use: ``api_key``, else ``TINKER_API_KEY``.

    Raises:
        ConfigurationError: no key, or one without the ``tml-`` prefix (the key is never shown).
    """
    key = api_key if api_key is not None else os.environ.get("TINKER_API_KEY")
    if not key:
        raise ConfigurationError(
            "no Tinker API key: set TINKER_API_KEY (or pass api_key=...); create a key in the "
            "Tinker console"
        )
    key = key.strip()
    if not key.startswith("tml-"):
        raise ConfigurationError(
            f"the Tinker API key is malformed: it must start with 'tml-' (the given value has "
            f"{len(key)} characters and is not shown); check TINKER_API_KEY"
        )
    return key


def resolve_base_url(base_url: str | None) -> str:
    """The URL the SDK will use: ``base_url``, else ``TINKER_BASE_URL``, else its default."""
    from tinker.lib.base_url import resolve_base_url as sdk_resolve_base_url

    return sdk_resolve_base_url(base_url)


def probe_service(base_url: str, timeout_s: float) -> None:
    """Fail at once when the service's port refuses connections (a local server not started).

    Only a literal IP address or ``localhost`` is probed, without a proxy in the way: there a
    refused TCP connection is certain and immediate, where the SDK would retry it for minutes.
    For a host name the SDK's own first contact decides (within ``connect_timeout_s``).

    Raises:
        RemoteError: the connection was refused or the address is unreachable; the message
            names the address (never a key or a URL's user part) and the fix.
    """
    url = urllib.parse.urlsplit(base_url)
    host = url.hostname or ""
    if not _probed_host(host) or _proxied(url.scheme, host):
        return
    port = url.port or (443 if url.scheme == "https" else 80)
    address = f"{url.scheme}://{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=min(timeout_s, 5.0)):
            return
    except TimeoutError:
        return  # slow rather than closed: the first contact's deadline applies
    except OSError as exc:
        raise RemoteError(
            f"nothing accepts connections at {address} ({exc.strerror or exc}): start the "
            "Tinker-compatible server there (for a local one, `ulora serve`), or fix "
            "backend.base_url / TINKER_BASE_URL"
        ) from None


def _probed_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _proxied(scheme: str, host: str) -> bool:
    proxies = urllib.request.getproxies()
    return bool(proxies.get(scheme) or proxies.get("all")) and not urllib.request.proxy_bypass(
        host
    )


def rest_client(service: Any) -> Any:
    """A ``RestClient`` over ``service``'s own connections.

    ``tinker.RestClient(base_url, api_key)`` shares one process-wide holder per (URL, key) and
    builds it under a process-wide lock, retrying an unreachable service for about 5 minutes;
    every other ``RestClient`` waits on that lock meanwhile. ``ServiceClient.create_rest_client``
    (deprecated in 0.38, still public in the supported range) uses a holder owned by this
    service alone, closed with it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return service.create_rest_client()


def check_base_model(service: Any, base_model: str, *, api_key: str,
                     timeout_s: float) -> int | None:
    """Fail unless the service offers ``base_model`` for training; return its
    ``max_context_length`` (None when the service does not say).

    Uses ``get_server_capabilities`` (no session is opened). A service that does not implement
    the endpoint (HTTP 404) is not checked: model creation then reports the problem.

    Raises:
        ConfigurationError: the model is not offered (the message lists what is), or the key
            was refused.
        RemoteError: the service could not be asked.
        RemoteTimeoutError: no answer within ``timeout_s`` (e.g. the service is unreachable).
    """

    def ask() -> Any:
        return rest_client(service).get_server_capabilities().result(timeout=timeout_s)

    try:
        capabilities = call_with_deadline(ask, timeout_s, "get_server_capabilities")
    except RemoteTimeoutError:
        raise
    except Exception as exc:  # noqa: BLE001 - translated below
        if getattr(exc, "status_code", None) == 404:
            logger.warning("the service does not list its models; %r is not checked", base_model)
            return None
        error = map_sdk_error(exc, "get_server_capabilities", training=False, secret=api_key)
        raise error from (exc if scrub(str(exc), api_key) == str(exc) else None)
    offered = sorted(
        m.model_name
        for m in capabilities.supported_models
        if m.model_name and m.trainable is not False
    )
    if base_model not in offered:
        raise ConfigurationError(
            f"base model {base_model!r} is not offered for training by this Tinker service; "
            f"offered: {', '.join(offered) or '(none)'}"
        )
    limits = [m.max_context_length for m in capabilities.supported_models
              if m.model_name == base_model and isinstance(m.max_context_length, int)]
    return limits[0] if limits else None
