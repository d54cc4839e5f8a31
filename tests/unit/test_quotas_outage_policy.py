"""The outage policy for our own counters (concurrency slots, token counters)."""

from __future__ import annotations

import socket

import pytest
import redis
from limits.errors import StorageError
from redis import exceptions as redis_errors

from gateway.errors import LimitStorageUnavailable
from gateway.quotas.outage import is_outage, on_store
from tests.conftest import REDIS_URL


class Store:
    def __init__(self, name: str, fails: bool = False) -> None:
        self.name, self.fails = name, fails

    def answer(self) -> str:
        if self.fails:
            raise ConnectionError("down")
        return self.name


def test_shared_store_answers() -> None:
    shared, local = Store("shared"), Store("local")
    assert on_store(shared, local, fail_open=False, call=Store.answer) == (shared, "shared")


def test_no_shared_store_means_local() -> None:
    local = Store("local")
    assert on_store(None, local, fail_open=False, call=Store.answer) == (local, "local")


def test_open_falls_back_to_the_process() -> None:
    local = Store("local")
    assert on_store(Store("shared", fails=True), local, fail_open=True, call=Store.answer) == (local, "local")


def test_closed_is_a_503() -> None:
    with pytest.raises(LimitStorageUnavailable):
        on_store(Store("shared", fails=True), Store("local"), fail_open=False, call=Store.answer)


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (redis_errors.ConnectionError("refused"), True),
        (redis_errors.TimeoutError("timed out"), True),
        (redis_errors.BusyLoadingError("loading"), True),
        (redis_errors.ReadOnlyError("replica"), True),
        (redis_errors.OutOfMemoryError("OOM"), True),
        (redis_errors.ClusterDownError("down"), True),
        (redis_errors.InvalidResponse("garbage"), True),
        (ConnectionResetError(), True),
        (RuntimeError("anything else"), True),
        (redis_errors.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (redis_errors.ResponseError("ERR invalid expire time in 'expire' command"), False),
        (redis_errors.DataError("Invalid input"), False),
    ],
)
def test_only_a_store_that_cannot_serve_is_an_outage(error: Exception, outage: bool) -> None:
    assert is_outage(error) is outage
    assert is_outage(StorageError(error)) is outage  # as limits wraps it


def test_a_real_refused_command_is_not_an_outage_but_a_dead_server_is(redis_prefix) -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=1)
    key = f"{redis_prefix}:counter"
    client.set(key, "1")
    with pytest.raises(redis_errors.RedisError) as refused:
        client.lpush(key, "x")  # WRONGTYPE: one key's problem
    assert not is_outage(refused.value)
    with pytest.raises(redis_errors.RedisError) as refused:
        client.expire(key, 3110399999999968896000)  # the absurd window's expiry
    assert not is_outage(refused.value)
    dead = redis.Redis(host="127.0.0.1", port=_closed_port(), socket_connect_timeout=1)
    with pytest.raises(redis_errors.RedisError) as down:
        dead.ping()
    assert is_outage(down.value)
    client.close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
