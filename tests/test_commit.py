"""Exactly-once outputs: crashes of workers and of the driver, resume, and S3 (a real moto server).

Every job here runs through the command line in its own process session (its own local Ray),
so a test can kill the driver with everything it started, and only that.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, job_cmd, kill_session

pytestmark = pytest.mark.slow
SECRET = "vidcurate-test-secret-3f9a7c1e5d"


# three inputs, one partition each: a run killed mid-way can leave some partitions committed
INPUTS = ("videos/synthetic_cuts.mp4", "videos/bikes.mp4", "bad/random_bytes.mp4")
# one streaming chain (tests/conftest.py mini_settings) with prepare tasks feeding the caption
# actor, as on GPU nodes; test_stage_by_stage_gives_the_same_output runs the other way
SETTINGS = ("output.videos_per_partition=1", "ray.feeder_tasks=true")


def _job(demo: dict, out, extra=(), inputs=INPUTS) -> list[str]:
    return job_cmd(demo, out, [*SETTINGS, *extra], inputs=inputs, every_stage=True)


def _run(cmd: list[str], env: dict | None = None, kill_when=None, timeout: float = 600) -> tuple[int, str]:
    """Run a job to its end, or until ``kill_when()`` is true (then kill it); returns (rc, output)."""
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"vidcurate-test-{os.getpid()}-{time.time_ns()}.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        try:
            while proc.poll() is None:
                if time.time() > deadline:
                    raise AssertionError(f"job did not finish in {timeout}s: {log.read_text()[-3000:]}")
                if kill_when is not None and kill_when():
                    kill_session(proc)
                    break
                time.sleep(0.2)
        finally:
            kill_session(proc)  # the driver, if still there, and Ray processes outliving it
    text = log.read_text()
    log.unlink()
    return proc.returncode, text


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.relative_to(out).parts[0] != "_work"}


@pytest.fixture(scope="module")
def baseline(demo, tmp_path_factory):
    """An undisturbed run: (output folder, its files)."""
    out = tmp_path_factory.mktemp("commit") / "out"
    rc, text = _run(_job(demo, str(out)))
    assert rc == 0, text[-3000:]
    assert "[all stages] 3 videos" in text, text[-3000:]
    files = _snapshot(out)
    manifest = json.loads(files["manifest.json"])
    assert manifest["counts"]["samples"] >= 3 and len(manifest["shards"]) >= 2 and len(manifest["partitions"]) == 3
    return out, files


def _check_manifest(out: Path, files: dict[str, bytes]) -> None:
    """Every listed shard is there with its sha256; no key twice; nothing unlisted in shards/."""
    import hashlib

    manifest = json.loads(files["manifest.json"])
    keys = []
    for s in manifest["shards"] + manifest["long_shards"]:
        assert hashlib.sha256(files[s["path"]]).hexdigest() == s["sha256"]
        with tarfile.open(out / s["path"]) as tar:
            keys += sorted({m.name.split(".")[0] for m in tar.getmembers()})
    assert len(keys) == len(set(keys))
    listed = {s["path"] for s in manifest["shards"] + manifest["long_shards"]}
    assert {k for k in files if k.split("/")[0] in ("shards", "long_shards")} == listed


def test_killed_workers_change_nothing(baseline, demo, tmp_path):
    """Workers of every stage die once mid-run (as if OOM-killed); Ray retries them and the
    output equals the undisturbed run byte for byte."""
    out, files = baseline
    markers = {stage: tmp_path / f"{stage}.crashed" for stage in ("analyze", "clip", "text", "prepare", "caption",
                                                                      "caption_fit", "hierarchy", "write")}
    fault = ",".join(f"{stage}:{path}" for stage, path in markers.items())
    other = tmp_path / "out"
    rc, text = _run(_job(demo, str(other)), env={"VIDCURATE_FAULT": fault})
    assert rc == 0, text[-3000:]
    assert all(p.exists() for p in markers.values()), "every fault point was reached"
    got = _snapshot(other)
    # the outputs differ only where the output's own location is written down
    same = {k: v.replace(str(other).encode(), str(out).encode()) for k, v in got.items()}
    assert same == files
    _check_manifest(other, got)


@pytest.mark.extended
def test_stage_by_stage_gives_the_same_output(baseline, demo, tmp_path):
    """Stage by stage (one pass per stage, ``ray.stream=false``), each caption actor making its
    own inputs (``ray.feeder_tasks=false``): the data written is the streaming chain's (whose
    caption actor prepare tasks feed), byte for byte."""
    out, files = baseline
    other = tmp_path / "out"
    rc, text = _run(_job(demo, str(other), ["ray.stream=false", "ray.feeder_tasks=false"]))
    assert rc == 0, text[-3000:]
    assert "[analyze] 3 videos" in text and "[all stages]" not in text
    got = _snapshot(other)
    assert set(got) == set(files)
    for name in sorted(set(files) - {"manifest.json", "spec.yaml"}):  # those two record the ray settings
        assert got[name].replace(str(other).encode(), str(out).encode()) == files[name], name
    mine, theirs = json.loads(got["manifest.json"]), json.loads(files["manifest.json"])
    assert mine["shards"] == theirs["shards"] and mine["tables"] == theirs["tables"]


def _killed_driver_resumes(baseline, demo, points: tuple[str, ...]) -> None:
    """Kill the driver (and its Ray) once each of ``points`` (globs under _work/) has a file,
    rerunning each time: the final output is the undisturbed run's, byte for byte, with no
    orphan listed and none left behind."""
    out, files = baseline
    import shutil

    shutil.rmtree(out)
    work = out / "_work"
    for pattern in points:
        rc, text = _run(_job(demo, str(out)), kill_when=lambda: any(work.glob(pattern)))
        assert rc == -signal.SIGKILL, f"the job ended before the kill point {pattern}: {text[-2000:]}"
        assert not (out / "manifest.json").exists()
    # leftovers of a crash: a half-written shard and a temporary file
    (out / "shards").mkdir(exist_ok=True)
    (out / "shards" / "part-000099-000000.tar").write_bytes(b"partial")
    (out / "shards" / "part-000000-000000.tar.tmp").write_bytes(b"partial")
    (out / "clips").mkdir(exist_ok=True)
    (out / "clips" / "part-000000.parquet.tmp").write_bytes(b"partial")
    rc, text = _run(_job(demo, str(out)))
    assert rc == 0, text[-3000:]
    assert "[resume] committed results reused" in text
    got = _snapshot(out)
    assert sorted(got) == sorted(files)  # the same names first: a short diff when they differ
    assert got == files
    _check_manifest(out, got)
    rc, text = _run(_job(demo, str(out)))  # finished: nothing to do, nothing changes
    assert rc == 0 and "nothing to do" in text and _snapshot(out) == files


def test_killed_driver_resumes_to_identical_output(baseline, demo):
    """The driver killed once a caption is committed, then rerun (_killed_driver_resumes)."""
    _killed_driver_resumes(baseline, demo, ("caption/*/*.parquet",))


@pytest.mark.extended
def test_driver_killed_at_three_points_resumes_to_identical_output(baseline, demo):
    """Killed after the first analysis, after the first caption, after the first partition."""
    _killed_driver_resumes(baseline, demo, ("analyze/*/*.parquet", "caption/*/*.parquet", "partitions/*.json"))


@pytest.mark.extended
def test_resume_fills_a_partition_a_killed_run_left_out(baseline, demo):
    """Writers commit partitions in the order their videos finish, so a run killed mid-way can
    leave partitions 0 and 2 committed without 1 (which test_killed_driver_resumes_to_identical_output
    hits only when the timing falls so). The resume writes 1 under its own number: the same
    files as the undisturbed run, not partition 3 and a manifest with a gap."""
    out, files = baseline  # in place: the spec and manifest name the output folder
    (out / "manifest.json").unlink()
    (out / "_work" / "partitions" / "part-000001.json").unlink()
    gone = [p for p in out.rglob("part-000001*") if "_work" not in p.relative_to(out).parts]
    assert gone  # its table parts and shards
    for p in gone:
        p.unlink()
    rc, text = _run(_job(demo, str(out)))
    assert rc == 0, text[-3000:]
    got = _snapshot(out)
    assert sorted(got) == sorted(files)
    assert got == files


def test_changed_caption_setting_reuses_earlier_stages(baseline, demo, tmp_path):
    import shutil

    out, _ = baseline
    other = tmp_path / "out"
    shutil.copytree(out, other)
    rc, text = _run(_job(demo, str(other), ["caption.max_new_tokens=12"]))
    assert rc == 0, text[-3000:]
    assert "[resume] committed results reused: analyze 3, clip 3" in text
    last = json.loads((other / "_work" / "last_run.json").read_text())
    assert "analyze" not in last["stages"] and last["stages"]["caption"]["videos"] == 3

    # gc: the first run's caption, caption-fit and hierarchy results are superseded; nothing
    # current goes
    manifest = json.loads((other / "manifest.json").read_text())
    fps = manifest["fingerprints"]
    work = other / "_work"
    assert len(list((work / "caption").iterdir())) == 2
    before = _snapshot(other)  # everything outside _work
    rc, text = _run([sys.executable, "-m", "pipeline", "gc", str(other), "--dry-run"])
    assert rc == 0 and "would remove 9 files" in text and len(list((work / "caption").iterdir())) == 2, text
    rc, text = _run([sys.executable, "-m", "pipeline", "gc", str(other)])
    assert rc == 0 and "removed 9 files" in text, text
    for stage in ("analyze", "clip", "text", "caption", "caption_fit", "hierarchy"):
        assert [d.name for d in (work / stage).iterdir()] == [fps[stage]]
        assert len(list((work / stage / fps[stage]).iterdir())) == 3
    assert not (work / "lock.json").exists()
    assert _snapshot(other) == before
    rc, text = _run(_job(demo, str(other), ["caption.max_new_tokens=12"]))
    assert rc == 0 and "nothing to do" in text, text[-2000:]


# --- S3 -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a loopback port (a real HTTP endpoint), with fake credentials."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "AKIAVIDCURATETEST", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield {"endpoint": f"http://{host}:{port}", "env": env}
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _client(s3):
    import boto3

    return boto3.client("s3", endpoint_url=s3["endpoint"], region_name="us-east-1")


def test_storage_round_trip_multipart_and_listing(s3, tmp_path):
    from pipeline.spec import Storage
    from pipeline.storage import S3Reader, S3Store

    _client(s3).create_bucket(Bucket="unit")
    settings = Storage(endpoint_url=s3["endpoint"], multipart_threshold_mb=5, part_size_mb=5)
    store = S3Store("s3://unit/some/prefix", settings)
    big = os.urandom(11 * 2**20)  # three parts
    store.write("a/big.bin", big)
    local = tmp_path / "f.bin"
    local.write_bytes(b"small")
    store.write_file("a/small.bin", local)
    for n in range(1005):  # more than one listing page
        store.write(f"many/{n:05d}", b"")
    assert store.read("a/big.bin") == big and store.read("a/small.bin") == b"small"
    listing = store.list()
    assert len(listing) == 1007 and ("a/big.bin", len(big)) in listing
    reader = S3Reader(store.client, "unit", "some/prefix/a/big.bin", len(big), block=1 << 20)
    reader.seek(5 * 2**20 + 7)
    assert reader.read(100) == big[5 * 2**20 + 7:5 * 2**20 + 107]
    reader.seek(-10, 2)
    assert reader.read() == big[-10:]
    assert store.exists("a/big.bin") and not store.exists("a/none")
    # an upload that fails midway leaves no object and no pending upload behind
    class Broken:
        def __init__(self):
            self.n = 0

        def read(self, size):
            self.n += 1
            if self.n > 1:
                raise IOError("disk gone")
            return b"x" * size

    with pytest.raises(IOError, match="disk gone"):
        store._multipart("a/broken.bin", Broken())
    assert not store.exists("a/broken.bin")
    assert not _client(s3).list_multipart_uploads(Bucket="unit").get("Uploads")


def test_job_reads_and_writes_s3_and_keeps_secrets(s3, demo):
    """A job whose inputs and outputs are S3 prefixes: same outputs as on disk, resumable, and
    the secret key appears in no log line, output object or manifest."""
    client = _client(s3)
    client.create_bucket(Bucket="raw")
    client.create_bucket(Bucket="curated")
    root = Path(demo["root"])
    for name in ("videos/synthetic_cuts.mp4", "videos/bikes.mp4", "bad/random_bytes.mp4"):
        client.upload_file(str(root / name), "raw", f"in/{name}")
    (root.parent / "job_s3.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello there\n")
    client.upload_file(str(root.parent / "job_s3.srt"), "raw", "in/videos/bikes.srt")
    cmd = _job(demo, "s3://curated/run1", [f"storage.endpoint_url={s3['endpoint']}"],
               inputs="s3://raw/in/videos/, s3://raw/in/bad/*.mp4")
    rc, text = _run(cmd, env=s3["env"])
    assert rc == 0, text[-3000:]
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="curated", Prefix="run1/"):
        for o in page.get("Contents", []):
            objects[o["Key"][len("run1/"):]] = client.get_object(Bucket="curated", Key=o["Key"])["Body"].read()
    manifest = json.loads(objects["manifest.json"])
    assert manifest["counts"]["videos_in"] == 3 and manifest["counts"]["videos_rejected"] == 1
    assert manifest["counts"]["samples"] >= 3
    import hashlib
    import io

    import pyarrow.parquet as pq

    for s in manifest["shards"]:
        assert hashlib.sha256(objects[s["path"]]).hexdigest() == s["sha256"]
        with tarfile.open(fileobj=io.BytesIO(objects[s["path"]])) as tar:
            assert any(m.name.endswith(".mp4") and m.size > 0 for m in tar.getmembers())
    videos = [r for part in manifest["tables"]["videos"]["parts"]
              for r in pq.read_table(io.BytesIO(objects[part["path"]])).to_pylist()]
    assert {v["uri"] for v in videos} == {"s3://raw/in/videos/synthetic_cuts.mp4", "s3://raw/in/videos/bikes.mp4",
                                          "s3://raw/in/bad/random_bytes.mp4"}
    bikes = next(v for v in videos if v["uri"].endswith("bikes.mp4"))
    assert bikes["status"] == "ok" and bikes["subtitles"] == "sidecar"
    assert not client.list_multipart_uploads(Bucket="curated").get("Uploads")
    for key, data in objects.items():
        assert SECRET.encode() not in data, key
    assert SECRET not in text and "AKIAVIDCURATETEST" not in text
    rc, text = _run(cmd, env=s3["env"])
    assert rc == 0 and "nothing to do" in text and SECRET not in text
    for verb in ("inspect", "report"):  # the other commands read S3 outputs too
        result = subprocess.run([sys.executable, "-m", "pipeline", verb, "s3://curated/run1", "--endpoint-url",
                                 s3["endpoint"]], cwd=ROOT, env={**os.environ, **s3["env"]}, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        assert SECRET not in result.stdout + result.stderr
    assert "videos  3 in" in subprocess.run(
        [sys.executable, "-m", "pipeline", "inspect", "s3://curated/run1", "--endpoint-url", s3["endpoint"]],
        cwd=ROOT, env={**os.environ, **s3["env"]}, capture_output=True, text=True, timeout=300).stdout
    page = client.get_object(Bucket="curated", Key="run1/report.html")["Body"].read()
    assert page == objects["report.html"]  # rebuilt from S3: the same bytes
