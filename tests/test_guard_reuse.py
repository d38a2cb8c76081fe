"""The guard's reusable child: one process serves call after call, and no verdict depends on
what an earlier call left behind."""

from __future__ import annotations

import pytest

from stages.guard import GuardFailure, run_guarded
from tests import guard_targets as t


def _run(fn, *args, memory_mb=300, reuse=True):
    return run_guarded(fn, args, timeout_s=30, memory_mb=memory_mb, reuse=reuse)


def test_one_child_serves_consecutive_calls_and_a_new_one_follows_a_failure():
    first = _run(t.pid)
    assert _run(t.pid) == first  # no fork per call
    assert _run(t.pid, reuse=False) != first  # a child of its own when asked
    with pytest.raises(GuardFailure):
        _run(t.boom)
    after = _run(t.pid)
    assert after != first and _run(t.pid) == after
    assert _run(t.rejected) == {"status": "rejected", "reason": "bad_file"}  # a bad file's result comes back ...
    assert _run(t.pid) != after  # ... and the child that met it is not used again
    other = _run(t.pid, memory_mb=500)  # another budget: another child
    assert other != after and _run(t.pid, memory_mb=500) == other


def test_a_failure_after_earlier_calls_is_decided_by_a_fresh_child():
    _run(t.pid)
    assert _run(t.taint) == "tainted"
    assert _run(t.crash_if_tainted) == "clean"  # crashed where it was tainted, ran clean in a fresh child
    with pytest.raises(GuardFailure) as info:  # a real crash stays one, decided by a fresh child
        _run(t.segfault)
    assert info.value.reason == "decoder_crash"
    with pytest.raises(GuardFailure) as info:
        _run(t.hog)
    assert info.value.reason == "memory_limit"


def test_a_child_whose_memory_grew_is_replaced():
    start = _run(t.pid)
    _run(t.leak, 10)
    assert _run(t.pid) == start  # 10 MB of 300: kept
    _run(t.leak, 100)  # more than a quarter of the budget stays mapped
    assert _run(t.pid) != start
