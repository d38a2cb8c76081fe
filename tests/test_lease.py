"""One run per output: the lease in ``_work/lock.json`` (pipeline.lock) excludes, on a local
disk and on S3 (a moto server over HTTP), in threads of one process and in whole ``vidcurate
run`` processes started together; a run that loses it stops before its next commit.

Rounds: VIDCURATE_RACE_ROUNDS (default 12 in-process; whole runs: a twelfth of it, at least 1,
the last one with other settings for the second run). Many rounds, by hand:
VIDCURATE_RACE_ROUNDS=120 pytest tests/test_lease.py (make test-extended runs 36).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.lock import KEY, LeaseLost, OutputLock
from pipeline.spec import SpecError, Storage
from pipeline.storage import LocalStore, S3Store
from tests.conftest import RAY_START_TIMEOUT, ROOT, S3_CREDENTIALS, job_cmd, kill_session, run_cli
from tests.s3proxy import FaultProxy

ROUNDS = int(os.environ.get("VIDCURATE_RACE_ROUNDS", "12"))


@pytest.fixture(scope="module")
def s3(moto_s3):
    """moto serving one request at a time (tests/conftest.py moto_s3) with a bucket ``lease``."""
    import boto3

    boto3.client("s3", endpoint_url=moto_s3.endpoint, region_name="us-east-1").create_bucket(Bucket="lease")
    return moto_s3


class SlowLocal(LocalStore):
    """A local store each of whose reads and writes takes ``delay`` seconds more."""

    delay = 0.05

    def read_version(self, key):
        time.sleep(self.delay)
        return super().read_version(key)

    def write_if(self, key, data, version):
        time.sleep(self.delay)
        return super().write_if(key, data, version)


def _lease(**fields) -> bytes:
    now = time.time()
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "other", "started": now,
                       "renewed": now, **fields}).encode()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _race(make_store, contenders: int, offsets: list[float]) -> tuple[list, list]:
    """``contenders`` OutputLocks on one output, each starting ``offsets[i]`` s after the first;
    returns (the ones that took the lease, the refusals)."""
    taken, refused, barrier = [], [], threading.Barrier(contenders)

    def contend(i: int) -> None:
        lock = OutputLock(make_store(), log=lambda *_: None)
        barrier.wait()
        time.sleep(offsets[i])
        try:
            lock.acquire()
            taken.append(lock)
        except SpecError as err:
            refused.append(str(err))

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return taken, refused


def _race_rounds(make_store, seed: int) -> None:
    """Rounds over an output with no lease, a dead run's lease and an expired one: exactly one
    contender takes it every time, the lease names it, the others name it in their refusal."""
    rng = random.Random(seed)
    start = {"none": None, "dead": lambda: _lease(pid=_dead_pid()),
             "expired": lambda: _lease(host="elsewhere", renewed=time.time() - 3600)}
    for n in range(ROUNDS):
        store = make_store()
        how = list(start)[n % 3]
        if start[how] is not None:
            store.write(KEY, start[how]())
        offsets = [0.0] + [rng.uniform(0, 0.04) for _ in range(2)]
        taken, refused = _race(make_store, 3, offsets)
        assert len(taken) == 1 and len(refused) == 2, (n, how, offsets, refused)
        held = json.loads(store.read(KEY))
        assert held["token"] == taken[0].lease["token"]
        assert all(f"another vidcurate run (pid {os.getpid()} on {socket.gethostname()}, started " in r
                   for r in refused), refused
        taken[0].release()
        assert not store.exists(KEY)


def test_lease_race_on_a_slow_local_store(tmp_path):
    """Three OutputLocks, 0-40 ms apart, on a local output whose every read and write takes 50 ms."""
    _race_rounds(lambda: SlowLocal(tmp_path / "out"), seed=1)
    assert [p.name for p in (tmp_path / "out" / "_work").iterdir()] == ["lock.json.mutex"]


def test_lease_race_on_s3_behind_a_slow_proxy(s3, tmp_path):
    """The same on S3: moto behind a proxy that holds every request on the lease for 50 ms."""
    proxy = FaultProxy(s3.endpoint, delay_s=0.05)
    try:
        settings = Storage(endpoint_url=proxy.endpoint)
        _race_rounds(lambda: S3Store("s3://lease/race", settings), seed=2)
    finally:
        proxy.stop()


def _lose_and_stop(store) -> None:
    """A holder whose lease another run took: its renewal leaves the other's lease as it is,
    check() raises LeaseLost naming the holder, release deletes nothing."""
    lines = []
    lock = OutputLock(store, log=lines.append, renew_s=0.1, stale_s=5)
    lock.acquire()
    lock.check()
    started = time.time() - 60
    other = _lease(host="node-7", pid=4242, token="taker", started=started)
    store.write(KEY, other)
    deadline = time.time() + 10
    while lock.lost is None and time.time() < deadline:
        time.sleep(0.05)
    assert lock.lost is not None, "the renewal noticed"
    assert store.read(KEY) == other  # the renewal wrote nothing over it
    with pytest.raises(LeaseLost, match=r"taken by another vidcurate run \(pid 4242 on node-7, started "
                       + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))):
        lock.check()
    lock.release()
    assert store.read(KEY) == other
    assert any("taken by another vidcurate run" in line for line in lines)


def test_a_holder_that_loses_its_lease_stops_local(tmp_path):
    _lose_and_stop(LocalStore(tmp_path))


def test_a_holder_that_loses_its_lease_stops_s3(s3):
    _lose_and_stop(S3Store("s3://lease/lost", Storage(endpoint_url=s3.endpoint)))


def test_check_reads_the_lease_itself(tmp_path):
    """A lease replaced between renewals is found by check() before the next commit."""
    store = LocalStore(tmp_path)
    with OutputLock(store, log=lambda *_: None) as lock:  # renewals every 30 s: none during the test
        lock.check()
        store.write(KEY, _lease(token="taker", pid=99))
        lock.check(max_age_s=60)  # a read made within the last minute is trusted
        with pytest.raises(LeaseLost, match=r"\(pid 99 on "):
            lock.check()
    assert json.loads(store.read(KEY))["token"] == "taker"
    store.delete(KEY)
    with OutputLock(store, log=lambda *_: None) as lock:
        store.delete(KEY)
        with pytest.raises(LeaseLost, match="lease .* was deleted"):
            lock.check()


def test_a_holder_that_cannot_renew_stops_before_its_lease_goes_stale(tmp_path):
    class Down(LocalStore):
        down = False

        def write_if(self, key, data, version):
            if self.down:
                raise OSError("the store is unreachable")
            return super().write_if(key, data, version)

    store, lines = Down(tmp_path), []
    lock = OutputLock(store, log=lines.append, renew_s=0.1, stale_s=0.6)
    lock.acquire()
    store.down = True
    time.sleep(0.2)
    lock.check()  # renewals fail, but the lease is young
    time.sleep(0.4)  # past stale_s - 2 * renew_s: another run could soon take it
    with pytest.raises(LeaseLost, match=r"last renewed \d+s ago"):
        lock.check()
    assert any("renewing the output lease failed (the store is unreachable)" in line for line in lines)
    lock.release()


def test_a_store_without_conditional_writes_is_refused_or_warned(s3, tmp_path):
    """A store that ignores If-None-Match / If-Match (a proxy strips them) is found at start:
    require refuses it, warn runs with a warning."""
    proxy = FaultProxy(s3.endpoint, strip_conditions=True)
    try:
        store = S3Store("s3://lease/plain", Storage(endpoint_url=proxy.endpoint))
        with pytest.raises(SpecError, match=r"storage\.conditional_writes: .* ignores If-None-Match: \* on PUT"):
            OutputLock(store, log=lambda *_: None).acquire()
        assert not store.exists(KEY)
        lines = []
        with OutputLock(store, log=lines.append, conditional_writes="warn"):
            assert store.exists(KEY)
        assert "WARNING" in lines[0] and "could both take its lease" in lines[0]
        assert not store.exists(KEY)
    finally:
        proxy.stop()
    assert S3Store("s3://lease/plain", Storage(endpoint_url=s3.endpoint)).conditional_writes(KEY) is None

    class NoLocks(LocalStore):
        def _exclusive(self, path):
            raise OSError(37, "No locks available")

    with pytest.raises(SpecError, match="takes no exclusive file lock or hard link"):
        OutputLock(NoLocks(tmp_path), log=lambda *_: None).acquire()


def test_lease_through_dropped_answers(s3):
    """Conditional writes retried after their first try landed (the answer was lost) answer 412:
    the lease is still taken, renewed and released, and a second run is still refused."""
    proxy = FaultProxy(s3.endpoint, rate=0.25, kinds=("drop_after", "503"), seed=3)
    try:
        store = S3Store("s3://lease/dropped", Storage(endpoint_url=proxy.endpoint))
        for _ in range(3):
            lock = OutputLock(store, log=lambda *_: None, renew_s=0.05, stale_s=5)
            lock.acquire()
            time.sleep(0.3)  # a few renewals
            lock.check()
            assert lock.lost is None
            with pytest.raises(SpecError, match="another vidcurate run"):
                OutputLock(store, log=lambda *_: None).acquire()
            lock.release()
            assert not store.exists(KEY)
        assert proxy.faults["drop_after"] > 0
    finally:
        proxy.stop()


# --- whole runs -------------------------------------------------------------------------------

RUN_ROUNDS = max(1, ROUNDS // 12)  # whole runs: each round is one full run of the job


def _start(cmd: list[str], env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"vidcurate-lease-{os.getpid()}-{time.time_ns()}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 900) -> tuple[int, str]:
    """Wait for a run; kill what is left of its session (its local Ray)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        kill_session(proc)
    text = log.read_text()
    log.unlink()
    return proc.returncode, text


