"""``asample`` on an engine: stop handling, seeds, optional prompt logprobs.

Stop semantics follow ``types.SamplingParams``: ``stop=None`` stops at the end-of-sequence
token, ``stop=[]`` never stops early, integers are stop tokens, strings are stop sequences
(encoded with the engine's tokenizer; a multi-token sequence is cut after generation). A
sequence that ended on a stop keeps the stop tokens, and reports stop reason "stop".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tinker import types

from ulora_remote.backend import Datum
from ulora_remote.errors import InputError

from .engine import BatchSampling, Engine
from .wire import encode_sample_response

__all__ = ["batch_key", "check_supported", "max_tokens_of", "run_sample", "run_sample_batch",
           "stop_sequences"]

DEFAULT_MAX_TOKENS = 16
MAX_TOKENS_LIMIT = 4096


def max_tokens_of(req: types.SampleRequest) -> int:
    """The request's ``max_tokens``, or the default when it sets none."""
    max_tokens = req.sampling_params.max_tokens
    return DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens


def check_supported(req: types.SampleRequest) -> None:
    """Reject the sampling options this server does not implement, by name.

    Raises:
        InputError: top-k logprobs, target prompt logprobs, alternative tokens or a suffix
            restriction of prompt logprobs were asked for.
    """
    unsupported = {
        "topk_prompt_logprobs": req.topk_prompt_logprobs,
        "topk_sample_logprobs": req.topk_sample_logprobs,
        "target_prompt_logprobs": req.target_prompt_logprobs is not None,
        "prompt_alt_tokens_k": req.prompt_alt_tokens_k,
        "prompt_logprobs_last_n": req.prompt_logprobs_last_n is not None,
    }
    asked = [k for k, v in unsupported.items() if v]
    if asked:
        raise InputError(f"ulora serve does not support {', '.join(asked)} in asample")
    params = req.sampling_params
    max_tokens = max_tokens_of(req)
    if not 1 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise InputError(f"max_tokens={max_tokens} must be in [1, {MAX_TOKENS_LIMIT}]")
    if not (math.isfinite(params.temperature) and params.temperature >= 0):
        raise InputError(f"temperature={params.temperature} must be finite and ≥ 0")


def stop_sequences(engine: Engine, stop: object) -> list[tuple[int, ...]]:
    """Turn ``SamplingParams.stop`` into token sequences (see the module docstring)."""
    if stop is None:
        eos = engine.eos_token_id
        return [] if eos is None else [(int(eos),)]
    items = [stop] if isinstance(stop, str) else list(stop)  # type: ignore[call-overload]
    out: list[tuple[int, ...]] = []
    for item in items:
        if isinstance(item, int):
            out.append((item,))
            continue
        tokenizer = getattr(engine, "tokenizer", None)
        if tokenizer is None:
            raise InputError("string stop sequences need a tokenizer; pass token ids")
        ids = tuple(int(t) for t in tokenizer.encode(str(item), add_special_tokens=False))
        if ids:
            out.append(ids)
    return out


def _cut(tokens: list[int], stops: Sequence[tuple[int, ...]]) -> tuple[list[int], bool]:
    """Cut ``tokens`` after the earliest complete stop sequence."""
    best: int | None = None
    for seq in stops:
        for end in range(len(seq), len(tokens) + 1):
            if tuple(tokens[end - len(seq) : end]) == seq:
                best = end if best is None else min(best, end)
                break
    return (tokens, False) if best is None else (tokens[:best], True)


def _prompt_logprobs(engine: Engine, prompt: list[int]) -> list[float]:
    if len(prompt) < 2:
        return [math.nan] * len(prompt)
    datum = Datum(tuple(prompt[:-1]), tuple(prompt[1:]), (0.0,) * (len(prompt) - 1))
    result = engine.forward_datums([datum]).result()
    return [math.nan, *[float(x) for x in result.logprobs[0]]]


def run_sample(engine: Engine, req: types.SampleRequest) -> bytes:
    """Generate ``req.num_samples`` sequences on ``engine``; return a protobuf
    ``SampleResponse`` (blocking; runs on the worker thread)."""
    check_supported(req)
    prompt = req.prompt.to_ints()
    if not prompt:
        raise InputError("the prompt is empty")
    params = req.sampling_params
    max_tokens = max_tokens_of(req)
    stops = stop_sequences(engine, params.stop)
    single = tuple(s[0] for s in stops if len(s) == 1)
    sequences = []
    for i in range(req.num_samples):
        seed = None if params.seed is None else params.seed + i
        tokens = engine.sample_tokens(
            prompt, max_tokens, temperature=params.temperature, stop_tokens=single, seed=seed
        )
        sequences.append(_cut(list(tokens), stops))
    logprobs = _prompt_logprobs(engine, prompt) if req.prompt_logprobs else None
    return encode_sample_response(sequences, logprobs)


def batch_key(req: types.SampleRequest) -> tuple[object, ...] | None:
    """What a request shares with the others that may run in one batch with it, or None when
    it must run alone: only greedy single samples without prompt logprobs are batched (greedy
    rows of a batch compute what they would alone; a sampled row would draw other numbers)."""
    params = req.sampling_params
    if params.temperature != 0 or req.num_samples != 1 or req.prompt_logprobs:
        return None
    stop = params.stop
    stop_key = stop if stop is None or isinstance(stop, str) else tuple(stop)
    return (params.max_tokens, stop_key)


def run_sample_batch(engine: Engine, reqs: Sequence[types.SampleRequest]) -> list[bytes]:
    """``run_sample`` for requests with one ``batch_key``, in one batch when the engine can
    (``BatchSampling``); one ``SampleResponse`` per request, in order."""
    for req in reqs:
        check_supported(req)
    prompts = [req.prompt.to_ints() for req in reqs]
    if not all(prompts):
        raise InputError("the prompt is empty")
    params = reqs[0].sampling_params
    max_tokens = params.max_tokens if params.max_tokens is not None else DEFAULT_MAX_TOKENS
    stops = stop_sequences(engine, params.stop)
    single = tuple(s[0] for s in stops if len(s) == 1)
    if isinstance(engine, BatchSampling):
        outputs = engine.sample_tokens_batch(prompts, max_tokens, stop_tokens=single)
    else:
        outputs = [engine.sample_tokens(p, max_tokens, stop_tokens=single) for p in prompts]
    return [encode_sample_response([_cut(list(o), stops)], None) for o in outputs]
