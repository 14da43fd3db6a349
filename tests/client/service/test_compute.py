"""The model's compute thread serves users in turn: one user's burst never queues another behind it all."""

from __future__ import annotations

import threading

import pytest

from fedpoint.client.service.compute import FairCompute


def test_a_users_burst_does_not_queue_another_user_behind_all_of_it():
    compute = FairCompute("test-fair")
    gate, order = threading.Event(), []
    try:
        held = compute.submit("gate", gate.wait, 30)  # the thread is busy until the burst is queued
        burst = [compute.submit("alice", order.append, f"alice-{i}") for i in range(6)]
        bob = compute.submit("bob", order.append, "bob")
        gate.set()
        for future in (held, *burst, bob):
            future.result(timeout=30)
    finally:
        compute.shutdown()
    assert order.index("bob") == 1, order  # after alice's first item, not after all six (FIFO: index 6)
    assert [o for o in order if o.startswith("alice")] == [f"alice-{i}" for i in range(6)], "a user's own order kept"


def test_errors_reach_the_caller_and_the_thread_keeps_serving():
    compute = FairCompute("test-fair-errors")
    try:
        failed = compute.submit("alice", lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            failed.result(timeout=30)
        assert compute.submit("bob", lambda x: x + 1, 41).result(timeout=30) == 42
    finally:
        compute.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        compute.submit("alice", print)