def _run(cmd, env=None, tries: int = 3) -> tuple[int, str]:
    """Run a job to its end; again (up to ``tries`` in all) when Ray's own start timed out."""
    rc, out, err = run_cli(cmd, env, tries=tries)
    return rc, out + err


def _race_runs(cmds: list[list[str]], env: dict, offset: float) -> list[tuple[int, str, int]]:
    """Start the runs together: each waits in the lease (VIDCURATE_LEASE_AT) for the same
    moment, the second ``offset`` s later. Returns [(rc, output, pid)]."""
    at = time.time() + 12  # past every process's start-up, on a busy machine too
    started = [_start(cmd, {**env, "VIDCURATE_LEASE_AT": f"{at + i * offset:.6f}"}) for i, cmd in enumerate(cmds)]
    return [(*_finish(proc, log), proc.pid) for proc, log in started]


def offset_of(n: int) -> float:
    """How much later the second run of round ``n`` reaches the lease."""
    return [0.0, 0.005, 0.02, 0.05][n % 4]


def _one_won(results, holder_host: str, rerun) -> int:
    """Exactly one run stopped, with exit 2 naming the other, which took the lease and ended
    well (``rerun(i)`` runs run i again, alone, if its local Ray did not start in time). Returns
    the winner's index."""
    refused = [i for i, (rc, text, _) in enumerate(results) if rc == 2 and "another vidcurate run (pid " in text]
    assert len(refused) == 1, [(rc, text[-1500:]) for rc, text, _ in results]
    won, loser = 1 - refused[0], results[refused[0]]
    assert f"another vidcurate run (pid {results[won][2]} on {holder_host}, started " in loser[1], loser[1][-2000:]
    assert "vidcurate summary" not in loser[1]
    rc, text, _ = results[won]
    if rc != 0 and RAY_START_TIMEOUT in text:
        print(f"run {won} took the lease and its local Ray did not start in time; it runs again", flush=True)
        rc, text = rerun(won)
    assert rc == 0, text[-3000:]
    return won


