"""S3 that fails: a proxy in front of a moto server answers 500 and 503 SlowDown, drops
connections before and after forwarding, and cuts GET bodies short, on a share of requests
(tests/s3proxy.py). Writes, reads, ranged reads and multipart uploads come through with the
same bytes; past the retry budget a write fails with S3's error, leaves what was there as it
was, and the next try succeeds. A whole job through faults gives a clean run's output, byte for
byte; one cut off by an outage fails, and its rerun ends with the same output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.spec import Storage
from pipeline.storage import S3Reader, S3Store
from tests.conftest import ROOT
from tests.s3proxy import KINDS, FaultProxy, MotoServer

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "AKIAVIDCURATEFAULTS", "AWS_SECRET_ACCESS_KEY": "vidcurate-faults-test",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def moto():
    import boto3

    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = MotoServer(threaded=True)
    client = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
    for bucket in ("unit", "raw", "curated"):
        client.create_bucket(Bucket=bucket)
    try:
        yield server, client
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pending(client, bucket: str) -> list:
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def test_storage_through_faults(moto, tmp_path):
    """A fifth of the requests fail, of every kind: every write and read, multipart uploads and
    ranged reads included, comes through with the same bytes; nothing is left pending."""
    server, client = moto
    proxy = FaultProxy(server.endpoint, rate=0.2, seed=11)
    try:
        store = S3Store("s3://unit/faults", Storage(endpoint_url=proxy.endpoint, multipart_threshold_mb=5,
                                                    part_size_mb=5))
        big = os.urandom(11 * 2**20)  # three parts
        store.write("big.bin", big)
        local = tmp_path / "f.bin"
        local.write_bytes(big[:6 * 2**20])
        store.write_file("file.bin", local)  # a file: two parts
        small = {f"small/{n:03d}": os.urandom(n * 97) for n in range(60)}
        for key, data in small.items():
            store.write(key, data)
        assert store.read("big.bin") == big and store.read("file.bin") == big[:6 * 2**20]
        assert all(store.read(key) == data for key, data in small.items())
        assert dict(store.list("small/")) == {k: len(v) for k, v in small.items()}
        reader = S3Reader(store.client, "unit", "faults/big.bin", len(big), block=256 << 10)
        for start in (0, 5 * 2**20 - 3, 9 * 2**20 + 11, len(big) - 100):
            reader.seek(start)
            assert reader.read(300_000) == big[start:start + 300_000]
        assert not _pending(client, "unit")
        assert all(proxy.faults[k] > 0 for k in KINDS), proxy.faults
    finally:
        proxy.stop()


def test_storage_past_the_retry_budget(moto):
    """An outage longer than the retries: the write fails with S3's own error, the object keeps
    its previous bytes, the upload it started is aborted (or, if the abort failed too, removed by
    clean_orphans), and the write succeeds once the store is back."""
    server, client = moto
    proxy = FaultProxy(server.endpoint)
    try:
        store = S3Store("s3://unit/budget", Storage(endpoint_url=proxy.endpoint, max_attempts=2,
                                                    multipart_threshold_mb=5, part_size_mb=5))
        first, second = os.urandom(6 * 2**20), os.urandom(11 * 2**20)
        store.write("obj.bin", first)
        for after in (0, 1, 2):  # down from the first request, from the first part, from the second
            proxy.outage(after=after)
            with pytest.raises(Exception, match=r"SlowDown.*reached max retries: 1"):
                store.write("obj.bin", second)
            proxy.outage(False)
            assert store.read("obj.bin") == first
            store.clean_orphans()
            assert not _pending(client, "unit")
        store.write("obj.bin", second)
        assert store.read("obj.bin") == second
    finally:
        proxy.stop()


# --- a whole job --------------------------------------------------------------------------------

def _job(demo: dict, out: str, endpoint: str, inputs: str, extra: list[str] = ()) -> list[str]:
    sets = [f"inputs.paths=[{inputs}]", f"output.uri={out}", f"storage.endpoint_url={endpoint}",
            f"models.clip.pretrained={demo['clip']['pretrained']}", f"models.clip.config={demo['clip']['config']}",
            f"models.vlm.name_or_path={demo['vlm']['name_or_path']}", "output.samples_per_shard=2", f"models.clip.aesthetic_head={demo['aesthetic']}", *extra]
    return [sys.executable, "-m", "pipeline", "run", str(ROOT / "jobs" / "demo.yaml"), "--quiet"] + \
        [a for s in sets for a in ("--set", s)]


def _run(cmd: list[str], timeout: float = 1200) -> tuple[int, str, float]:
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"vidcurate-faults-{os.getpid()}-{time.time_ns()}.log"
    started = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **CREDENTIALS}, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        finally:
            try:
                os.killpg(proc.pid, 9)  # what is left of its local Ray
            except ProcessLookupError:
                pass
            proc.wait()
    text = log.read_text()
    log.unlink()
    return proc.returncode, text, time.perf_counter() - started


def _objects(client, bucket: str, prefix: str) -> dict[str, bytes]:
    """The output (its committed partition records too), without the run's timings."""
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            key = o["Key"][len(prefix) + 1:]
            if not key.startswith("_work/") or key.startswith("_work/partitions/"):
                out[key] = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
    return out


