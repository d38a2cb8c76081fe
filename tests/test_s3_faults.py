"""S3 that fails: a proxy in front of a moto server answers 500 and 503 SlowDown, drops
connections before and after forwarding, and cuts GET bodies short, on a share of requests
(tests/s3proxy.py). Writes, reads, ranged reads and multipart uploads come through with the
same bytes; past the retry budget a write fails with S3's error, leaves what was there as it
was, and the next try succeeds. A whole job through faults gives a clean run's output, byte for
byte; one cut off by an outage fails in one line, and its rerun ends with the same output.
"""

from __future__ import annotations

import os

import pytest

from pipeline.spec import Storage
from pipeline.storage import S3Reader, S3Store
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
    client.create_bucket(Bucket="unit")
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

@pytest.mark.slow
def test_job_through_faults_is_byte_identical(s3_job):
    """Inputs and output on S3 behind the proxy: the same job as a clean run (tests/conftest.py
    S3Job) with a fault on every eighth request, every kind in turn: the same objects, byte for
    byte, nothing left pending."""
    clean, requests = s3_job.single()
    assert "manifest.json" in clean and any(k.startswith("shards/") for k in clean)
    try:
        s3_job.proxy.reset(every=8)
        rc, out, err = s3_job.run()
        assert rc == 0, (out + err)[-3000:]
        faults = dict(s3_job.proxy.faults)
        got = s3_job.output()
        assert sorted(got) == sorted(clean)
        assert got == clean
        assert sum(faults.values()) >= requests // 10 and all(faults.get(k) for k in KINDS), faults
        assert not _pending(s3_job.client, s3_job.bucket)
    finally:
        s3_job.calm()
        s3_job.clear()


@pytest.mark.slow
@pytest.mark.extended
def test_a_run_past_the_retry_budget_fails_in_one_line_and_its_rerun_resumes(s3_job):
    """The store answers 503 to every request from half of a clean run's requests on, and the
    run allows two attempts (storage.max_attempts=2): ``vidcurate run`` exits 1 with one
    ``error:`` line naming S3's error and the retry budget, no traceback, no manifest, and every
    output file it did write is the clean run's. The rerun, on a store that is back, reuses
    what the failed run committed and ends with the clean run's output."""
    clean, requests = s3_job.single()
    try:
        s3_job.proxy.outage(after=requests // 2)
        rc, out, err = s3_job.run(["storage.max_attempts=2"], tries=1)
        s3_job.proxy.outage(False)
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert rc == 1 and len(errors) == 1, out[-2000:] + err[-3000:]
        assert errors[0].startswith("error: the S3 store kept failing past the retry budget (storage.max_attempts): ")
        assert ("(SlowDown)" in errors[0] or "(503)" in errors[0]) and "reached max retries: 1" in errors[0]
        assert errors[0].endswith("; committed work is kept: rerun to resume")
        assert "Traceback" not in out + err, err[-3000:]
        partial = s3_job.output()
        assert "manifest.json" not in partial
        assert all(clean.get(k) == v for k, v in partial.items() if k != "spec.yaml"), "a committed file differs"
        committed = [o["Key"] for page in s3_job.client.get_paginator("list_objects_v2").paginate(
            Bucket=s3_job.bucket, Prefix=f"{s3_job.prefix}/_work/analyze/") for o in page.get("Contents", [])]
        rc, out, err = s3_job.run()
        assert rc == 0, (out + err)[-3000:]
        if committed:
            assert "[resume] committed results reused: analyze " in out, out[-3000:]
        assert s3_job.output() == clean
        assert not _pending(s3_job.client, s3_job.bucket)
    finally:
        s3_job.calm()
        s3_job.clear()
