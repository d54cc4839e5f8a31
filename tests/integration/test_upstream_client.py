"""The upstream client's connection pool: kept-alive connections, and ones the upstream closed."""

from __future__ import annotations

import socket

from gateway.upstream.client import UpstreamClient, UpstreamConfig
from gateway.upstream.connection import QuickHeadResponse, QuickLivenessCheck
from tests.fakes.upstream import FakeUpstream

BODY = b'{"model": "m", "prompt": "hi"}'


def _client(upstream: FakeUpstream) -> UpstreamClient:
    return UpstreamClient(
        UpstreamConfig(base_url=upstream.base_url, api_key="sk-test", connect_timeout=2, read_timeout=5, pool_size=4, trust_env=False)
    )


def _call(client: UpstreamClient) -> int:
    answer = client.send("POST", "/completions", BODY, "req-1", stream=False)
    try:
        answer.raw.read()
        return answer.status_code
    finally:
        answer.close()


def test_a_kept_alive_connection_is_reused() -> None:
    with FakeUpstream() as upstream:
        client = _client(upstream)
        assert [_call(client) for _ in range(3)] == [200, 200, 200]
        assert len(upstream.requests) == 3
        assert upstream.open_connections == 1
        client.close()


def test_answers_are_parsed_by_the_quick_head_response() -> None:
    with FakeUpstream() as upstream:
        client = _client(upstream)
        assert client._current_route().pool.ConnectionCls.response_class is QuickHeadResponse
        answer = client.send("POST", "/completions", BODY, "req-1", stream=False)
        try:
            assert isinstance(answer.raw._original_response, QuickHeadResponse)
            assert answer.headers["content-type"].startswith("application/json")
            assert int(answer.headers["Content-Length"]) == len(answer.raw.read())
        finally:
            answer.close()
        assert _call(client) == 200 and upstream.open_connections == 1  # kept alive after it
        client.close()


def test_a_connection_the_upstream_closed_while_idle_is_replaced_not_reused() -> None:
    # The fake closes a kept-alive connection after 0.2 s without a request. Reusing it
    # would fail the next call (no retries upstream); the pool must see it is gone.
    with FakeUpstream(idle_timeout=0.2) as upstream:
        client = _client(upstream)
        assert issubclass(client._current_route().pool.ConnectionCls, QuickLivenessCheck)
        assert _call(client) == 200
        assert upstream.wait_for_open_connections(1, 2)
        assert upstream.wait_until_no_open_connections(3)  # closed by the upstream
        assert [_call(client) for _ in range(2)] == [200, 200]
        assert len(upstream.requests) == 3
        client.close()


class _Connection(QuickLivenessCheck):
    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock


def test_liveness_check_follows_urllib3s_rule() -> None:
    ours, theirs = socket.socketpair()
    try:
        assert _Connection(ours).is_connected  # idle, nothing to read: still usable
        theirs.sendall(b"unasked")
        assert not _Connection(ours).is_connected  # readable: not safe to reuse
        ours.recv(16)
        assert _Connection(ours).is_connected
        theirs.close()
        assert not _Connection(ours).is_connected  # the peer closed it
    finally:
        ours.close()
    assert not _Connection(None).is_connected
