"""deploy/kubernetes/: every manifest valid for a pinned Kubernetes version, and what the
manifests name (command, port, probe paths, environment variables, the autoscaler's metric) is
what the server really serves and reads, checked on a real server process."""

from __future__ import annotations

import re

import kubernetes_validate
import pytest
import requests
import yaml
from support.api_server import KEYS, REPO, Server

from sdxl.http.server import build_parser
from sdxl.runtime.stored_predictions import RESULTS_GRACE_S

KUBERNETES_VERSION = "1.33.0"  # the schema the manifests are checked against
MANIFESTS = REPO / "deploy" / "kubernetes"


def documents() -> list[dict]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def one(kind: str) -> dict:
    (doc,) = [d for d in documents() if d["kind"] == kind]
    return doc


def container() -> dict:
    (found,) = one("Deployment")["spec"]["template"]["spec"]["containers"]
    return found


@pytest.mark.parametrize(
    "manifest", documents(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}"
)
def test_each_manifest_is_valid_kubernetes(manifest):
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_all_objects_fit_together():
    kinds = sorted(d["kind"] for d in documents())
    assert kinds == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    ]
    deployment = one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("Service", "PodDisruptionBudget"):
        spec = one(kind)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= labels.items(), kind
    target = one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert one("Service")["spec"]["ports"][0]["targetPort"] in ports
    assert container()["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The files every replica shares: a ReadWriteMany claim, mounted where SDXL_FILES_DIR says.
    claim = one("PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    (volume,) = [
        v
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
    ]
    mounts = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    env = {v["name"]: v.get("value") for v in container()["env"]}
    assert mounts[volume["name"]] == env["SDXL_FILES_DIR"]


def test_the_command_is_the_server_and_its_port_is_the_containers():
    command = container()["command"]
    assert command[:4] == ["python", "-m", "sdxl", "api"]
    args = build_parser().parse_args(command[4:])  # exits on an option the server lacks
    ports = {p["name"]: p["containerPort"] for p in container()["ports"]}
    assert args.host == "0.0.0.0" and ports["http"] == args.port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container()[probe]["httpGet"]["port"] in ("http", args.port)
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == args.port


def test_every_environment_variable_is_read_by_the_code_and_secrets_have_the_keys():
    source = "\n".join(p.read_text() for p in (REPO / "sdxl").rglob("*.py"))
    secret = one("Secret")
    for variable in container()["env"]:
        name = variable["name"]
        assert re.search(rf"[\"']{name}[\"']", source), f"{name} is read nowhere in sdxl/"
        ref = variable.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            assert ref["name"] == secret["metadata"]["name"]
            assert ref["key"] in secret["stringData"], ref


def test_the_grace_period_outlasts_the_generation_a_stopping_pod_finishes():
    spec = one("Deployment")["spec"]["template"]["spec"]
    env = {v["name"]: v.get("value") for v in container()["env"]}
    pre_stop = container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    # Only the running generation finishes (at most SDXL_MAX_SECONDS), then its result is stored
    # and sent (RESULTS_GRACE_S at most, and a little to close).
    needed = pre_stop + float(env["SDXL_MAX_SECONDS"]) + RESULTS_GRACE_S + 10
    assert spec["terminationGracePeriodSeconds"] >= needed


def test_probes_and_metrics_on_a_real_server(tiny_weights, tmp_path):
    """Liveness 200 and readiness 503 while the model loads; both 200 once it is loaded; the
    scrape path serves the metric the autoscaler follows."""
    env = {v["name"]: v["value"] for v in container()["env"] if "value" in v}
    env.update(SDXL_API_KEYS=KEYS[0])
    env.pop("SDXL_WEIGHTS_DIR")  # the tiny weights stand in for the image's
    env["SDXL_FILES_DIR"] = str(tmp_path / "files")  # the volume's stand-in
    server = Server(tiny_weights, tmp_path, env, args=["--host", "127.0.0.1"], gate=tmp_path / "g")
    readiness = server.base + container()["readinessProbe"]["httpGet"]["path"]
    liveness = server.base + container()["livenessProbe"]["httpGet"]["path"]
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    try:
        server.wait_for(lambda report: report["status"] == "loading", "loading")
        assert requests.get(liveness, timeout=10).status_code == 200
        assert requests.get(readiness, timeout=10).status_code == 503
        server.gate.touch()
        server.wait_ready()
        assert requests.get(readiness, timeout=10).status_code == 200
        assert requests.get(liveness, timeout=10).status_code == 200
        scraped = requests.get(server.base + annotations["prometheus.io/path"], timeout=10)
        assert scraped.status_code == 200
        external = one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["external"]
        assert re.search(rf"^{external['metric']['name']} ", scraped.text, re.M), scraped.text
    finally:
        server.stop()
