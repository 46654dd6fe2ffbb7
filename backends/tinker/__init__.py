"""The Tinker backend: ``TrainingBackend`` over the official ``tinker`` SDK (>=0.38,<0.39).

``import ulora_remote.backends.tinker`` does not import the SDK; constructing a
``TinkerBackend`` does, and raises ``MissingExtraError`` when the ``tinker`` extra is missing.
"""

from .backend import TinkerBackend

__all__ = ["TinkerBackend"]
