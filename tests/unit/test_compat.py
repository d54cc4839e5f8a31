"""gateway/compat.py: each reach into a library's internals still holds, and there is no other.

Each library test fails with a message naming the library, its installed version and
the version the reach was written against: after an upgrade, re-check that function in
gateway/compat.py against the new version, then update the version it names.

The last tests read gateway/ for private names of other libraries used anywhere but
gateway/compat.py: attribute access ``x._name`` (or a function's ``__code__`` /
``__globals__``) on anything but ``self``, ``cls`` or one of the gateway's own modules,
and methods overriding a library class's private method.
"""

from __future__ import annotations

import ast
import http.client
import importlib
import inspect
import io
import pkgutil
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import flask_talisman
import prometheus_client
import pytest
import requests
from flask import Flask
from flask_limiter import Limiter
from prometheus_client import CollectorRegistry, Counter, values
from requests.adapters import HTTPAdapter

import gateway
from gateway import compat

GATEWAY = Path(gateway.__file__).resolve().parent
COMPAT = GATEWAY / "compat.py"


def _hint(library: str, installed: str, written_against: str, what: str) -> str:
    return (
        f"{library} {installed}: {what}. gateway/compat.py was written against {library} {written_against}; "
        "re-check it against this version"
    )


# --- http.client ----------------------------------------------------------------------------


class _Socket:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self._data))


def test_http_client_begin_still_reads_the_head_through_its_module_parse_headers() -> None:
    found = sys.version.split()[0]
    hint = _hint(
        "http.client (the standard library)",
        found,
        compat.HTTP_CLIENT_WRITTEN_AGAINST,
        "HTTPResponse.begin no longer calls the module-global parse_headers",
    )
    assert "parse_headers" in http.client.HTTPResponse.begin.__code__.co_names, hint
    seen: list[bool] = []

    def parse_headers(fp: Any, _class: type[http.client.HTTPMessage] = http.client.HTTPMessage) -> http.client.HTTPMessage:
        seen.append(True)
        return http.client.parse_headers(fp, _class)

    begin = compat.http_response_begin(parse_headers)
    answer = http.client.HTTPResponse(_Socket(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nok"))  # type: ignore[arg-type]  # a socket stand-in
    begin(answer)
    assert seen == [True], hint
    assert (answer.status, answer.getheader("X-A"), answer.read()) == (200, "1", b"ok"), hint


# --- requests -------------------------------------------------------------------------------


def test_requests_adapter_still_hands_out_its_pool() -> None:
    hint = _hint(
        "requests", requests.__version__, compat.REQUESTS_WRITTEN_AGAINST, "HTTPAdapter.get_connection_with_tls_context changed"
    )
    method = getattr(HTTPAdapter, "get_connection_with_tls_context", None)
    assert method is not None, hint
    assert list(inspect.signature(method).parameters) == ["self", "request", "verify", "proxies", "cert"], hint
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=3, max_retries=0)
    session.mount("http://", adapter)
    probe = session.prepare_request(requests.Request("POST", "http://127.0.0.1:9/v1/_"))
    try:
        pool = compat.adapter_pool(adapter, probe, True, {}, None)
        assert (pool.host, pool.port, pool.pool.maxsize) == ("127.0.0.1", 9, 3), hint
        assert compat.adapter_pool(adapter, probe, True, {}, None) is pool, hint  # one pool, reused by every call
    finally:
        session.close()


# --- prometheus-client ------------------------------------------------------------------------


def test_prometheus_client_metrics_still_take_their_value_class_from_values() -> None:
    hint = _hint(
        "prometheus-client",
        version("prometheus-client"),
        compat.PROMETHEUS_CLIENT_WRITTEN_AGAINST,
        "metrics no longer take values.ValueClass when created, or MultiProcessValue changed",
    )
    assert prometheus_client.values is values and hasattr(values, "ValueClass"), hint
    multiprocess = values.MultiProcessValue(process_identifier=lambda: 1)  # type: ignore[no-untyped-call]  # untyped library
    assert getattr(multiprocess, "_multiprocess", False) is True, hint
    saved = values.ValueClass

    class Marked(values.MutexValue):
        pass

    values.ValueClass = Marked
    try:
        counter = Counter("compat_probe_total", "probe", registry=CollectorRegistry())
        assert isinstance(counter._value, Marked), hint
    finally:
        values.ValueClass = saved


def test_prometheus_client_multiprocess_values_are_chosen_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)
    compat.use_multiprocess_values(lambda: 7)
    chosen = values.ValueClass
    assert getattr(chosen, "_multiprocess", False) is True
    compat.use_multiprocess_values(lambda: 8)
    assert values.ValueClass is chosen


# --- flask-talisman ---------------------------------------------------------------------------

TALISMAN_OPTIONS: dict[str, Any] = {
    "force_https": False,
    "strict_transport_security": True,
    "content_security_policy": {"default-src": "'none'", "frame-ancestors": "'none'"},
    "frame_options": "DENY",
    "referrer_policy": "no-referrer",
}


def _headers_from(talisman_class: type, secure: bool) -> dict[str, str]:
    app = Flask(__name__)
    app.route("/x")(lambda: "x")
    talisman_class(app, **TALISMAN_OPTIONS)
    answer = app.test_client().get("/x", base_url="https://localhost" if secure else "http://localhost")
    return {name: value for name, value in answer.headers.items() if name not in ("Content-Length", "Content-Type")}


