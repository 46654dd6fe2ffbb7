"""Bounds on what one request may carry, checked before any of it is used.

A JSON body is parsed with hooks that refuse what Python's ``json`` would otherwise turn into a
500 or a silent surprise: integers that do not fit in 64 bits (a 5,000-digit literal raises deep
inside ``int``), numbers that overflow to infinity, ``NaN``/``Infinity`` (not JSON), and nesting
deeper than any SDK request has. After parsing, one iterative walk bounds string lengths, array
lengths and object sizes. Every refusal is an ``InputError`` whose message names the place in
the body (``$.lora_config.rank``) and the limit, for a 400 answer.

``clip`` shortens any message that echoes a caller's value, so a 10 MB session id never comes
back in a 404.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pydantic
from tinker import types

from ulora_remote.backend import AdamParams
from ulora_remote.errors import InputError

__all__ = [
    "BodyTooLarge",
    "MAX_ARRAY_ITEMS",
    "MAX_INT_DIGITS",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_OBJECT_KEYS",
    "MAX_STRING_CHARS",
    "adam_params",
    "clip",
    "describe_validation_error",
    "parse_json_object",
]

MAX_JSON_BYTES = 8 * 1024 * 1024  # the largest SDK JSON body is a prompt of token ids
MAX_JSON_DEPTH = 32  # SDK requests nest 5 levels at most
MAX_STRING_CHARS = 65_536
MAX_ARRAY_ITEMS = 262_144  # a prompt of 2^18 tokens is beyond every model served here
MAX_OBJECT_KEYS = 4_096
MAX_INT_DIGITS = 19  # int64
MAX_MESSAGE_CHARS = 600
_INT64 = 2**63


class BodyTooLarge(InputError):
    """A body over its size limit (answered 413)."""


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise InputError(
            f"an integer of {digits} digits is out of range; integers must fit in 64 bits"
        )
    value = int(text)
    if not -_INT64 <= value < _INT64:
        raise InputError(f"integer {value} is out of range; integers must fit in 64 bits")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"number {clip(text, 40)} overflows a 64-bit float")
    return value


def _parse_constant(name: str) -> float:
    raise InputError(f"{name} is not a JSON number; send finite numbers only")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Parse ``body`` (empty means ``{}``) as a bounded JSON object.

    Raises:
        BodyTooLarge: over ``MAX_JSON_BYTES``.
        InputError: not JSON, not an object, or beyond another limit of this module.
    """
    if len(body) > MAX_JSON_BYTES:
        raise BodyTooLarge(f"JSON body of {len(body)} bytes exceeds the limit of {MAX_JSON_BYTES}")
    try:
        data = json.loads(
            body or b"{}",
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_parse_constant,
        )
    except RecursionError as exc:
        raise InputError(f"JSON body nests deeper than {MAX_JSON_DEPTH} levels") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InputError(f"body must be a JSON object, not a JSON {type(data).__name__}")
    _check_shape(data)
    return data


def _where(path: tuple[str | int, ...]) -> str:
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{clip(p, 40)}" for p in path)


def _check_string(text: str, path: tuple[str | int, ...]) -> None:
    if len(text) > MAX_STRING_CHARS:
        raise InputError(
            f"string at {_where(path)} has {len(text)} characters; the limit is {MAX_STRING_CHARS}"
        )


def _check_shape(root: dict[str, Any]) -> None:
    """Bound depth, string lengths, array lengths and object sizes (iteratively)."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(root, ())]
    while stack:
        item, path = stack.pop()
        if len(path) >= MAX_JSON_DEPTH:
            raise InputError(
                f"JSON body nests deeper than {MAX_JSON_DEPTH} levels at {_where(path)}"
            )
        if isinstance(item, dict):
            if len(item) > MAX_OBJECT_KEYS:
                raise InputError(
                    f"object at {_where(path)} has {len(item)} keys; the limit is {MAX_OBJECT_KEYS}"
                )
            children: list[tuple[str | int, Any]] = list(item.items())
        else:
            if len(item) > MAX_ARRAY_ITEMS:
                raise InputError(
                    f"array at {_where(path)} has {len(item)} items; the limit is {MAX_ARRAY_ITEMS}"
                )
            children = list(enumerate(item))
        for key, value in children:
            if isinstance(key, str):
                _check_string(key, (*path, key))
            if isinstance(value, str):
                _check_string(value, (*path, key))
            elif isinstance(value, dict | list):
                stack.append((value, (*path, key)))


def describe_validation_error(exc: pydantic.ValidationError, limit: int = 5) -> str:
    """``invalid request: lora_config.rank: Input should be a valid integer; ...``, without
    echoing the values the caller sent."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:limit]]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return f"invalid request: {'; '.join(parts)}{more}"


def clip(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text``, or its start and end around a note of how much was cut when it is longer."""
    if len(text) <= limit:
        return text
    head, tail = (limit * 2) // 3, limit // 4
    return f"{text[:head]}…[{len(text) - head - tail} characters cut]…{text[-tail:]}"


def adam_params(p: types.AdamParams) -> AdamParams:
    """The SDK's ``AdamParams`` as ours, every field checked, so that an absurd value is a 400
    now rather than NaN losses later.

    Raises:
        InputError: naming the field and its allowed range.
    """
    for name, value in (
        ("learning_rate", p.learning_rate),
        ("weight_decay", p.weight_decay),
        ("grad_clip_norm", p.grad_clip_norm),
    ):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"adam_params.{name}={value!r} must be finite and ≥ 0")
    for name, value in (("beta1", p.beta1), ("beta2", p.beta2)):
        if not 0 <= value < 1:
            raise InputError(f"adam_params.{name}={value!r} must be in [0, 1)")
    if not (math.isfinite(p.eps) and p.eps > 0):
        raise InputError(f"adam_params.eps={p.eps!r} must be finite and > 0")
    return AdamParams(
        learning_rate=p.learning_rate,
        beta1=p.beta1,
        beta2=p.beta2,
        eps=p.eps,
        weight_decay=p.weight_decay,
        grad_clip_norm=p.grad_clip_norm,
    )
