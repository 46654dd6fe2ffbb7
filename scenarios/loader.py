"""Finding, reading, overriding and validating scenario files.

``load_scenario("pig-latin-shock")`` reads a shipped file from ``files/``; any other argument is
a path. Overrides (``"controller.cooldown=0"``) are applied to the parsed TOML before validation,
so they are checked like the file itself. Every problem is a ``ConfigurationError`` whose message
names the file (and the override, when one caused it), the dotted key, what is wrong and the fix.
"""

from __future__ import annotations

import difflib
import re
import tomllib
import urllib.parse
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from ulora_remote.scenarios.schema import Scenario

from ulora_remote.errors import ConfigurationError

__all__ = [
    "DEFAULT_SCENARIO",
    "list_scenarios",
    "load_scenario",
    "parse_override",
    "shipped_scenarios",
    "validate_scenario",
]

DEFAULT_SCENARIO = "pig-latin-shock"
# Override keys whose values are never shown in a message (an API key given by mistake).
_SECRET = re.compile(r"key|token|secret|password|credential", re.IGNORECASE)
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*")
_TYPE_HINTS = {
    "int_type": "an integer, e.g. 8",
    "float_type": "a number, e.g. 0.5",
    "string_type": 'a quoted string, e.g. "text"',
    "bool_type": "true or false",
    "tuple_type": "an array, e.g. [1, 2]",
    "model_type": "a table, e.g. [section]",
    "literal_error": "one of the values listed",
}


def shipped_scenarios() -> dict[str, Path]:
    """Shipped scenario names and their files, sorted by name."""
    folder = resources.files("ulora_remote.scenarios").joinpath("files")
    paths = [Path(str(p)) for p in folder.iterdir() if p.name.endswith(".toml")]
    return {p.stem: p for p in sorted(paths)}


def list_scenarios() -> list[tuple[str, str]]:
    """``(name, description)`` of each shipped scenario, sorted by name."""
    return [(name, load_scenario(name).description) for name in shipped_scenarios()]


