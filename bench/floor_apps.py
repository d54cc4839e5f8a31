"""Minimal WSGI apps that show what the serving stack costs before any gateway logic.

Used by bench/floor.py under the same gunicorn + gevent worker as the gateway:

    static          raw WSGI, fixed JSON answer, no upstream call
    urllib3         raw WSGI, body relayed through a urllib3 connection pool
    requests        raw WSGI, body relayed through a requests.Session
    flask_static    one Flask route, fixed answer, no upstream call
    flask_urllib3   one Flask route, body relayed through urllib3
    flask_requests  one Flask route, body relayed through a requests.Session
    flask_stream_requests  one Flask route relaying a stream with requests' iter_content
    flask_stream_urllib3   one Flask route relaying a stream with urllib3's read1 (what
                           arrived, one item per read: the gateway's own read)

Each reads the request body and relays the upstream's JSON answer unchanged: no
auth, quotas, headers or logging. None of this is the gateway's code.
"""

from __future__ import annotations

import os

import requests
import urllib3
from flask import Flask, Response, request

UPSTREAM = os.environ.get("FLOOR_UPSTREAM", "http://127.0.0.1:9100")
PATH = "/v1/chat/completions"
_BODY = b'{"id":"x","object":"chat.completion","choices":[]}'
_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def _urllib3_pool() -> urllib3.HTTPConnectionPool:
    host_port = UPSTREAM.split("://", 1)[1]
    host, _, port = host_port.partition(":")
    return urllib3.HTTPConnectionPool(host, int(port), maxsize=1000, retries=False, timeout=urllib3.Timeout(5, 120))


_POOL: urllib3.HTTPConnectionPool | None = None
_SESSION: requests.Session | None = None


def pool() -> urllib3.HTTPConnectionPool:
    global _POOL
    if _POOL is None:
        _POOL = _urllib3_pool()
    return _POOL


def session() -> requests.Session:
    global _SESSION
    if _SESSION is None:
        _SESSION = requests.Session()
        _SESSION.trust_env = False
        _SESSION.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1000, max_retries=0))
    return _SESSION


def _read_body(environ: dict) -> bytes:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    return environ["wsgi.input"].read(length) if length else b""


def _via_urllib3(body: bytes) -> tuple[int, bytes]:
    response = pool().urlopen("POST", PATH, body=body, headers=_HEADERS, redirect=False, preload_content=True)
    return response.status, response.data


def _via_requests(body: bytes) -> tuple[int, bytes]:
    response = session().request("POST", UPSTREAM + PATH, data=body, headers=_HEADERS, allow_redirects=False, timeout=(5, 120))
    return response.status_code, response.content


def _wsgi(relay):  # noqa: ANN001, ANN202
    def app(environ, start_response):  # noqa: ANN001, ANN202
        body = _read_body(environ)
        status, data = relay(body) if relay else (200, _BODY)
        start_response(f"{status} OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    return app


def _flask(relay) -> Flask:  # noqa: ANN001
    app = Flask(__name__)

    @app.post(PATH)
    def relay_view() -> Response:
        body = request.get_data()
        status, data = relay(body) if relay else (200, _BODY)
        return Response(data, status=status, mimetype="application/json")

    return app


static = _wsgi(None)
urllib3_app = _wsgi(_via_urllib3)
requests_app = _wsgi(_via_requests)
flask_static = _flask(None)
flask_urllib3 = _flask(_via_urllib3)
flask_requests = _flask(_via_requests)


def _stream_requests(body: bytes):  # noqa: ANN202
    answer = session().request(
        "POST", UPSTREAM + PATH, data=body, headers=_STREAM_HEADERS, allow_redirects=False, timeout=(5, 120), stream=True
    )
    return answer.iter_content(chunk_size=None), answer.close


def _stream_urllib3(body: bytes):  # noqa: ANN202
    answer = pool().urlopen("POST", PATH, body=body, headers=_STREAM_HEADERS, redirect=False, preload_content=False)

    def chunks():  # noqa: ANN202
        while data := answer.read1(65536):
            yield data

    return chunks(), answer.release_conn


_STREAM_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


def _flask_stream(open_stream) -> Flask:  # noqa: ANN001
    app = Flask(__name__)

    @app.post(PATH)
    def relay_view() -> Response:
        chunks, close = open_stream(request.get_data())
        response = Response(chunks, mimetype="text/event-stream", direct_passthrough=True)
        response.call_on_close(close)
        return response

    return app


flask_stream_requests = _flask_stream(_stream_requests)
flask_stream_urllib3 = _flask_stream(_stream_urllib3)
