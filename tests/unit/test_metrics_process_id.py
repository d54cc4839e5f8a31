"""The process id prometheus-client checks on every metric update: remembered, renewed by fork."""

from __future__ import annotations

import os

from gateway import compat


def test_process_id_is_this_process() -> None:
    assert compat.process_id() == os.getpid()


def test_a_forked_child_gets_its_own_process_id() -> None:
    # gunicorn forks its workers from the master: each must write its own metric files.
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(write_end, str(compat.process_id()).encode())
        os._exit(0)
    os.close(write_end)
    reported = int(os.read(read_end, 32).decode())
    os.close(read_end)
    os.waitpid(child, 0)
    assert reported == child != os.getpid()
    assert compat.process_id() == os.getpid()