def load_scenario(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """Load a shipped scenario by name, or a scenario file by path, and validate it.

    Args:
        name_or_path: a shipped name (see ``list_scenarios``) or a path to a ``.toml`` file.
        overrides: ``"dotted.key=value"`` strings; the value is read as a TOML value
            (``60``, ``[[20, 40]]``, ``true``, ``"x"``) and otherwise taken as a plain string.

    Returns:
        The validated, frozen ``Scenario``.

    Raises:
        ConfigurationError: an unknown name, an unreadable or invalid file, a malformed override,
            or a value the schema rejects.
    """
    path = _resolve(name_or_path)
    source = path.name
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(
            f"{path}: cannot read the scenario file ({exc.strerror})"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"{source}: invalid TOML: {exc} — fix the syntax at that line of {path}"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigurationError(
            f"{path}: not UTF-8 text (byte {exc.start}); a scenario file is TOML in UTF-8: "
            "save it as UTF-8"
        ) from None
    by_key: dict[str, str] = {}
    for raw in overrides:
        key, value = parse_override(raw)
        shown = f"{key}=<hidden>" if _SECRET.search(key) else raw  # never echo a secret
        _apply(data, key, value, shown, source)
        by_key[key] = shown
    return validate_scenario(data, source, by_key, base_dir=path.parent)


def _resolve(name_or_path: str | Path) -> Path:
    shipped = shipped_scenarios()
    if isinstance(name_or_path, str) and name_or_path in shipped:
        return shipped[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    raise ConfigurationError(
        f"unknown scenario {str(name_or_path)!r}: not a shipped scenario "
        f"({', '.join(shipped)}) and no such file; "
        "pass one of those names or a path to a .toml file"
    )


def parse_override(raw: str) -> tuple[str, Any]:
    """Split ``"dotted.key=value"`` into the key and the value parsed as TOML (else a string).

    Raises:
        ConfigurationError: no ``=``, or a key that is not dotted names (``a.b_c``).
    """
    key, sep, text = raw.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        raise ConfigurationError(
            f"override {_shown(raw)} is not key=value with a dotted key; "
            "write it like controller.cooldown=0 or steps=60"
        )
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word such as tinker: take it as a string
    return key, value


def _apply(data: dict[str, Any], key: str, value: Any, raw: str, source: str) -> None:
    *tables, leaf = key.split(".")
    node = data
    for depth, part in enumerate(tables):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(tables[: depth + 1])
            raise ConfigurationError(
                f"{source}: override {_shown(raw)}: {prefix} is a value, not a table, so it has no "
                f"key {leaf!r}; set {prefix}=... instead"
            )
        node = child
    node[leaf] = value


def validate_scenario(
    data: Mapping[str, Any], source: str = "scenario", overrides: Mapping[str, str] | None = None,
    *, base_dir: Path | None = None,
) -> Scenario:
    """Validate parsed scenario data (a TOML table, or a run's ``config.json``).

    Args:
        data: the parsed mapping.
        source: the name messages start with (a file name).
        overrides: dotted key -> the raw override that set it, to name it in messages.
        base_dir: the scenario file's folder: relative data paths (``task.train``,
            ``shocks.source``) are resolved against it and stored absolute. None: they stay
            as given (relative to the working directory).

    Raises:
        ConfigurationError: every problem found, one per line.
    """
    try:
        return Scenario.model_validate(dict(data), context={"base_dir": base_dir})
    except ValidationError as exc:
        lines = [_describe(err, source, overrides or {}) for err in exc.errors(include_url=False)]
        raise ConfigurationError("\n".join(lines)) from None


def _describe(err: Any, source: str, overrides: Mapping[str, str]) -> str:
    raw_loc = tuple(err["loc"])
    loc, _ = _walk(raw_loc)
    key = _dotted(loc)
    origin = f"{source} with override {_shown(overrides[key])}" if key in overrides else source
    kind = err["type"]
    if kind == "value_error":
        text = str(err["ctx"]["error"])
        causes = _causes(key, text, overrides)
        origin = f"{source} with override {', '.join(map(_shown, causes))}" if causes else source
        return f"{origin}: {text}"
    if kind == "extra_forbidden":
        return f"{origin}: {_unknown_key(raw_loc)}"
    if kind == "missing":
        return f"{origin}: {key} is required — add it to the file"
    if kind == "union_tag_invalid":
        ctx = err["ctx"]
        tag_key = f"{key}.{ctx['discriminator'].strip(chr(39))}"
        if tag_key in overrides:
            origin = f"{source} with override {_shown(overrides[tag_key])}"
        return (f"{origin}: {tag_key} = {_shown(ctx['tag'])} is not known — choose one of "
                f"{ctx['expected_tags']}")
    shown = f"{key} = {_shown(err['input'])}"
    if kind == "string_pattern_mismatch":
        return (f"{origin}: {shown}: use only letters, digits, '.', '_' and '-', starting "
                "with a letter or digit — fix the value")
    return f"{origin}: {shown}: {err['msg'].lower()} — {_fix(kind, err.get('ctx', {}))}"


_SHOWN_CHARS = 120
# The scheme's length is bounded so that a long value is scanned in linear time.
_URL = re.compile(r"[a-z][a-z0-9+.-]{0,15}://[^\s'\"]+", re.IGNORECASE)


def _hide_url_secret(match: re.Match[str]) -> str:
    """A URL's user part and query may hold a key: a message shows neither."""
    parts = urllib.parse.urlsplit(match.group(0))
    user, _, host = parts.netloc.rpartition("@")
    return (f"{parts.scheme}://{'…@' if user else ''}{host}{parts.path}"
            f"{'?…' if parts.query else ''}")


def _shown(value: Any) -> str:
    """``repr(value)`` for a message: a URL's user part and query hidden, and at most
    ``_SHOWN_CHARS`` characters (a 10 MB value must not become a 10 MB message)."""
    full = repr(value)
    text = _URL.sub(_hide_url_secret, full[: 4 * _SHOWN_CHARS])
    if len(full) > _SHOWN_CHARS:
        text = f"{text[:_SHOWN_CHARS]}… ({len(full):,} characters in all)"
    return text


def _causes(key: str, text: str, overrides: Mapping[str, str]) -> list[str]:
    """The overrides a value error of table ``key`` (or of the whole scenario) is about: those
    inside the table whose name the message mentions, else every one inside it; for the whole
    scenario, those whose dotted key the message names."""
    if key:
        inside = {k: raw for k, raw in overrides.items() if k == key or k.startswith(key + ".")}
        named = [raw for k, raw in inside.items()
                 if re.search(rf"(?<![\w]){re.escape(k.rsplit('.', 1)[-1])}\b", text)]
        return named or list(inside.values())
    return [raw for k, raw in overrides.items()
            if re.search(rf"(?<![\w.]){re.escape(k)}\b", text)]


def _fix(kind: str, ctx: Mapping[str, Any]) -> str:
    if kind in _TYPE_HINTS:
        return f"write {_TYPE_HINTS[kind]}"
    bounds = {
        "greater_than": "use a value above {gt}",
        "greater_than_equal": "use a value of at least {ge}",
        "less_than": "use a value below {lt}",
        "less_than_equal": "use a value of at most {le}",
        "too_long": "give at most {max_length} items",
        "too_short": "give at least {min_length} items",
        "string_too_short": "give at least {min_length} character(s)",
        "string_too_long": "use at most {max_length} characters",
    }
    template = bounds.get(kind)
    return template.format(**ctx) if template else "change the value"


def _dotted(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _walk(loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], type[BaseModel]]:
    """``loc`` without the tags pydantic puts in for discriminated unions (``controller.fixed.lr``
    is ``controller.lr``), and the model of the innermost table it names."""
    model: type[BaseModel] = Scenario
    clean: list[Any] = []
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        clean.append(part)
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            continue
        members = [t for t in (field.annotation, *_args(field.annotation)) if _is_model(t)]
        if field.discriminator and parts:
            tag = parts.pop(0)
            members = [m for m in members if _has_tag(m, str(field.discriminator), tag)]
        if not members:
            clean.extend(parts)  # below a plain field: indices of an array, kept as they are
            break
        model = members[0]
    return tuple(clean), model


def _has_tag(model: type[BaseModel], discriminator: str, tag: Any) -> bool:
    annotation = model.model_fields[discriminator].annotation
    return tag in _args(annotation)


def _unknown_key(raw_loc: tuple[Any, ...]) -> str:
    table, model = _walk(raw_loc[:-1])
    loc = (*table, raw_loc[-1])
    valid = list(model.model_fields)
    where = f"in [{'.'.join(map(str, loc[:-1]))}]" if len(loc) > 1 else "at the top level"
    close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (
        f"unknown key '{_dotted(loc)}' — {hint}valid keys {where} are {', '.join(valid)}; "
        "remove it or fix the spelling"
    )


def _args(annotation: Any) -> tuple[Any, ...]:
    return tuple(getattr(annotation, "__args__", ()))


def _is_model(candidate: Any) -> bool:
    return isinstance(candidate, type) and issubclass(candidate, BaseModel)
