"""The experiment runner's lanes: side by side, in order within a lane, results in job order,
and a failure stops both lanes."""

from __future__ import annotations

import threading
import time

import pytest

from fedpoint.simulations.runner import run_in_lanes


def test_two_lanes_run_at_once_and_results_keep_the_job_order():
    meet = threading.Barrier(2, timeout=10)  # passes only if a job of each lane runs at the same time
    started: list[str] = []

    def run(job: str) -> str:
        started.append(job)
        if job in ("fed-0", "local-0"):
            meet.wait()
        return job.upper()

    jobs = ["local-0", "fed-0", "local-1", "fed-1", "local-2"]
    assert run_in_lanes(jobs, run, lane_of=lambda j: int(j.startswith("fed"))) == [j.upper() for j in jobs]
    local = [j for j in started if j.startswith("local")]
    assert local == ["local-0", "local-1", "local-2"]  # one lane runs its jobs in order


def test_one_lane_runs_every_job_in_order_on_this_thread():
    threads, order = set(), []

    def run(job: int) -> int:
        threads.add(threading.get_ident())
        order.append(job)
        return job * 2

    assert run_in_lanes([3, 1, 2], run, lane_of=lambda j: 0) == [6, 2, 4]
    assert order == [3, 1, 2] and threads == {threading.get_ident()}


def test_a_failure_stops_the_other_lane_and_is_raised():
    ran: list[str] = []

    def run(job: str) -> str:
        ran.append(job)
        if job == "fed-0":
            raise RuntimeError("federation failed")
        time.sleep(0.3)
        return job

    with pytest.raises(RuntimeError, match="federation failed"):
        run_in_lanes(["local-0", "fed-0", "local-1", "local-2", "fed-1"], run,
                     lane_of=lambda j: int(j.startswith("fed")))
    assert "fed-1" not in ran and "local-2" not in ran  # nothing started after the failure


def test_ctrl_c_returns_at_once_and_calls_the_interrupt_hook():
    import _thread
    import signal

    stopped = []
    # Python's own SIGINT handler, whatever an earlier test in this worker installed
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def run(job: str) -> str:
        if job == "fed-0":
            _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the main thread
        time.sleep(5)  # a job that would keep the lanes busy
        return job

    t0 = time.perf_counter()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_in_lanes(["local-0", "fed-0", "local-1"], run, lane_of=lambda j: int(j.startswith("fed")),
                         on_interrupt=lambda: stopped.append(True))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - t0 < 3 and stopped == [True]
