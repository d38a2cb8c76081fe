"""`ray job submit` against a real Ray head started by this test, stopped by this test only."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import secrets
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import MINI_INPUTS, ROOT, mini_overrides

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _our_ray_pids(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.fixture
def ray_head():
    """A Ray head on its own ports and temp dir; torn down by process group and temp-dir marker."""
    temp = tempfile.mkdtemp(prefix="vcray_", dir="/tmp")  # short: Ray puts unix sockets in it
    dash = _free_port()
    token = Path(temp) / "auth_token"  # token auth on, with a token of this test's own
    token.write_text(secrets.token_hex(32))
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
        env.pop(key, None)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", f"--port={_free_port()}",
           f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
           f"--dashboard-agent-listen-port={_free_port()}",
           "--num-cpus=2", f"--temp-dir={temp}", "--disable-usage-stats"]
    log = open(Path(temp) / "head.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2).read()
                break
            except urllib.error.HTTPError:  # answering (401 when token auth is on): it is up
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("Ray head did not start:\n" + (Path(temp) / "head.log").read_text()[-3000:])
                time.sleep(1)
        yield url, env
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)  # `ray start --block` may take longer to stop; what is left is killed below
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in _our_ray_pids(temp):  # Ray processes that left the group, found by our temp dir
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _ray(env, *args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_ray_job_submit_runs_the_demo(ray_head, demo, tmp_path):
    url, env = ray_head
    out = tmp_path / "out"
    sets = [a for o in mini_overrides(demo, out) for a in ("--set", o)]  # the small corpus: the job, not its data
    submitted = _ray(env, "job", "submit", "--address", url, "--working-dir", str(ROOT), "--no-wait",
                     "--", "python", "-m", "pipeline", "run", "jobs/demo.yaml", "--quiet", *sets, timeout=300)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    job_id = next(line.split("'")[1] for line in submitted.stdout.splitlines() if "submitted successfully" in line)
    deadline = time.time() + 420
    while True:
        status = _ray(env, "job", "status", "--address", url, job_id).stdout.lower()
        if any(f"{s}" in status for s in ("succeeded", "failed", "stopped")) or time.time() > deadline:
            break
        time.sleep(3)
    logs = _ray(env, "job", "logs", "--address", url, job_id).stdout
    assert f"job '{job_id.lower()}' succeeded" in status, status + logs[-4000:]
    assert "vidcurate summary" in logs
    assert (out / "manifest.json").is_file()
    videos = pq.read_table(out / "videos").to_pylist()
    assert len(videos) == len(MINI_INPUTS)
    assert len(list((out / "shards").glob("part-*.tar"))) >= 1
