"""One run per output: the lease in ``_work/lock.json`` (pipeline.lock) excludes, on a local
disk and on S3 (a moto server over HTTP), in threads of one process and in whole ``vidcurate
run`` processes started together; a run that loses it stops before its next commit.

Rounds: VIDCURATE_RACE_ROUNDS (default 12 in-process; whole runs: a twelfth of it, at least 1,
and one more where the second run has other settings). Many rounds, by hand:
VIDCURATE_RACE_ROUNDS=120 pytest tests/test_lease.py.
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
from tests.conftest import ROOT
from tests.s3proxy import FaultProxy, MotoServer

ROUNDS = int(os.environ.get("VIDCURATE_RACE_ROUNDS", "12"))
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAVIDCURATELEASE", "AWS_SECRET_ACCESS_KEY": "vidcurate-lease-test",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    """moto serving one request at a time (see tests/s3proxy.py) with a bucket ``lease``."""
    import boto3

    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = MotoServer(threaded=False)
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket="lease")
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


def _job(demo: dict, out: str, extra: list[str] = ()) -> list[str]:
    root = demo["root"]
    sets = [f"inputs.paths=[{root}/videos/synthetic_cuts.mp4]", f"output.uri={out}",
            f"models.clip.pretrained={demo['clip']['pretrained']}", f"models.clip.config={demo['clip']['config']}",
            f"models.vlm.name_or_path={demo['vlm']['name_or_path']}", "output.samples_per_shard=2", f"models.clip.aesthetic_head={demo['aesthetic']}", *extra]
    return [sys.executable, "-m", "pipeline", "run", str(ROOT / "jobs" / "demo.yaml"), "--quiet"] + \
        [a for s in sets for a in ("--set", s)]


def _start(cmd: list[str], env: dict | None = None) -> tuple[subprocess.Popen, Path]:
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"vidcurate-lease-{os.getpid()}-{time.time_ns()}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _finish(proc: subprocess.Popen, log: Path, timeout: float = 900) -> tuple[int, str]:
    """Wait for a run; kill what is left of its session (its local Ray) by process group."""
    try:
        proc.wait(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
    text = log.read_text()
    log.unlink()
    return proc.returncode, text


# What Ray says when its local node does not come up in time (on a machine busy with other
# work): the machine's failure, not the lease's. A run that fails so is run again.
RAY_START_TIMEOUT = "The current node timed out during startup"


def _run(cmd, env=None, tries: int = 3) -> tuple[int, str]:
    """Run a job to its end; again (up to ``tries`` in all) when Ray's own start timed out."""
    for _ in range(tries):
        rc, text = _finish(*_start(cmd, env))
        if rc == 0 or RAY_START_TIMEOUT not in text:
            break
        print("the local Ray did not start in time; the run again", flush=True)
    return rc, text


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


@pytest.mark.slow
def test_two_runs_race_on_a_local_output(demo, tmp_path):
    """Two ``vidcurate run`` on one local output, started together (0-50 ms apart), several
    times, one round with other settings for the second: exactly one proceeds, the output is
    byte for byte a single run's, the other names the holder."""
    out = tmp_path / "out"
    other = ["caption.max_new_tokens=12"]
    baselines = {}

    def baseline(extra: tuple) -> dict:
        if extra not in baselines:
            rc, text = _run(_job(demo, str(out), list(extra)))
            assert rc == 0, text[-3000:]
            baselines[extra] = _local_snapshot(out)
            shutil.rmtree(out)
        return baselines[extra]

    for n in range(RUN_ROUNDS + 1):
        second = tuple(other) if n == RUN_ROUNDS else ()
        cmds = [_job(demo, str(out)), _job(demo, str(out), list(second))]
        results = _race_runs(cmds, {}, offset=offset_of(n))
        won = _one_won(results, socket.gethostname(), lambda i: _run(cmds[i]))
        print(f"local round {n}: run {won} of 2 went on (second {offset_of(n) * 1000:.0f} ms later"
              f"{', other settings' if second else ''})", flush=True)
        got = _local_snapshot(out)
        shutil.rmtree(out)
        assert got == baseline(second if won == 1 else ()), f"round {n}: the output differs from a single run's"


def _s3_snapshot(client, bucket: str, prefix: str) -> dict[str, bytes]:
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            key = o["Key"][len(prefix) + 1:]
            if not key.startswith("_work/") or key.startswith("_work/partitions/"):
                out[key] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def _s3_clear(client, bucket: str, prefix: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=o["Key"])


@pytest.mark.slow
def test_two_runs_race_on_s3(demo, s3):
    """The same on moto S3, behind a proxy that holds each request on the lease for 100 ms."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    proxy = FaultProxy(s3.endpoint, delay_s=0.1)
    uri, endpoint = "s3://lease/runs", f"storage.endpoint_url={proxy.endpoint}"
    other = ["caption.max_new_tokens=12"]
    baselines = {}
    try:
        def baseline(extra: tuple) -> dict:
            if extra not in baselines:
                rc, text = _run(_job(demo, uri, [endpoint, *extra]), CREDENTIALS)
                assert rc == 0, text[-3000:]
                baselines[extra] = _s3_snapshot(client, "lease", "runs")
                _s3_clear(client, "lease", "runs")
            return baselines[extra]

        for n in range(RUN_ROUNDS + 1):
            second = tuple(other) if n == RUN_ROUNDS else ()
            cmds = [_job(demo, uri, [endpoint]), _job(demo, uri, [endpoint, *second])]
            results = _race_runs(cmds, CREDENTIALS, offset=offset_of(n))
            won = _one_won(results, socket.gethostname(), lambda i: _run(cmds[i], CREDENTIALS))
            print(f"s3 round {n}: run {won} of 2 went on (second {offset_of(n) * 1000:.0f} ms later"
                  f"{', other settings' if second else ''})", flush=True)
            got = _s3_snapshot(client, "lease", "runs")
            _s3_clear(client, "lease", "runs")
            assert got == baseline(second if won == 1 else ()), f"round {n}: the output differs from a single run's"
    finally:
        proxy.stop()


@pytest.mark.slow
def test_a_run_that_loses_its_lease_stops_and_its_work_is_reused(demo, tmp_path):
    """Another run's lease replaces this run's mid-run: it exits 4 naming the holder, before
    writing a partition or the manifest; the next run reuses what it committed and ends with a
    single run's output."""
    out = tmp_path / "out"
    rc, text = _run(_job(demo, str(out)))
    assert rc == 0, text[-3000:]
    expected = _local_snapshot(out)
    shutil.rmtree(out)
    proc, log = _start(_job(demo, str(out)))
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
    committed = sorted(p.relative_to(out).as_posix() for p in (out / "_work").rglob("*.parquet"))
    assert committed
    (out / KEY).unlink()  # the taker is gone
    rc, text = _run(_job(demo, str(out)))
    assert rc == 0, text[-3000:]
    assert "[resume] committed results reused: analyze 1" in text, text[-3000:]
    assert _local_snapshot(out) == expected
