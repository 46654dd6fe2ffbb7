"""Protobuf in and out, with the SDK's own ``tinker_public_pb2`` messages.

``forward_backward`` arrives as a protobuf ``ForwardBackwardRequest`` (optionally zstd-encoded);
its result and the result of ``asample`` go back as protobuf ``ForwardBackwardOutput`` and
``SampleResponse``. Everything that cannot be decoded raises ``WireError`` with a message for
the 400 answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tinker.proto import tinker_public_pb2 as pb

from ulora_remote.backend import Datum
from ulora_remote.errors import InputError

__all__ = [
    "FwdBwdCall",
    "WireError",
    "decode_forward_backward",
    "decompress_body",
    "encode_forward_backward_output",
    "encode_sample_response",
]

SUPPORTED_LOSS_FNS = ("cross_entropy",)


class WireError(InputError):
    """A request body that cannot be decoded; the message says what is wrong."""


@dataclass(frozen=True)
class FwdBwdCall:
    """A decoded ``forward_backward`` request."""

    model_id: str
    seq_id: int | None
    forward_only: bool
    datums: tuple[Datum, ...]


def decompress_body(body: bytes, content_encoding: str, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding: zstd`` (the SDK's ``proto_compress_fwdbwd``), bounded.

    Raises:
        WireError: an unknown encoding, a corrupt frame, or more than ``max_bytes`` inflated.
    """
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "zstd":
        raise WireError(f"unsupported Content-Encoding {encoding!r}; send zstd or none")
    import zstandard

    try:
        reader = zstandard.ZstdDecompressor().stream_reader(body)
        out = reader.read(max_bytes + 1)
    except zstandard.ZstdError as exc:
        raise WireError(f"corrupt zstd body: {exc}") from exc
    if len(out) > max_bytes:
        raise WireError(f"decompressed body exceeds {max_bytes} bytes")
    return bytes(out)


def _tensor(msg: pb.Tensor, name: str, dtype: np.dtype) -> np.ndarray:
    if msg.HasField("sparse_csr"):
        raise WireError(f"loss_fn_inputs[{name!r}] is sparse; ulora serve takes dense tensors")
    src = {pb.DTYPE_FLOAT32: np.float32, pb.DTYPE_INT64: np.int64, pb.DTYPE_INT32: np.int32}
    if msg.dtype not in src:
        raise WireError(f"loss_fn_inputs[{name!r}] has unsupported dtype {msg.dtype}")
    item = np.dtype(src[msg.dtype]).itemsize
    if len(msg.dense) % item:
        raise WireError(f"loss_fn_inputs[{name!r}] has a truncated buffer")
    return np.frombuffer(msg.dense, dtype=src[msg.dtype]).astype(dtype).reshape(-1)


def _datum(msg: pb.Datum, index: int) -> Datum:
    tokens: list[int] = []
    for chunk in msg.model_input:
        if chunk.WhichOneof("chunk") != "encoded_text":
            raise WireError(f"datum {index}: only encoded_text chunks are supported")
        raw = chunk.encoded_text.tokens
        if len(raw) % 4:
            raise WireError(f"datum {index}: truncated token buffer")
        tokens.extend(int(t) for t in np.frombuffer(raw, dtype=np.int32))
    if "target_tokens" not in msg.loss_fn_inputs:
        raise WireError(f"datum {index}: loss_fn_inputs needs 'target_tokens'")
    targets = _tensor(msg.loss_fn_inputs["target_tokens"], "target_tokens", np.dtype(np.int64))
    if "weights" in msg.loss_fn_inputs:
        weights = _tensor(msg.loss_fn_inputs["weights"], "weights", np.dtype(np.float64))
    else:
        weights = np.ones(len(targets))
    if not (len(tokens) == len(targets) == len(weights)) or not tokens:
        raise WireError(
            f"datum {index}: {len(tokens)} input tokens, {len(targets)} targets and "
            f"{len(weights)} weights must be equal and non-zero"
        )
    if not all(math.isfinite(w) for w in weights):
        raise WireError(f"datum {index}: weights must be finite")
    return Datum(tuple(tokens), tuple(int(t) for t in targets), tuple(float(w) for w in weights))


def decode_forward_backward(body: bytes) -> FwdBwdCall:
    """Parse a protobuf ``ForwardBackwardRequest``.

    Raises:
        WireError: not a valid message, an unsupported loss, or inconsistent datums.
    """
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except Exception as exc:  # protobuf raises DecodeError, a bare Exception subclass
        raise WireError(f"body is not a ForwardBackwardRequest protobuf: {exc}") from exc
    if not msg.model_id:
        raise WireError("ForwardBackwardRequest.model_id is empty")
    if msg.loss_fn not in SUPPORTED_LOSS_FNS:
        raise WireError(
            f"loss_fn {msg.loss_fn!r} is not supported by ulora serve; use one of "
            f"{', '.join(SUPPORTED_LOSS_FNS)}"
        )
    if not msg.data:
        raise WireError("ForwardBackwardRequest has no data")
    datums = tuple(_datum(d, i) for i, d in enumerate(msg.data))
    # The SDK always sends seq_id ≥ 1; 0 is proto3's "unset".
    return FwdBwdCall(msg.model_id, msg.seq_id or None, msg.forward_only, datums)


def _batched(rows: Sequence[Sequence[float]]) -> pb.BatchedTensor:
    arrays = [np.asarray(r, dtype=np.float32) for r in rows]
    offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([a.nbytes for a in arrays])
    data = b"".join(a.tobytes() for a in arrays)
    return pb.BatchedTensor(data=data, offsets=offsets.tobytes(), dtype=pb.DTYPE_FLOAT32)


def encode_forward_backward_output(
    datums: Sequence[Datum], logprobs: Sequence[Sequence[float]], loss_sum: float
) -> bytes:
    """Serialize a cross-entropy result: per-datum logprobs and elementwise losses, and
    ``loss:sum`` (Σ −logprob·weight over the batch, as Tinker reports it)."""
    elementwise = [
        [-lp * w for lp, w in zip(lps, d.weights, strict=True)]
        for lps, d in zip(logprobs, datums, strict=True)
    ]
    record = pb.ArrayRecord(
        type_tag="CrossEntropyLossReturn",
        fields={"logprobs": _batched(logprobs), "elementwise_loss": _batched(elementwise)},
        num_datums=len(datums),
    )
    out = pb.ForwardBackwardOutput(
        loss_fn_output_type="CrossEntropyLossReturn",
        loss_fn_outputs=[record],
        metrics={"loss:sum": float(loss_sum)},
    )
    return out.SerializeToString()


def encode_sample_response(
    sequences: Sequence[tuple[Sequence[int], bool]],
    prompt_logprobs: Sequence[float] | None = None,
) -> bytes:
    """Serialize sampled sequences; each is (tokens, stopped_on_stop_token).

    ``prompt_logprobs`` (one per prompt token, NaN for the first) is included when given.
    """
    msg = pb.SampleResponse()
    for tokens, stopped in sequences:
        seq = msg.sequences.add()
        seq.tokens = np.asarray(tokens, dtype=np.int32).tobytes()
        seq.stop_reason = pb.STOP_REASON_STOP if stopped else pb.STOP_REASON_LENGTH
    if prompt_logprobs is not None:
        msg.prompt_logprobs = np.asarray(prompt_logprobs, dtype=np.float32).tobytes()
    return msg.SerializeToString()
