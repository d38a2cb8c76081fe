"""Losing a worker node: a real 3-node Ray cluster on this machine, started and stopped by this test.

A head (1 CPU) and two worker nodes (2 CPUs each), each its own ``ray start --block`` in its
own process group, temp dir and ports, with a token of the cluster's own. The demo job is
submitted with ``ray job submit`` twice: once undisturbed (the baseline), once with one worker
node SIGKILLed mid-run. The disturbed job must succeed, or fail in bounded time saying why and
then succeed when rerun; the final output must equal the baseline's byte for byte, with no
sample key twice. No step may hang: every wait has a deadline, and on a deadline the test fails
with the job's status, logs and the cluster's resource picture.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import OPTIONAL_OFF, ROOT, demo_overrides
from tests.test_commit import _check_manifest, _snapshot

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
HEAD_CPUS, WORKER_CPUS, WORKERS = 1, 2, 2
CLUSTER_START_S = 240     # all three nodes alive (2 slow cores: three raylets, agents, dashboard)
BASELINE_S = 600          # the undisturbed job, from submit to its end
WORKER_PORTS = 50         # worker processes' port range per node
TERMINATE_S = 20          # SIGTERM grace per node at teardown before SIGKILL
TASK_WAIT_S = 10          # after the first analysis commit: the wait for a worker node running a task


def _disturbed_deadline(baseline_s: float) -> float:
    """A disturbed job (and its rerun) gets room for lost work redone, actor restarts and a
    smaller cluster, never more than BASELINE_S: twice the undisturbed run plus two minutes."""
    return min(float(BASELINE_S), 120 + 2 * baseline_s)


# --- processes --------------------------------------------------------------------------------

def _stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgid, sid) of a live process, None when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[2]), int(fields[3])


def _pids() -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and int(d.name) != os.getpid()]


def _mentions(pid: int, markers: list[str]) -> bool:
    """Whether a process's command line, working dir or stdout/stderr names one of ``markers``.

    Ray workers rewrite their command line (``ray::IDLE``), but their stdout and stderr stay
    open on log files in their node's temp dir, and a job driver's cwd is under the head's."""
    texts = []
    try:
        texts.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    except OSError:
        return False
    for link in ("cwd", "fd/1", "fd/2"):
        try:
            texts.append(os.readlink(f"/proc/{pid}/{link}"))
        except OSError:
            pass
    return any(m in t for m in markers for t in texts)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _pids():
        if (st := _stat(pid)) is not None:
            children.setdefault(st[0], []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


_KILLED: set[int] = set()  # every pid SIGKILLed here, to wait for at teardown


def _kill(pids) -> None:
    for pid in pids:
        _KILLED.add(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _sweep(markers: list[str], deadline_s: float = 30) -> list[int]:
    """SIGKILL, until none is left, every process naming a marker, every process in the session
    of such a process that leads one (a job driver), and the job supervisor's watcher of that
    session (``... kill -9 -<pgid>``); returns the pids still alive at the deadline (none, normally)."""
    deadline = time.time() + deadline_s
    sessions: set[int] = set()
    while True:
        left = []
        for pid in _pids():
            if (st := _stat(pid)) is None:
                continue
            if _mentions(pid, markers):
                left.append(pid)
                if st[2] == pid:
                    sessions.add(pid)
        watchers = [f"kill -9 -{s}" for s in sessions]
        for pid in _pids():
            if pid not in left and (st := _stat(pid)) is not None and (st[2] in sessions or _mentions(pid, watchers)):
                left.append(pid)
        if not left or time.time() > deadline:
            return left
        _kill(left)
        time.sleep(0.3)


# --- ports ------------------------------------------------------------------------------------

class _Ports:
    """Free TCP ports handed out from one random block below the ephemeral range (so no
    outgoing connection takes one between the check and Ray binding it), never twice."""

    def __init__(self, count: int):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        for _ in range(200):
            base = random.randrange(10000, low - count)
            if all(self._free(p) for p in range(base, base + count)):
                self.next, self.end = base, base + count
                return
        raise RuntimeError(f"no block of {count} free ports below {low}")

    @staticmethod
    def _free(port: int) -> bool:
        for host in ("0.0.0.0", "127.0.0.1"):
            with socket.socket() as s:
                try:
                    s.bind((host, port))
                except OSError:
                    return False
        return True

    def take(self, n: int = 1) -> int:
        """The first of ``n`` consecutive ports."""
        if self.next + n > self.end:
            raise RuntimeError("port block exhausted")
        self.next += n
        return self.next - n


# --- the cluster ------------------------------------------------------------------------------

@dataclass
class Node:
    name: str
    temp: str             # its --temp-dir: also the marker of its processes
    proc: subprocess.Popen  # `ray start --block`, leader of its own process group
    log: Path
    ports: dict
    killed: bool = False


@dataclass
class Cluster:
    root: str
    env: dict
    token: str
    gcs: str
    url: str
    nodes: list[Node] = field(default_factory=list)
    markers: list[str] = field(default_factory=list)  # job outputs: found in drivers' command lines

    @property
    def workers(self) -> list[Node]:
        return [n for n in self.nodes if n.name != "head"]

    def http(self, path: str, timeout: float = 10) -> dict:
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())

    def ray(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, check=False,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(e.cmd, -1, str(e.stdout or ""), f"timed out after {timeout}s")

    def alive_nodes(self) -> int:
        try:
            data = self.http("/api/v0/nodes?limit=100&detail=false")
        except (OSError, ValueError):
            return 0
        return sum(1 for n in data.get("data", {}).get("result", {}).get("result", []) if n.get("state") == "ALIVE")

    def node_logs(self) -> str:
        parts = []
        for n in self.nodes:
            parts.append(f"--- {n.name}: ray start (rc={n.proc.poll()}) ---\n" + _tail(n.log, 2000))
            for f in ("raylet.out", "raylet.err", "gcs_server.out", "gcs_server.err"):
                for p in Path(n.temp).glob(f"session_*/logs/{f}"):
                    parts.append(f"--- {n.name}: {p.name} ---\n" + _tail(p, 1200))
        return "\n".join(parts)

    def state(self) -> str:
        """`ray status` (resources in use and pending demands), for failure messages."""
        r = self.ray("status", "--address", self.gcs, timeout=60)
        return r.stdout[-3000:] + r.stderr[-1000:]


def _tail(path: Path, n: int) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as e:
        return f"({e})"


def _start_node(cluster: Cluster, ports: _Ports, name: str) -> Node:
    temp = os.path.join(cluster.root, name)
    os.makedirs(temp)
    p = {"node-manager-port": ports.take(), "object-manager-port": ports.take(),
         "dashboard-agent-listen-port": ports.take(), "dashboard-agent-grpc-port": ports.take(),
         "runtime-env-agent-port": ports.take(), "metrics-export-port": ports.take()}
    p["min-worker-port"] = ports.take(WORKER_PORTS)
    p["max-worker-port"] = p["min-worker-port"] + WORKER_PORTS - 1
    cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}",
           "--disable-usage-stats", f"--object-store-memory={2 * 2**30}"]
    if name == "head":
        gcs_port = int(cluster.gcs.rsplit(":", 1)[1])
        p.update({"port": gcs_port, "dashboard-port": int(cluster.url.rsplit(":", 1)[1]),
                  "ray-client-server-port": ports.take()})
        cmd += ["--head", f"--num-cpus={HEAD_CPUS}", "--include-dashboard=true", "--dashboard-host=127.0.0.1"]
    else:
        cmd += [f"--address={cluster.gcs}", f"--num-cpus={WORKER_CPUS}"]
    cmd += [f"--{k}={v}" for k, v in p.items()]
    log = Path(temp) / "ray-start.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=cluster.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    node = Node(name, temp, proc, log, p)
    cluster.nodes.append(node)
    return node


