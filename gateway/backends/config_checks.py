"""The checks of the backends file, one small reader per kind of value.

Each reader takes the loaded YAML value and its key path (``backends[1].url``) and returns
the checked value or raises :class:`Invalid` (path, what is wrong), which
:func:`gateway.backends.config.load_config` turns into one line naming the file. A message
never quotes a value (it may be a secret); it may name a key, a header or a variable.

Variable names (``api_key_env``, ``${VAR}``) must be capitals, digits and ``_``: a name is
shown in messages, and a key pasted where a name belongs never has that shape.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable, Hashable, Mapping, Sequence
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import yaml


class Invalid(Exception):
    """One fault: where (a key path, or a line of the file) and what is wrong."""

    def __init__(self, path: str, what: str) -> None:
        super().__init__(f"{path}: {what}")
        self.path = path
        self.what = what


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type information
    """``yaml.safe_load``, except that a key written twice in one mapping is an error
    (PyYAML would keep the last one silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise Invalid(f"line {key_node.start_mark.line + 1}", f"the key {shown(key_node.value)} is written twice")
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: plain data only, as yaml.safe_load
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = " ".join(str(error.problem or error.context or "invalid").split())
        raise Invalid(where, f"not valid YAML: {problem}") from None
    except yaml.YAMLError:
        raise Invalid("YAML", "not valid YAML") from None


def shown(key: object) -> str:
    """A key as it may appear in a message: short and printable, else a placeholder."""
    return key if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 64 else "(a key)"


def at(path: str, key: object) -> str:
    return f"{path}.{shown(key)}" if path else shown(key)


def _kind(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, datetime.date):
        return "a date (quote it)"
    kinds: dict[type, str] = {str: "a string", list: "a list", dict: "a mapping"}
    return kinds.get(type(value), type(value).__name__)


def mapping(value: Any, path: str, known: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any]:
    """A mapping with only ``known`` keys, ``required`` ones present. Empty (``key:`` alone) is ``{}``."""
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise Invalid(path, f"must be a mapping, not {_kind(value)}" if path else f"must be a mapping of {', '.join(known)}")
    for key in value:
        if key not in known:
            raise Invalid(at(path, key), f"unknown key (known: {', '.join(known)})")
    for key in required:
        if key not in value:
            raise Invalid(at(path, key), "required")
    return value


def sequence(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise Invalid(path, f"must be a list, not {_kind(value)}")
    if not value:
        raise Invalid(path, "must not be empty")
    return value


def unique(items: Sequence[Hashable], pattern: str, what: str = "a duplicate of") -> None:
    """The second of two equal items is the fault; ``pattern`` makes a path from an index."""
    first: dict[Hashable, int] = {}
    for index, item in enumerate(items):
        if item in first:
            raise Invalid(pattern.format(index), f"{what} {pattern.format(first[item])}")
        first[item] = index


def text(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise Invalid(path, f"must be a string, not {_kind(value)}")
    if not value.strip():
        raise Invalid(path, "must not be empty")
    return value.strip()


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def name(value: Any, path: str) -> str:
    """A backend name: it appears in metrics labels, logs and ``X-Gateway-Backend``."""
    found = text(value, path)
    if not _NAME.fullmatch(found):
        raise Invalid(path, "must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return found


def choice(value: Any, path: str, options: Sequence[str]) -> str:
    found = text(value, path)
    if found not in options:
        raise Invalid(path, f"must be one of {', '.join(options)}")
    return found


def url(value: str, path: str, dialect: str) -> str:
    """An http(s) base URL with a host, no credentials, query or fragment; without its trailing ``/``."""
    if any(c.isspace() or not c.isprintable() for c in value):
        raise Invalid(path, "must not contain spaces or control characters")
    parts = urlsplit(value)
    try:
        _ = parts.port  # raises on a port that is not a number from 0 to 65535
    except ValueError:
        raise Invalid(path, "has an invalid port") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(path, "must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise Invalid(path, "must not carry credentials; use api_key_env or headers with ${VARIABLE}")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise Invalid(path, "must not have a query or fragment")
    base = value.rstrip("/")
    if dialect == "openai" and base.endswith(("/completions", "/embeddings")):
        raise Invalid(path, "must be the API's base (such as https://api.openai.com/v1), without the operation's path")
    return base


_VARIABLE = re.compile(r"[A-Z_][A-Z0-9_]*")
_REFERENCE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")


def variable(value: str, path: str, environ: Mapping[str, str]) -> str:
    """The value of a variable that must be set and not empty."""
    found = environ.get(value, "")
    if not found:
        raise Invalid(path, f"the variable {value} is not set" if value not in environ else f"the variable {value} is empty")
    if any(c in found for c in "\r\n\0"):
        raise Invalid(path, f"the variable {value} holds a line break")
    return found


def interpolate(value: str, path: str, environ: Mapping[str, str]) -> str:
    """``${VAR}`` replaced by the variable's value; an unset one is an error (``$`` alone stays)."""
    if "${" in _REFERENCE.sub("", value):
        raise Invalid(path, "has a malformed ${VARIABLE} reference (capitals, digits and _ inside ${})")
    return _REFERENCE.sub(lambda match: variable(match.group(1), path, environ), value)


def api_key(spec: Mapping[str, Any], path: str, environ: Mapping[str, str]) -> tuple[str, str]:
    """(the variable's name, the key) from ``api_key_env: NAME`` or ``api_key: ${NAME}``; ("", "") for none."""
    if "api_key" in spec and "api_key_env" in spec:
        raise Invalid(f"{path}.api_key", "set api_key or api_key_env, not both")
    if "api_key" in spec:
        where = f"{path}.api_key"
        reference = _REFERENCE.fullmatch(spec["api_key"].strip()) if isinstance(spec["api_key"], str) else None
        if reference is None:
            raise Invalid(where, "a secret written inline: write ${VARIABLE} (or api_key_env: VARIABLE), never the key itself")
        name_ = reference.group(1)
    elif "api_key_env" in spec:
        where = f"{path}.api_key_env"
        name_ = text(spec["api_key_env"], where)
        if not _VARIABLE.fullmatch(name_):
            raise Invalid(where, "must name an environment variable (capitals, digits and _), never hold the key itself")
    else:
        return "", ""
    return name_, variable(name_, where, environ)


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Headers the gateway (or the HTTP client) sets itself: framing, the connection and the host.
_GATEWAY_HEADERS = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade"}
    | {"proxy-connection", "proxy-authorization", "expect", "accept-encoding"}
)
_SECRET_WORDS = ("authorization", "key", "token", "secret", "password", "cookie", "credential")
_KEY_HEADER = {"openai": "authorization", "azure": "api-key"}


def headers(value: Any, path: str, environ: Mapping[str, str], dialect: str, has_key: bool) -> tuple[tuple[str, str], ...]:
    """Extra static headers. A secret-looking one (``Authorization``, ``*key*``, ``*token*``...)
    must take its value from ``${VARIABLE}``."""
    given = {} if value is None else value
    if not isinstance(given, dict):
        raise Invalid(path, f"must be a mapping of header names to values, not {_kind(given)}")
    found: list[tuple[str, str]] = []
    for header, raw in given.items():
        if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
            raise Invalid(path, "a header name is not a valid HTTP token")
        where, lowered = f"{path}.{header}", header.lower()
        if lowered in _GATEWAY_HEADERS:
            raise Invalid(where, "set by the gateway itself; it cannot be configured")
        if has_key and lowered == _KEY_HEADER[dialect]:
            raise Invalid(where, "the gateway sends it from the backend's api key; set one of them only")
        if not isinstance(raw, str):
            raise Invalid(where, f"must be a string, not {_kind(raw)}")
        if any(word in lowered for word in _SECRET_WORDS) and not _REFERENCE.search(raw):
            raise Invalid(where, "a secret written inline: take it from the environment with ${VARIABLE}")
        found.append((header, interpolate(raw, where, environ)))
    unique([header.lower() for header, _ in found], f"{path}.{{}}", "the same header as")
    return tuple(found)


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Invalid(path, f"must be a number, not {_kind(value)}")
    if not math.isfinite(value):
        raise Invalid(path, "must be a finite number")
    return float(value)


def positive(value: Any, path: str) -> float:
    if (number := _number(value, path)) <= 0:
        raise Invalid(path, "must be greater than 0")
    return number


def non_negative(value: Any, path: str) -> float:
    if (number := _number(value, path)) < 0:
        raise Invalid(path, "must not be negative")
    return number


MAX_PRICE = 1_000_000  # USD per million tokens: a dollar a token


def price(value: Any, path: str) -> Decimal:
    """USD per million tokens: a number from 0 to :data:`MAX_PRICE`, kept as the decimal written
    (``0.15`` is exactly 0.15, not the nearest binary fraction)."""
    if not (number := non_negative(value, path)) <= MAX_PRICE:
        raise Invalid(path, f"must be at most {MAX_PRICE} (USD per million tokens)")
    return Decimal(str(value)) if isinstance(value, float) else Decimal(int(number))


def ratio(value: Any, path: str) -> float:
    if not 0 <= (number := _number(value, path)) <= 1:
        raise Invalid(path, "must be from 0 to 1")
    return number


def count(value: Any, path: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(path, f"must be a whole number, not {_kind(value)}")
    if value < low or (high is not None and value > high):
        raise Invalid(path, f"must be from {low} to {high}" if high is not None else f"must be at least {low}")
    return value


def count_between(low: int, high: int | None = None) -> Callable[[Any, str], int]:
    return lambda value, path: count(value, path, low, high)


def boolean(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(path, f"must be true or false, not {_kind(value)}")
    return value


def retry_on(value: Any, path: str) -> frozenset[str]:
    """What is retried: ``connect``, ``timeout``, 408, 429 and 5xx statuses. An empty list: nothing."""
    if value is None or value == []:
        return frozenset()
    found = set()
    for index, item in enumerate(sequence(value, path)):
        kind = str(item).strip().lower() if isinstance(item, str | int) and not isinstance(item, bool) else ""
        if not (kind in ("connect", "timeout", "408", "429") or (kind.isdigit() and 500 <= int(kind) <= 599)):
            raise Invalid(f"{path}[{index}]", "must be connect, timeout, 408, 429 or a 5xx status code")
        found.add(kind)
    return frozenset(found)