def test_flask_talisman_still_works_through_the_hooks_the_subclass_overrides() -> None:
    hint = _hint(
        "flask-talisman",
        version("flask-talisman"),
        compat.FLASK_TALISMAN_WRITTEN_AGAINST,
        "Talisman's request hooks (_force_https, _make_nonce, _set_response_headers) changed",
    )
    app = Flask(__name__)
    talisman = flask_talisman.Talisman(app)
    registered = {f.__name__ for f in app.before_request_funcs[None]} | {f.__name__ for f in app.after_request_funcs[None]}
    assert registered >= {"_force_https", "_make_nonce", "_set_response_headers"}, hint
    for name in ("_force_https", "_make_nonce"):
        assert list(inspect.signature(getattr(talisman, name)).parameters) == [], hint
    assert list(inspect.signature(talisman._set_response_headers).parameters) == ["response"], hint
    for secure in (False, True):
        assert _headers_from(compat.RememberingTalisman, secure) == _headers_from(flask_talisman.Talisman, secure), hint


def test_remembering_talisman_refuses_a_nonce() -> None:
    with pytest.raises(ValueError, match="nonce"):
        compat.RememberingTalisman(Flask(__name__), content_security_policy_nonce_in=["script-src"])


# --- no private name of another library outside gateway/compat.py -------------------------------

# Underscore names that are their library's documented, public API.
DOCUMENTED_UNDERSCORE_NAMES = {
    "_get_current_object": "werkzeug LocalProxy: documented, the object behind Flask's request/g/current_app",
    "_asdict": "SQLAlchemy Row and namedtuple: documented (the underscore only avoids clashing with field names)",
    "_replace": "namedtuple: documented",
    "_fields": "namedtuple: documented",
    "_srcfile": "logging: the logging HOWTO ('Optimization') documents setting logging._srcfile = None",
}
# Single uses, by their exact expression, each with its reason.
ALLOWED_EXPRESSIONS = {
    "handler._gateway": "the gateway's own marker attribute on the log handler it creates (observability.py)",
}


def test_flask_limiter_fallback_switch_still_exists_and_still_switches() -> None:
    app = Flask(__name__)
    limiter = Limiter(key_func=lambda: "k", storage_uri="memory://", in_memory_fallback_enabled=True)
    limiter.init_app(app)
    with app.app_context():
        store = limiter.limiter
        assert hasattr(limiter, compat.LIMITER_STORAGE_DEAD), _hint(
            "flask-limiter",
            version("flask-limiter"),
            compat.FLASK_LIMITER_WRITTEN_AGAINST,
            f"it has no {compat.LIMITER_STORAGE_DEAD!r}",
        )
        assert compat.limiter_storage_dead(limiter) is False
        compat.set_limiter_storage_dead(limiter, True)
        assert compat.limiter_storage_dead(limiter) is True
        assert limiter.limiter is not store, _hint(
            "flask-limiter",
            version("flask-limiter"),
            compat.FLASK_LIMITER_WRITTEN_AGAINST,
            "the flag no longer switches to the fallback strategy",
        )
        compat.set_limiter_storage_dead(limiter, False)
        assert limiter.limiter is store, _hint(
            "flask-limiter", version("flask-limiter"), compat.FLASK_LIMITER_WRITTEN_AGAINST, "the flag no longer switches back"
        )


def _own_names(tree: ast.Module) -> set[str]:
    """Names a module binds to the gateway's own modules and objects (imports from gateway)."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "gateway"):
            own.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            own.update((alias.asname or alias.name).split(".")[0] for alias in node.names if alias.name.startswith("gateway"))
    return own


def private_uses(source: str) -> list[str]:
    """Expressions in ``source`` that reach into another object's private names."""
    tree = ast.parse(source)
    own = _own_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if name in ("__code__", "__globals__"):
            found.append(ast.unparse(node))
            continue
        if not name.startswith("_") or name.startswith("__"):
            continue
        receiver = node.value
        if isinstance(receiver, ast.Name) and (receiver.id in ("self", "cls") or receiver.id in own):
            continue
        found.append(ast.unparse(node))
    return found


def test_the_scan_finds_reaches() -> None:
    source = "import http.client\nfrom gateway import usage\nclass A(B):\n    def f(self):\n"
    source += "        self._a, usage._b, super()._c(), lib._d, x.y._e, f.__code__, row._asdict()\n"
    assert sorted(private_uses(source)) == sorted(["super()._c", "lib._d", "x.y._e", "f.__code__", "row._asdict"])


def test_no_private_name_of_another_library_outside_compat() -> None:
    offending = []
    for path in sorted(GATEWAY.rglob("*.py")):
        if path == COMPAT:
            continue
        for expression in private_uses(path.read_text()):
            name = expression.rsplit(".", 1)[-1].removesuffix("()")
            if name in DOCUMENTED_UNDERSCORE_NAMES or expression in ALLOWED_EXPRESSIONS:
                continue
            offending.append(f"{path.relative_to(GATEWAY.parent)}: {expression}")
    assert not offending, "private names of other libraries belong in gateway/compat.py:\n" + "\n".join(offending)


def _gateway_modules() -> list[Any]:
    modules = [gateway]
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        modules.append(importlib.import_module(info.name))
    return modules


def test_no_class_outside_compat_overrides_a_library_private_method() -> None:
    offending = []
    for module in _gateway_modules():
        if module is compat:
            continue
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            for name, value in vars(cls).items():
                if not name.startswith("_") or name.startswith("__"):
                    continue
                function = value.fget if isinstance(value, property) else value
                if not inspect.isfunction(function) or function.__module__ != module.__name__:
                    continue  # set by a metaclass or a library's decorator, not written here
                for base in cls.__mro__[1:]:
                    if not base.__module__.startswith("gateway") and name in vars(base):
                        offending.append(f"{cls.__module__}.{cls.__qualname__}.{name} overrides {base.__module__}.{base.__qualname__}")
    assert not offending, "overrides of library internals belong in gateway/compat.py:\n" + "\n".join(offending)
