"""Backend implementations of ``ulora_remote.backend.TrainingBackend``.

Installed as ``ulora_remote.backends``. Each submodule imports its heavy dependencies itself, so
importing this package is free.
"""

from ulora_remote.checkout import check_subpackage

check_subpackage("backends", __file__)  # one source tree (ulora_remote/checkout.py)