def _clear(client, bucket: str, prefix: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for o in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=o["Key"])


@pytest.mark.slow
def test_job_through_faults_is_byte_identical(moto, demo):
    """Inputs and output on S3 behind the proxy: a clean run, then the same job with 10% of the
    requests failing (every kind): the same objects, byte for byte. Then an outage cuts a run
    off halfway (storage.max_attempts=2): it fails naming S3's error, and the rerun, on a store
    that is back, ends with the clean run's output and reuses what the failed run committed."""
    server, client = moto
    root = Path(demo["root"])
    client.upload_file(str(root / "videos" / "synthetic_cuts.mp4"), "raw", "in/synthetic_cuts.mp4")
    proxy = FaultProxy(server.endpoint, seed=5)
    try:
        cmd = _job(demo, "s3://curated/job", proxy.endpoint, "s3://raw/in/")
        rc, text, _ = _run(cmd)
        assert rc == 0, text[-3000:]
        clean, requests = _objects(client, "curated", "job"), proxy.requests
        assert "manifest.json" in clean and any(k.startswith("shards/") for k in clean)
        _clear(client, "curated", "job")

        proxy.reset(rate=0.1, seed=5)
        rc, text, _ = _run(cmd)
        assert rc == 0, text[-3000:]
        assert sorted(_objects(client, "curated", "job")) == sorted(clean)
        assert _objects(client, "curated", "job") == clean
        assert sum(proxy.faults.values()) >= 0.05 * requests and all(proxy.faults[k] for k in KINDS), proxy.faults
        assert not _pending(client, "curated")
        _clear(client, "curated", "job")

        # past the budget: inputs on disk (an input whose reads fail is recorded as a decode error)
        local = _job(demo, "s3://curated/job", proxy.endpoint, str(root / "videos" / "synthetic_cuts.mp4"))
        proxy.reset(rate=0.0)
        rc, text, _ = _run(local)
        assert rc == 0, text[-3000:]
        clean, requests = _objects(client, "curated", "job"), proxy.requests
        _clear(client, "curated", "job")
        proxy.reset()
        proxy.outage(after=requests // 2)
        rc, text, _ = _run(_job(demo, "s3://curated/job", proxy.endpoint, str(root / "videos" / "synthetic_cuts.mp4"),
                                ["storage.max_attempts=2"]))
        assert rc != 0 and "SlowDown" in text and "reached max retries: 1" in text, text[-3000:]
        proxy.outage(False)
        partial = _objects(client, "curated", "job")
        assert "manifest.json" not in partial
        assert all(clean.get(k) == v for k, v in partial.items() if k != "spec.yaml"), "a committed file differs"
        rc, text, _ = _run(local)
        assert rc == 0, text[-3000:]
        assert _objects(client, "curated", "job") == clean
        assert not _pending(client, "curated")
    finally:
        proxy.stop()
