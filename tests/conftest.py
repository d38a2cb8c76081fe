"""Shared fixtures: demo inputs and tiny models built once, one local Ray per session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def pytest_report_header(config):
    return ("vidcurate: model stages run tiny open_clip and Qwen2-VL models with random weights, "
            "built offline by the tests; their scores and captions are meaningless by design")


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """The demo inputs and tiny random-weight models, built offline into a temp dir."""
    from pipeline.demo import prepare_demo

    root = tmp_path_factory.mktemp("demo")
    info = prepare_demo(root, log=lambda *_: None)
    info["root"] = root
    return info


def demo_overrides(demo: dict, out: Path) -> list[str]:
    root = demo["root"]
    return [
        f"inputs.paths=[{root}/videos/*.mp4, {root}/bad/*]",
        f"output.uri={out}",
        f"models.clip.pretrained={demo['clip']['pretrained']}",
        f"models.clip.config={demo['clip']['config']}",
        f"models.clip.aesthetic_head={demo['aesthetic']}",
        f"models.vlm.name_or_path={demo['vlm']['name_or_path']}",
        "ray.progress=false",
    ]


# The small corpus: for tests whose property does not depend on what the videos hold (leases,
# crashes and resumes, S3 faults, exit codes): one short video with cuts and one bad file.
MINI_INPUTS = ("videos/synthetic_cuts.mp4", "bad/empty.mp4")


def mini_settings() -> list[str]:
    """One task or actor per stage and every stage in one streaming chain: a run of the small
    corpus pays each model's load once and no pass's start-up more than once. A run's own
    local Ray gets CPUs (logical ones, on any machine) for every actor and a task of every task
    stage at once, as ray.stream asks of a cluster: a chain short of them can wait forever for
    an actor restarted after its worker died (on a shared local Ray, ray_local, there are 2)."""
    from pipeline.spec import Resources

    return [f"resources.{name}.concurrency=1" for name in Resources.model_fields] + ["ray.stream=true",
                                                                                    "ray.num_cpus=8"]


# The demo job's optional stages (pipeline.graph: an ``enabled`` setting) switched off, with the
# threshold that needs one of them: a test of leases, faults or exit codes gains nothing from
# two more model processes starting. The exactly-once tests (test_commit, test_append) keep
# every stage on.
OPTIONAL_OFF = ("text.enabled=false", "scores.max_text_area=null", "caption_fit.enabled=false")


def mini_overrides(demo: dict, out, inputs=MINI_INPUTS, *, every_stage: bool = False) -> list[str]:
    """demo_overrides on ``inputs`` (paths under the demo root, the small corpus by default; or
    one string, inputs.paths as it is, e.g. an S3 prefix), run as mini_settings() says, with
    the optional stages off unless ``every_stage``."""
    paths = inputs if isinstance(inputs, str) else ", ".join(str(demo["root"] / p) for p in inputs)
    return [*demo_overrides(demo, out), f"inputs.paths=[{paths}]", *mini_settings(),
            *(() if every_stage else OPTIONAL_OFF)]


def job_cmd(demo: dict, out, extra=(), *, inputs=MINI_INPUTS, every_stage: bool = False) -> list[str]:
    """``python -m pipeline run jobs/demo.yaml --quiet`` on ``out``: mini_overrides, two samples
    a shard, then ``extra`` settings."""
    sets = [*mini_overrides(demo, out, inputs, every_stage=every_stage), "output.samples_per_shard=2", *extra]
    return [sys.executable, "-m", "pipeline", "run", str(ROOT / "jobs" / "demo.yaml"), "--quiet"] + \
        [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="session")
def ray_local():
    """One embedded local Ray for the session; shut down only what this fixture started."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_run(demo, ray_local, tmp_path_factory):
    """The demo job run end to end on the local Ray; returns (output dir, manifest)."""
    from pipeline.plan import run_job
    from pipeline.spec import load_spec

    out = tmp_path_factory.mktemp("run") / "out"
    spec = load_spec(ROOT / "jobs" / "demo.yaml", demo_overrides(demo, out))
    manifest = run_job(spec, log=lambda *_: None)
    return out, manifest, spec


# --- whole runs through the command line ------------------------------------------------------

# What Ray says when its local node does not come up in time (on a machine busy with other
# work): the machine's failure, not the run's.
RAY_START_TIMEOUT = "The current node timed out during startup"


