"""Optional heavy imports (transformers, peft, torch, tinker, matplotlib, ...), once, under a lock.

Every place that needs an optional extra imports it through this module, so that:

- the import and the lookup of the names happen under one process-wide lock. transformers
  resolves ``from transformers import AutoTokenizer`` lazily through its module's
  ``__getattr__``; several threads doing it at once (a sweep's runs starting together) made
  some of them fail with ``cannot import name 'AutoTokenizer'``. Python's own import lock
  covers the module, not that lazy lookup.
- ``MissingExtraError`` (with its pip command) is raised only when the distribution is really
  absent (``importlib.util.find_spec`` finds no module of that name). Any other ImportError
  (a broken install, a version clash, a race) propagates as it is, with its own message, so the
  user is never told to install what is already there.

Contract: the functions block while another thread imports (seconds the first time, nothing
afterwards) and never import anything outside the requested module and what it imports.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from typing import Any

from ulora_remote.errors import MissingExtraError

__all__ = ["ensure_installed", "import_extra", "import_names"]

# Reentrant: importing one extra may import another through this module (the local backend
# imports torch, transformers and peft in turn).
_LOCK = threading.RLock()


def _absent(module: str) -> bool:
    """True when no distribution provides the top-level package of ``module``."""
    top = module.split(".")[0]
    try:
        return importlib.util.find_spec(top) is None
    except (ImportError, ValueError):  # a half-imported module whose __spec__ is None
        return False


def ensure_installed(extra: str, *modules: str) -> None:
    """Raise ``MissingExtraError(extra, module)`` for the first of ``modules`` not installed.

    Imports nothing (``find_spec`` only), so a package can check its extra at import time
    without paying for the import itself.
    """
    for module in modules:
        if _absent(module):
            raise MissingExtraError(extra, module.split(".")[0])


def import_extra(module: str, extra: str) -> Any:
    """Import ``module`` (part of the optional ``extra``) under the lock and return it.

    Raises:
        MissingExtraError: ``module``, or a package it imports, is not installed.
        ImportError: any other failure to import, unchanged.
    """
    return import_names(module, extra)[0]


def import_names(module: str, extra: str, *names: str) -> tuple[Any, ...]:
    """Import ``module`` and look up ``names`` in it, all under the lock.

    Returns ``(module,)`` when no name is given, else one value per name, in order.

    Raises:
        MissingExtraError: ``module``, or a package it imports, is not installed.
        ImportError: any other failure (including a name the module does not have), unchanged.
    """
    with _LOCK:
        try:
            loaded = importlib.import_module(module)
            if not names:
                return (loaded,)
            values = []
            for name in names:
                try:
                    values.append(getattr(loaded, name))
                except AttributeError as exc:
                    raise ImportError(f"cannot import name {name!r} from {module!r}: {exc}",
                                      name=module) from exc
            return tuple(values)
        except ImportError as exc:
            if _absent(module):
                raise MissingExtraError(extra, module.split(".")[0]) from exc
            missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
            if missing and _absent(missing):  # a dependency of the extra is not installed
                raise MissingExtraError(extra, missing.split(".")[0]) from exc
            raise
