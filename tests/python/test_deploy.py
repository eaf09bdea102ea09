"""The deployment files, checked as far as a machine without a container engine or a cluster
allows: the Dockerfile linted (hadolint), its entrypoint and health check run against the
locally built binary; docker-compose.yml validated against the Compose schema and its commands
run; the Kubernetes manifests and the Helm chart's output validated against Kubernetes' own
schemas (kubernetes-validate, strict), the chart linted (helm) and its default output equal to
the plain manifests."""

import importlib.util
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import jsonschema
import pytest
import yaml

from conftest import BINARY, Process, ROOT

VENV_BIN = pathlib.Path(sys.executable).parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
CHART = ROOT / "deploy" / "helm" / "mvllm"


def tool(name):
    path = VENV_BIN / name
    assert path.exists(), f"{name} is installed by scripts/test.sh (tests/python/requirements.txt)"
    return str(path)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dockerfile_instructions():
    """(instruction, argument) pairs of the Dockerfile, read as scripts/dockerfile_stages.py
    reads them."""
    spec = importlib.util.spec_from_file_location("dockerfile_stages", ROOT / "scripts" / "dockerfile_stages.py")
    stages = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stages)
    return stages.instructions((ROOT / "Dockerfile").read_text())


def exec_form(argument):
    """The JSON array of an exec-form instruction (ENTRYPOINT, CMD, HEALTHCHECK's CMD)."""
    return json.loads(argument[argument.index("["):])


def localised(command, replacements):
    """An image's command run here: `mvllm` is the local binary, and each word found in
    `replacements` (an address, a port, a path) is replaced whole."""
    return [BINARY if word == "mvllm" else replacements.get(word, word) for word in command]


def wait_for(check, what, limit=20.0):
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_the_dockerfile_is_lint_clean_and_shaped_for_production():
    result = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = dockerfile_instructions()
    froms = [a for i, a in steps if i == "FROM"]
    assert len(froms) >= 2 and " AS " in froms[0], "multi-stage: a build stage, then the runtime"
    final = steps[max(n for n, (i, _) in enumerate(steps) if i == "FROM"):]
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the runtime runs as non-root"
    assert ("EXPOSE", "8888") in final
    health = [a for i, a in final if i == "HEALTHCHECK"]
    assert health and exec_form(health[0])[:2] == ["mvllm", "health"]
    cmd = exec_form(next(a for i, a in final if i == "CMD"))
    assert "--console" in cmd and "/app/servers.toml" in cmd, "the Python mvllm's docker run line works"
    # The dependency layer: Cargo.toml and Cargo.lock copied and built before the sources.
    copies = [a for i, a in steps if i in ("COPY", "RUN")]
    manifest = next(n for n, a in enumerate(copies) if a.startswith("Cargo.toml"))
    sources = next(n for n, a in enumerate(copies) if a.startswith("src"))
    assert any("cargo build" in a for a in copies[manifest:sources])
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignored and "!src/" in ignored, "only the sources go into the build context"


