"""Shared fixtures: demo inputs and tiny models built once, one local Ray per session."""

from __future__ import annotations

import os
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
