"""Backend implementations of ``ulora_remote.backend.TrainingBackend``.

Installed as ``ulora_remote.backends``. Each submodule imports its heavy dependencies itself, so
importing this package is free.
"""
