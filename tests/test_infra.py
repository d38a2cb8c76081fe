"""infra/: manifests parse and point at images, entrypoints and job specs that exist; the
images install the project the way the README says."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from pipeline.spec import apply_overrides, parse_spec
from tests.conftest import ROOT

INFRA = ROOT / "infra"
IMAGES = {"vidcurate:cpu": INFRA / "docker" / "Dockerfile.cpu", "vidcurate:gpu": INFRA / "docker" / "Dockerfile.gpu"}
WORKDIR = "/opt/vidcurate"


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _images(node) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k in ("image", "worker_image") and isinstance(v, str)] + \
            [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def _install_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("pip install")]


def test_every_manifest_parses_and_names_a_built_image():
    manifests = sorted(INFRA.rglob("*.yaml"))
    assert {p.name for p in manifests} >= {"raycluster.yaml", "rayjob.yaml", "networkpolicy.yaml", "aws.yaml",
                                           "runtime_env.yaml"}
    seen = set()
    for path in manifests:
        for doc in _docs(path):
            for image in _images(doc):
                name = image.split("/")[-1]
                assert name in IMAGES, f"{path.name}: image {image} is not built by infra/docker"
                assert IMAGES[name].is_file()
                seen.add(name)
    assert seen == set(IMAGES)


def test_dockerfiles_install_as_the_readme_says_and_copy_what_jobs_need():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Install\n.*?```bash\n(.*?)```", readme, re.S)
    assert block, "README has an Install section with a bash block"
    steps = _install_lines(block.group(1))
    assert steps == ["pip install torch==2.13.0 ."]
    makefile = (ROOT / "Makefile").read_text()
    assert 'TORCH ?= torch==2.13.0' in makefile  # the Makefile installs the same torch
    assert re.search(r'pip install .*"\$\(TORCH\)" -e "\.\[test\]"', makefile), "torch and the project in one command"
    for dockerfile in IMAGES.values():
        text = dockerfile.read_text()
        install = text.split("# install: begin")[1].split("# install: end")[0]
        lines = [line.removeprefix("RUN ").replace(" --no-cache-dir", "").strip() for line in install.strip().splitlines()]
        assert lines == steps
        assert f"WORKDIR {WORKDIR}" in text
        for folder in ("pipeline", "stages", "schemas", "jobs"):
            assert re.search(rf"^COPY {folder} \./{folder}$", text, re.M), f"{dockerfile.name} copies {folder}/"
        assert "COPY pyproject.toml" in text


def test_kuberay_cluster_and_job():
    (cluster,) = _docs(INFRA / "k8s" / "raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu-decode", "gpu-vlm"}

    def container(group):
        return group["template"]["spec"]["containers"][0]

    assert "nvidia.com/gpu" in container(groups["gpu-vlm"])["resources"]["limits"]
    assert "nvidia.com/gpu" not in container(groups["cpu-decode"])["resources"]["limits"]
    for c in [container(head)] + [container(g) for g in groups.values()]:
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]  # the token is never inline

    (job,) = _docs(INFRA / "k8s" / "rayjob.yaml")
    assert job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:4] == ["python", "-m", "pipeline", "run"]
    spec_path = Path(argv[4])
    assert spec_path.is_relative_to(WORKDIR), "the job spec is read from the image"
    local = ROOT / spec_path.relative_to(WORKDIR)
    assert local.is_file()
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    spec = parse_spec(apply_overrides(yaml.safe_load(local.read_text()), sets))
    assert spec.output.uri.startswith("s3://") and all(p.startswith("s3://") for p in spec.inputs.paths)
    yaml.safe_load(job["spec"]["runtimeEnvYAML"])

    (policy,) = _docs(INFRA / "k8s" / "networkpolicy.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"]["ray.io/cluster"] == cluster["metadata"]["name"]


def test_cluster_launcher_and_runtime_env():
    (launcher,) = _docs(INFRA / "cluster" / "aws.yaml")
    types = launcher["available_node_types"]
    assert launcher["head_node_type"] in types and types["head"]["resources"] == {"CPU": 0}
    assert types["gpu_vlm"]["docker"]["worker_image"].endswith("vidcurate:gpu")
    assert any("--dashboard-host=127.0.0.1" in cmd for cmd in launcher["head_start_ray_commands"])
    # token auth on every node: each ray start asks for it, and the token file reaches each node
    starts = [c for c in launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
              if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ") for c in starts)
    assert launcher["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"

    from ray.runtime_env import RuntimeEnv

    (env,) = _docs(INFRA / "runtime_env.yaml")
    RuntimeEnv(**env)  # Ray's own validation of the keys
    assert ".venv/" in env["excludes"] and env["working_dir"] == "."