def _local_snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and (p.relative_to(out).parts[0] != "_work" or p.relative_to(out).parts[1] == "partitions")}


@pytest.fixture(scope="module")
def local_job(demo, tmp_path_factory):
    """The small corpus's job (tests/conftest.py job_cmd) on one local output: (the output's
    path, ``single(extra)``: the files of one undisturbed run with ``extra`` settings, made once
    when first asked for, the output removed after)."""
    out = tmp_path_factory.mktemp("lease") / "out"
    made: dict[tuple, dict] = {}

    def single(extra=()) -> dict[str, bytes]:
        extra = tuple(extra)
        if extra not in made:
            shutil.rmtree(out, ignore_errors=True)
            rc, text = _run(job_cmd(demo, out, extra))
            assert rc == 0, text[-3000:]
            made[extra] = _local_snapshot(out)
            shutil.rmtree(out)
        return made[extra]

    return out, single


OTHER = ("caption.max_new_tokens=12",)  # the second run's other settings in the last round


@pytest.mark.slow
def test_two_runs_race_on_a_local_output(demo, local_job):
    """Two ``vidcurate run`` on one local output, started together (0-50 ms apart), several
    times, one round with other settings for the second: exactly one proceeds, the output is
    byte for byte a single run's, the other names the holder."""
    out, single = local_job
    shutil.rmtree(out, ignore_errors=True)
    for n in range(RUN_ROUNDS):
        second = OTHER if n == RUN_ROUNDS - 1 else ()
        cmds = [job_cmd(demo, out), job_cmd(demo, out, second)]
        results = _race_runs(cmds, {}, offset=offset_of(n))
        won = _one_won(results, socket.gethostname(), lambda i: _run(cmds[i]))
        print(f"local round {n}: run {won} of 2 went on (second {offset_of(n) * 1000:.0f} ms later"
              f"{', other settings' if second else ''})", flush=True)
        got = _local_snapshot(out)
        shutil.rmtree(out)
        assert got == single(second if won == 1 else ()), f"round {n}: the output differs from a single run's"