def _kill_group(node: Node) -> list[int]:
    """SIGKILL a node's `ray start` process group and every process below it; their pids."""
    below = _descendants(node.proc.pid) if node.proc.poll() is None else []
    _KILLED.update(below)
    try:
        os.killpg(node.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _kill(below)
    return below


def kill_node(node: Node) -> list[int]:
    """Kill a node for real: SIGKILL its `ray start` process group (raylet, agents) and every
    process below it (Ray workers lead process groups of their own), then whatever still names
    its temp dir. Returns the pids killed."""
    below = _kill_group(node)
    node.proc.wait(timeout=30)
    node.killed = True
    left = _sweep([node.temp])
    assert not left, f"processes of {node.name} survived SIGKILL: {left}"
    return [node.proc.pid, *below]


def _teardown(cluster: Cluster) -> None:
    for node in reversed(cluster.nodes):  # workers first, then the head
        if node.proc.poll() is None:
            try:
                os.killpg(node.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.time() + TERMINATE_S
    for node in cluster.nodes:
        try:
            node.proc.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    for node in cluster.nodes:
        _kill_group(node)
        try:
            node.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    # leftovers: Ray processes that left the groups (found by the temp dirs), job drivers (by
    # their outputs in their command lines, their cwd under the head's temp dir) and their sessions
    left = _sweep([cluster.root + "/", *cluster.markers])
    shutil.rmtree(cluster.root, ignore_errors=True)
    deadline = time.time() + 15  # and let the killed ones be reaped (no <defunct> raylet in `ps`)
    while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") for pid in _KILLED):
        time.sleep(0.3)
    _KILLED.clear()
    assert not left, f"processes survived the teardown: {left}"


@pytest.fixture
def cluster():
    """Three Ray nodes on this machine, with ports, temp dirs and a token of their own."""
    root = tempfile.mkdtemp(prefix="vcmn_", dir="/tmp")  # short: Ray puts unix sockets below it
    token = secrets.token_hex(32)
    token_file = Path(root) / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file),
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
           # a dead node is known within ~3 s (default ~15 s): its actors restart while work is
           # still queued, and the test waits less
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_JOB_ID"):
        env.pop(key, None)
    ports = _Ports(3 + (WORKERS + 1) * (6 + WORKER_PORTS) + 4)
    gcs, dash = ports.take(), ports.take()
    c = Cluster(root, env, token, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}")
    try:
        _start_node(c, ports, "head")
        deadline = time.time() + CLUSTER_START_S
        while c.alive_nodes() < 1:
            if c.nodes[0].proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("the Ray head did not start:\n" + c.node_logs())
            time.sleep(1)
        for i in range(WORKERS):
            _start_node(c, ports, f"w{i + 1}")
        while (alive := c.alive_nodes()) < 1 + WORKERS:
            if any(n.proc.poll() is not None for n in c.nodes) or time.time() > deadline:
                raise RuntimeError(f"{alive} of {1 + WORKERS} Ray nodes alive after "
                                   f"{CLUSTER_START_S - deadline + time.time():.0f}s:\n" + c.node_logs())
            time.sleep(1)
        yield c
    finally:
        _teardown(c)


# --- jobs -------------------------------------------------------------------------------------

INPUTS = ("videos/synthetic_cuts.mp4", "videos/bikes.mp4", "videos/carphone_pristine.mp4", "videos/dark_static.mp4",
          "bad/random_bytes.mp4")


def _overrides(demo: dict, out: Path) -> list[str]:
    """demo_overrides on five of the demo's inputs (the small ones: four videos, one bad file),
    so that analysis still has work to do when the first unit's result is committed; the
    optional stages off (what survives a lost node is the same for every stage)."""
    root = demo["root"]
    sets = [o for o in demo_overrides(demo, out) if not o.startswith("inputs.paths=")]
    return [f"inputs.paths=[{', '.join(f'{root}/{p}' for p in INPUTS)}]", "output.samples_per_shard=2", *sets,
            *OPTIONAL_OFF]


def submit(c: Cluster, demo: dict, out: Path) -> str:
    c.markers.append(str(out))
    sets = [a for o in _overrides(demo, out) for a in ("--set", o)]
    r = c.ray("job", "submit", "--address", c.url, "--working-dir", str(ROOT), "--no-wait", "--",
              "python", "-m", "pipeline", "run", "jobs/demo.yaml", "--quiet", *sets, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return next(line.split("'")[1] for line in r.stdout.splitlines() if "submitted successfully" in line)


def logs(c: Cluster, job_id: str) -> str:
    r = c.ray("job", "logs", "--address", c.url, job_id, timeout=60)
    return r.stdout + (r.stderr[-1000:] if r.returncode else "")


@dataclass
class Outcome:
    status: str
    message: str
    seconds: float
    logs: str


def wait(c: Cluster, job_id: str, deadline_s: float, during=None) -> Outcome:
    """Poll the job's status every 2 s (the jobs REST API: `ray job status` without a Python
    start-up each time) until it ends, calling ``during()`` every 0.2 s. Past the deadline, stop
    the job and fail with its status, its logs and the cluster's resources and pending demands."""
    start = time.time()
    info, polled = {}, 0.0
    while time.time() - start < deadline_s:
        if time.time() - polled >= 2:
            polled = time.time()
            try:
                info = c.http(f"/api/jobs/{job_id}")
            except (OSError, ValueError) as e:
                info = {"status": f"(status not read: {e})"}
            if info.get("status") in ("SUCCEEDED", "FAILED", "STOPPED"):
                return Outcome(info["status"], info.get("message") or "", time.time() - start, logs(c, job_id))
        if during is not None:
            during()
        time.sleep(0.2)
    status = c.ray("job", "status", "--address", c.url, job_id, timeout=60)
    text = logs(c, job_id)
    state = c.state()
    c.ray("job", "stop", "--address", c.url, "--no-wait", job_id, timeout=60)
    pytest.fail(f"job {job_id} did not end within {deadline_s:.0f}s (last: {info.get('status')})\n"
                f"--- ray job status ---\n{status.stdout[-1500:]}{status.stderr[-500:]}\n"
                f"--- ray status ---\n{state}\n--- ray job logs (tail) ---\n{text[-5000:]}", pytrace=False)


def _work_on(node: Node) -> list[str]:
    """The Ray Data tasks and actors running on a node, by its worker processes' titles
    (``ray::MapBatches(...)`` a task, ``ray::MapWorker(...)`` an actor; not idle workers, agents
    or Ray's own actors)."""
    titles = []
    for pid in _descendants(node.proc.pid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and "(" in title:
            titles.append(title)
    return titles


# --- the test ---------------------------------------------------------------------------------

def test_losing_a_worker_node_changes_nothing(demo, cluster, tmp_path):
    c = cluster

    # 1. undisturbed, on all three nodes
    base = tmp_path / "baseline"
    first = wait(c, submit(c, demo, base), BASELINE_S)
    assert first.status == "SUCCEEDED", f"baseline {first.status}: {first.message}\n{first.logs[-4000:]}"
    files = _snapshot(base)
    _check_manifest(base, files)
    limit = _disturbed_deadline(first.seconds)

    # 2. a worker node running pipeline work SIGKILLed once analysis has committed a first result
    out = tmp_path / "disturbed"
    killed: dict = {}
    seen: dict = {}

    def kill_when_analysis_commits():
        """Once analysis has committed its first result, a worker node running pipeline work
        dies: preferably one running a task (its work must be redone) and, of those, the one
        with the fewest actors, so the survivors keep as many CPU-holding actors as can be.
        If no worker node runs a task within TASK_WAIT_S of the commit, any busy one dies."""
        if killed or not any((out / "_work" / "analyze").glob("*/*.parquet")):
            return
        seen.setdefault("commit", time.time())
        work = {n.name: _work_on(n) for n in c.workers if not n.killed}
        actors = {k: sum("MapWorker" in t for t in v) for k, v in work.items()}
        tasks = [n for n in c.workers if len(work.get(n.name, [])) > actors.get(n.name, 0)]
        busy = tasks or ([n for n in c.workers if work.get(n.name)]
                         if time.time() - seen["commit"] > TASK_WAIT_S else [])
        if not busy:
            return
        victim = min(busy, key=lambda n: (actors[n.name], -len(work[n.name])))
        killed.update(node=victim.name, at=time.time(), pids=kill_node(victim))
        work["head"] = _work_on(c.nodes[0])
        print(f"\nkilled node {victim.name} ({len(killed['pids'])} processes) {killed['at'] - start:.0f}s into "
              f"the job, {killed['at'] - seen['commit']:.1f}s after its first committed analysis; running then: "
              f"{work}; deadline {limit:.0f}s (baseline {first.seconds:.0f}s)", flush=True)

    job = submit(c, demo, out)
    start = time.time()
    got = wait(c, job, limit, during=kill_when_analysis_commits)
    assert killed, f"the job ended ({got.status}) before the kill point, in {got.seconds:.0f}s"
    (tmp_path / "disturbed.log").write_text(got.logs)
    print(f"the disturbed job {got.status} after {got.seconds:.0f}s: {got.message[:300]}")
    print("\n".join([line[:300] for line in got.logs.splitlines() if "dead" in line or "retried" in line][:6]))
    if got.status != "SUCCEEDED":
        reason = (got.message + got.logs[-3000:]).lower()
        assert any(w in reason for w in ("node", "died", "lost", "resource", "cpu", "actor", "worker")), \
            f"the job {got.status} without saying why: {got.message}\n{got.logs[-3000:]}"
        # 3. the rerun, on the two nodes left, completes the same output
        again = wait(c, submit(c, demo, out), limit)
        assert again.status == "SUCCEEDED", f"rerun {again.status}: {again.message}\n{again.logs[-4000:]}"
    mine = _snapshot(out)
    same = {k: v.replace(str(out).encode(), str(base).encode()) for k, v in mine.items()}
    assert sorted(same) == sorted(files)
    for name in files:
        assert same[name] == files[name], name
    _check_manifest(out, mine)
