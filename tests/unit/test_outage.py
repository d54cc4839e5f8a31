"""The outage policy for our own counters (concurrency slots, token counters)."""

from __future__ import annotations

import pytest

from gateway.errors import LimitStorageUnavailable
from gateway.outage import on_store


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