@pytest.mark.slow
def test_two_runs_race_on_s3(s3_job):
    """The same on moto S3 (tests/conftest.py S3Job), behind a proxy that holds each request on
    the lease for 100 ms."""
    try:
        for n in range(RUN_ROUNDS):
            second = OTHER if n == RUN_ROUNDS - 1 else ()
            s3_job.clear()
            s3_job.calm()
            s3_job.proxy.delay_s = 0.1
            cmds = [s3_job.cmd(), s3_job.cmd(second)]
            results = _race_runs(cmds, S3_CREDENTIALS, offset=offset_of(n))
            won = _one_won(results, socket.gethostname(), lambda i: _run(cmds[i], S3_CREDENTIALS))
            print(f"s3 round {n}: run {won} of 2 went on (second {offset_of(n) * 1000:.0f} ms later"
                  f"{', other settings' if second else ''})", flush=True)
            got = s3_job.output()
            s3_job.clear()
            expected, _ = s3_job.single(second if won == 1 else ())
            assert got == expected, f"round {n}: the output differs from a single run's"
    finally:
        s3_job.calm()
        s3_job.clear()


def _committed_work(out: Path) -> dict[str, int]:
    """Per-video results committed in a local output, by stage."""
    work = out / "_work"
    return {d.name: n for d in sorted(work.iterdir()) if d.is_dir() and d.name not in ("logs", "partitions")
            if (n := sum(1 for f in d.rglob("*") if f.is_file() and not f.name.endswith(".tmp")))}


@pytest.mark.slow
def test_a_run_that_loses_its_lease_stops_and_its_work_is_reused(demo, local_job):
    """Another run's lease replaces this run's mid-run: it exits 4 naming the holder, before
    writing a partition or the manifest; the next run reuses what it committed and ends with a
    single run's output."""
    out, single = local_job
    expected = single()
    shutil.rmtree(out, ignore_errors=True)
    proc, log = _start(job_cmd(demo, out))
    deadline = time.time() + 600
    while not list((out / "_work").glob("analyze/*/*.parquet")):  # the run has committed work
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    started = time.time() - 5
    taker = _lease(host="node-7", pid=4242, token="taker", started=started)
    (out / KEY).write_bytes(taker)
    rc, text = _finish(proc, log)
    assert rc == 4, text[-3000:]
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))
    assert f"error: output.uri: {out} was taken by another vidcurate run (pid 4242 on node-7, started {when})" \
        in text, text[-3000:]
    assert (out / KEY).read_bytes() == taker  # left as it is
    assert not (out / "manifest.json").exists() and not (out / "_work" / "partitions").exists()
    committed = _committed_work(out)
    assert committed.get("analyze"), committed
    (out / KEY).unlink()  # the taker is gone
    rc, text = _run(job_cmd(demo, out))
    assert rc == 0, text[-3000:]
    reused = next((line for line in text.splitlines() if line.startswith("[resume] committed results reused: ")),
                  text[-3000:])
    assert all(f" {stage} {n}" in reused for stage, n in committed.items()), (committed, reused)
    assert _local_snapshot(out) == expected
    shutil.rmtree(out)
