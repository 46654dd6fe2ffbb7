"""One source tree per process: ``ulora_remote.backends`` and ``ulora_remote.scenarios`` must come
from the same checkout (or installation) as ``ulora_remote`` itself.

In a checkout the two subpackages live beside ``ulora_remote/`` (``backends/``, ``scenarios/``) and
``pyproject.toml`` maps them in; an installed wheel has them inside ``ulora_remote/``. A copy of a
checkout put on ``PYTHONPATH`` while another checkout is installed in editable mode would import
the copy's ``ulora_remote`` and the installed checkout's subpackages (the editable finder answers
for names the copy's ``ulora_remote/`` lacks): an edited task "is not known". Each subpackage
calls ``check_subpackage`` on import and stops such a mix with a clear error. (Moving the two
folders into ``ulora_remote/`` would avoid the check, at the cost of moving every file of both.)
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["check_subpackage"]


def check_subpackage(name: str, init_file: str) -> None:
    """Raises ImportError when ``ulora_remote.<name>`` (its ``__init__.py`` at ``init_file``) is
    from another tree than ``ulora_remote``."""
    import ulora_remote

    root = Path(ulora_remote.__file__).resolve().parent
    here = Path(init_file).resolve().parent
    if here in (root / name, root.parent / name):  # an installed wheel, or a checkout
        return
    raise ImportError(
        f"ulora_remote was imported from {root}, but ulora_remote.{name} from {here}: two "
        f"source trees are mixed (a copy of a checkout on PYTHONPATH while another one is "
        f"installed in editable mode). Install the copy (`pip install -e {root.parent}`) or "
        f"run the installed checkout, so that one tree runs"
    )