def test_the_image_entrypoint_and_health_check_run_against_the_local_binary():
    sim = Process(["sim", "--host", "127.0.0.1", "--port", "0", "--served-model-name", "m"])
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(f'[servers]\nservers = [{{ url = "{sim.url}" }}]\n[config]\nmetrics_interval = 0.2\n')
    config.close()
    port = str(free_port())
    steps = dockerfile_instructions()
    entrypoint = exec_form(next(a for i, a in steps if i == "ENTRYPOINT"))
    cmd = exec_form([a for i, a in steps if i == "CMD"][-1])
    health = exec_form(next(a for i, a in steps if i == "HEALTHCHECK"))
    swap = {"/app/servers.toml": config.name, "8888": port, "0.0.0.0": "127.0.0.1",
            "http://127.0.0.1:8888/health": f"http://127.0.0.1:{port}/health"}
    router = subprocess.Popen(localised(entrypoint + cmd, swap), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        healthy = lambda: subprocess.run(localised(health, swap), capture_output=True).returncode == 0
        wait_for(healthy, "the image's HEALTHCHECK never passed")
        # SIGTERM (docker stop) drains and exits cleanly.
        router.send_signal(signal.SIGTERM)
        assert router.wait(timeout=20) == 0
        assert not healthy(), "the health check fails once the router is gone"
    finally:
        if router.poll() is None:
            router.kill()
        sim.stop()
        os.unlink(config.name)


def test_the_compose_file_follows_the_compose_schema_and_its_commands_run():
    schema = json.loads((ROOT / ".venv" / "compose_spec.json").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    validator = jsonschema.Draft201909Validator(schema)  # the draft its $schema names
    validator.validate(compose)
    services = compose["services"]
    assert set(services) == {"router", "sim-1", "sim-2"}
    assert services["router"]["ports"] == ["8888:8888"]
    assert all(s["image"] == "mvllm:latest" and s["build"] == "." for s in services.values())
    # A broken file is refused: the check can fail.
    broken = {**compose, "services": {"router": {**services["router"], "ports": 8888}}}
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(broken)

    # The router's servers file, as mounted, is valid and names the sims by service name.
    mount = services["router"]["volumes"][0].split(":")
    config_arg = services["router"]["command"][services["router"]["command"].index("--config") + 1]
    mounted = ROOT / mount[0] / pathlib.Path(config_arg).relative_to(mount[1])
    checked = subprocess.run([BINARY, "check-config", "--config", str(mounted)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    for name in ("sim-1", "sim-2"):
        assert f"http://{name}:8000" in mounted.read_text()

    # Each sim's command and health check, run here.
    for name in ("sim-1", "sim-2"):
        port = str(free_port())
        swap = {"8000": port, "0.0.0.0": "127.0.0.1",
                "http://127.0.0.1:8000/health": f"http://127.0.0.1:{port}/health"}
        sim = subprocess.Popen(localised(["mvllm"] + services[name]["command"], swap),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            test = services[name]["healthcheck"]["test"]
            assert test[0] == "CMD"
            wait_for(lambda: subprocess.run(localised(test[1:], swap), capture_output=True).returncode == 0,
                     f"{name}'s health check never passed")
        finally:
            sim.terminate()
            sim.wait(timeout=10)


def kubernetes_validate(paths):
    return subprocess.run([tool("kubernetes-validate"), "--strict", "--no-warn", *map(str, paths)],
                          capture_output=True, text=True)


def manifests():
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def test_the_kubernetes_manifests_validate_against_kubernetes_schemas(tmp_path):
    files = sorted(KUBERNETES.glob("*.yaml"))
    for version in ("1.27.0", "1.37.0"):
        result = subprocess.run([tool("kubernetes-validate"), "--strict", "--no-warn", "-k", version,
                                 *map(str, files)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a misspelt field is refused.
    broken = tmp_path / "deployment.yaml"
    broken.write_text((KUBERNETES / "deployment.yaml").read_text().replace("readinessProbe", "readynessProbe"))
    assert kubernetes_validate([broken]).returncode != 0

    by_kind = {d["kind"]: d for d in manifests()}
    assert set(by_kind) >= {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"}
    deployment = by_kind["Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert deployment["spec"]["replicas"] >= 2
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert "livenessProbe" in container and "preStop" in container["lifecycle"]
    assert spec["terminationGracePeriodSeconds"] >= 40, "covers preStop and the 30 s drain"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    # The ConfigMap is mounted as a directory (a subPath mount is never updated), at the
    # directory of the --config the router is given.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert "subPath" not in mount
    config_arg = container["args"][container["args"].index("--config") + 1]
    assert pathlib.PurePosixPath(config_arg).parent == pathlib.PurePosixPath(mount["mountPath"])
    # The selectors meet.
    labels = spec and deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        selector = by_kind[kind]["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert selector.items() <= labels.items(), kind
    monitor = by_kind["ServiceMonitor"]["spec"]
    service = by_kind["Service"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in [p["name"] for p in service["spec"]["ports"]]
    # The servers file it carries is valid.
    config = tmp_path / "servers.toml"
    config.write_text(by_kind["ConfigMap"]["data"]["servers.toml"])
    checked = subprocess.run([BINARY, "check-config", "--config", str(config)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def without_labels(value):
    """An object with every label map taken out (the chart adds its own labels)."""
    if isinstance(value, dict):
        return {k: without_labels(v) for k, v in value.items()
                if k not in ("labels", "matchLabels") and not (k == "selector" and all(isinstance(x, str) for x in v.values()))}
    if isinstance(value, list):
        return [without_labels(v) for v in value]
    return value


def test_the_helm_chart_lints_and_renders_the_plain_manifests(tmp_path):
    lint = subprocess.run([tool("helm"), "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = subprocess.run([tool("helm"), "template", "mvllm", str(CHART)], capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered.stdout)
    result = kubernetes_validate([out])
    assert result.returncode == 0, result.stdout + result.stderr

    chart = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered.stdout) if d}
    plain = {(d["kind"], d["metadata"]["name"]): d for d in manifests() if d["kind"] != "Kustomization"}
    assert chart.keys() == plain.keys()
    for key in plain:
        assert without_labels(chart[key]) == without_labels(plain[key]), key
    # Two releases never select each other's pods.
    deployment = chart[("Deployment", "mvllm")]
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "mvllm"

    # Values change what they say they change.
    custom = subprocess.run([tool("helm"), "template", "edge", str(CHART), "--set", "replicaCount=4",
                             "--set", "serviceMonitor.enabled=false", "--set", "podDisruptionBudget.enabled=false"],
                            capture_output=True, text=True)
    assert custom.returncode == 0, custom.stderr
    docs = [d for d in yaml.safe_load_all(custom.stdout) if d]
    assert sorted(d["kind"] for d in docs) == ["ConfigMap", "Deployment", "Service"]
    assert next(d for d in docs if d["kind"] == "Deployment")["spec"]["replicas"] == 4

    # Secrets mounted for key and certificate files, and the TLS listener's port.
    secured = subprocess.run([tool("helm"), "template", "secure", str(CHART),
                              "--set", "secretMounts[0].secretName=mvllm-keys",
                              "--set", "secretMounts[0].mountPath=/etc/mvllm-secrets/keys",
                              "--set", "secretMounts[1].secretName=mvllm-tls",
                              "--set", "secretMounts[1].mountPath=/etc/mvllm-secrets/tls",
                              "--set", "httpsPort=8443"], capture_output=True, text=True)
    assert secured.returncode == 0, secured.stderr
    out = tmp_path / "secured.yaml"
    out.write_text(secured.stdout)
    result = kubernetes_validate([out])
    assert result.returncode == 0, result.stdout + result.stderr
    docs = {d["kind"]: d for d in yaml.safe_load_all(secured.stdout) if d}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for secret, path in [("mvllm-keys", "/etc/mvllm-secrets/keys"), ("mvllm-tls", "/etc/mvllm-secrets/tls")]:
        assert mounts[path]["readOnly"] is True
        assert volumes[mounts[path]["name"]]["secret"]["secretName"] == secret
    assert {"name": "https", "containerPort": 8443, "protocol": "TCP"} in container["ports"]
    assert any(p["name"] == "https" and p["port"] == 8443 for p in docs["Service"]["spec"]["ports"])


def test_the_image_build_stage_runs_and_caches_the_dependencies():
    """The Dockerfile's build stage, run without Docker (scripts/dockerfile_stages.py): a release
    build from scratch, a few minutes. The dependency layer holds every dependency, so the
    second build compiles mvllm alone; the binary the image runs is small."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "dockerfile_stages.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-4000:]
    runs = result.stdout.split("\nRUN ")
    assert len(runs) == 3, "the dependency layer's RUN, then mvllm's"
    compiled = [line.split()[1] for line in runs[2].splitlines() if line.strip().startswith("Compiling ")]
    assert compiled == ["mvllm"], f"the second build compiled {compiled}"
    size = float(result.stdout.split("the image's binary: ")[1].split(", ")[1].split(" MiB")[0])
    assert size < 40, f"{size} MiB"