def session_processes(sid: int) -> list[int]:
    """The processes of session ``sid`` (a run started with start_new_session: its local Ray)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of /proc/PID/stat: the session id
            pids.append(int(stat.parent.name))
    return pids


def kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL a run started in its own session and every process of that session (its Ray),
    then wait until they are gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.time() + 60
    while (left := session_processes(proc.pid)) and time.time() < deadline:
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.3)
    assert not session_processes(proc.pid)


def run_cli(cmd: list[str], env: dict | None = None, *, timeout: float = 900, tries: int = 1
            ) -> tuple[int, str, str]:
    """Run a command to its end in its own process session, then kill what is left of that
    session; again (up to ``tries`` in all) when its local Ray did not start in time. Returns
    (exit status, stdout, stderr)."""
    for _ in range(tries):
        base = Path(os.environ.get("TMPDIR", "/tmp")) / f"vidcurate-cli-{os.getpid()}-{time.time_ns()}"
        with open(f"{base}.out", "w") as out, open(f"{base}.err", "w") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=err,
                                    start_new_session=True)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
            finally:
                kill_session(proc)
        texts = [Path(f"{base}.{ext}").read_text() for ext in ("out", "err")]
        for ext in ("out", "err"):
            Path(f"{base}.{ext}").unlink()
        if proc.returncode == 0 or RAY_START_TIMEOUT not in texts[0] + texts[1]:
            break
        print("the local Ray did not start in time; the run again", flush=True)
    return proc.returncode, texts[0], texts[1]


# --- S3: moto behind a fault-injecting proxy --------------------------------------------------

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAVIDCURATETESTS", "AWS_SECRET_ACCESS_KEY": "vidcurate-tests",
                  "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def moto_s3():
    """moto's S3 on a loopback port, serving one request at a time (so that its conditional
    writes are atomic, as S3's are: tests/s3proxy.py), with credentials for it in the
    environment for the session."""
    from tests.s3proxy import MotoServer

    saved = {k: os.environ.get(k) for k in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    server = MotoServer(threaded=False)
    try:
        yield server
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    """An output on S3: every object, with the committed partition records, without the rest of
    ``_work/`` (the lease, per-video results, the run's logs and timings)."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            key = o["Key"][len(prefix) + 1:]
            if not key.startswith("_work/") or key.startswith("_work/partitions/"):
                out[key] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def s3_clear(client, bucket: str, prefix: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=o["Key"])


class S3Job:
    """The small corpus's job, inputs (``s3://raw/mini/``) and output (``s3://curated/mini``) on
    moto behind one FaultProxy, through ``vidcurate run``. ``single(extra)``: the output of one
    clean run (made once, when first asked for) and the requests it made."""

    bucket, prefix, inputs = "curated", "mini", "s3://raw/mini/"

    def __init__(self, demo: dict, server):
        import boto3

        from tests.s3proxy import FaultProxy

        self.demo, self.uri = demo, f"s3://{self.bucket}/{self.prefix}"
        self.client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
        for bucket in ("raw", self.bucket):
            self.client.create_bucket(Bucket=bucket)
        for name in MINI_INPUTS:
            self.client.upload_file(str(demo["root"] / name), "raw", f"mini/{Path(name).name}")
        self.proxy = FaultProxy(server.endpoint)
        self._single: dict[tuple, tuple[dict, int]] = {}

    def cmd(self, extra=()) -> list[str]:
        return job_cmd(self.demo, self.uri, [f"storage.endpoint_url={self.proxy.endpoint}", *extra],
                       inputs=self.inputs)

    def run(self, extra=(), tries: int = 3) -> tuple[int, str, str]:
        return run_cli(self.cmd(extra), S3_CREDENTIALS, tries=tries)

    def output(self) -> dict[str, bytes]:
        return s3_objects(self.client, self.bucket, self.prefix)

    def clear(self) -> None:
        s3_clear(self.client, self.bucket, self.prefix)

    def calm(self) -> None:
        """The proxy back to forwarding every request as it is."""
        self.proxy.outage(False)
        self.proxy.reset(rate=0.0, every=0)
        self.proxy.delay_s = 0.0

    def single(self, extra=()) -> tuple[dict[str, bytes], int]:
        extra = tuple(extra)
        if extra not in self._single:
            self.clear()
            self.calm()
            rc, out, err = self.run(extra)
            assert rc == 0, (out + err)[-3000:]
            self._single[extra] = self.output(), self.proxy.requests
            self.clear()
        return self._single[extra]


@pytest.fixture(scope="session")
def s3_job(demo, moto_s3):
    job = S3Job(demo, moto_s3)
    try:
        yield job
    finally:
        job.proxy.stop()
