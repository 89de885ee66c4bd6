"""deploy/k8s (the ecom stack on Kubernetes) rendered by the real ``kubectl kustomize``
and checked offline.

``kubectl apply --dry-run=client`` is not used: even with ``--validate=false`` it asks an
API server for discovery (REST mapping) and fails without one, and no API server runs
here. Instead every rendered object is validated against the Kubernetes OpenAPI schemas in
strict mode (unknown fields are errors) by ``kubernetes-validate``, for the oldest
Kubernetes the manifests need (1.30: the native ``preStop.sleep`` action) and the newest
it knows; then the tests assert what meshkit needs of them: probes on the admin server,
a preStop pause and grace period that cover meshkit's drain, certificates and settings
where the processes read them, an HPA per Deployment, resources on every container.
Without kubectl the tests skip, and fail under CI=true.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from examples.ecom._process import parser
from meshkit.discovery import ConsulOptions
from tests.ops.tools import binary

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SERVICES = {"userd": "examples.ecom.user_service", "orderd": "examples.ecom.order_service",
            "summaryd": "examples.ecom.projection_service"}
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def objects() -> list[Obj]:
    """The objects ``kubectl kustomize deploy/k8s`` renders."""
    kubectl = binary("kubectl", "part of this machine's image; kubernetes.io/docs/tasks/tools")
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def of_kind(objects: list[Obj], kind: str) -> dict[str, Obj]:
    """The rendered objects of ``kind`` by name."""
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    """(Deployment, container) for every container of every Deployment."""
    for dep in of_kind(objects, "Deployment").values():
        for c in dep["spec"]["template"]["spec"]["containers"]:
            yield dep, c


def flag(args: list[str], name: str) -> str:
    """The value of ``--name=value`` in ``args``."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, args)
    return values[0]


def env(container: Obj) -> dict[str, Obj]:
    """The container's ``env`` entries by name."""
    return {e["name"]: e for e in container.get("env", [])}


def test_every_object_is_valid_for_kubernetes_1_30_and_newer(objects: list[Obj]) -> None:
    """Each rendered object passes the strict OpenAPI schema of 1.30 and of the newest
    release kubernetes-validate knows (a misspelt or misplaced field fails)."""
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget"} <= kinds, kinds
    for version in ("1.30", kubernetes_validate.latest_version()):
        for obj in objects:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} (k8s {version}): "
                            f"{exc.message} at {list(exc.path)}")
    assert {o["metadata"].get("namespace") for o in objects if o["kind"] != "Namespace"} \
        == {"meshkit-ecom"}


def test_each_service_runs_its_module_with_known_arguments(objects: list[Obj]) -> None:
    """userd, orderd and summaryd each run their example module; the arguments are ones the
    services' common parser knows and types (no leftovers), binding every interface."""
    deps = of_kind(objects, "Deployment")
    assert set(deps) == set(SERVICES)
    for dep, c in containers(objects):
        name = dep["metadata"]["name"]
        assert c["command"] == ["python", "-m", SERVICES[name]]
        args = [a.replace("$(POD_NAME)", f"{name}-abc") for a in c["args"]]
        parsed, unknown = parser(name, "sqlite:///x.db").parse_known_args(args)
        assert not unknown, unknown
        assert parsed.host == "0.0.0.0" and parsed.instance_id == f"{name}-abc"
        assert "POD_NAME" in env(c)  # $(POD_NAME) is defined, so the kubelet expands it


def test_probes_hit_the_admin_server_bound_on_all_interfaces(objects: list[Obj]) -> None:
    """Readiness is /readyz and liveness (and startup) /livez on the container port named
    admin, which is MESHKIT_ADMIN_PORT; the admin server binds 0.0.0.0 (MESHKIT_ADMIN_HOST),
    else the kubelet could not reach it."""
    config = of_kind(objects, "ConfigMap")["ecom-config"]["data"]
    assert config["MESHKIT_ADMIN_HOST"] == "0.0.0.0"
    admin_port = int(config["MESHKIT_ADMIN_PORT"])
    for dep, c in containers(objects):
        assert {"configMapRef": {"name": "ecom-config"}} in c["envFrom"]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["admin"] == admin_port
        assert ports["grpc"] == int(flag(c["args"], "port"))
        paths = {}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert get["port"] in ("admin", admin_port), (dep["metadata"]["name"], probe)
            paths[probe] = get["path"]
        assert paths == {"startupProbe": "/livez", "livenessProbe": "/livez",
                         "readinessProbe": "/readyz"}
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(admin_port)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_shutdown_covers_meshkit_drain(objects: list[Obj]) -> None:
    """preStop sleeps at least --drain-delay-s, and terminationGracePeriodSeconds exceeds
    preStop + drain_delay_s + grace_s (the kubelet counts preStop in the grace period, then
    SIGTERM starts serve()'s drain: deregister, drain_delay_s, grace_s for in-flight)."""
    for dep, c in containers(objects):
        drain_delay_s = float(flag(c["args"], "drain-delay-s"))
        grace_s = float(flag(c["args"], "grace-s"))
        pre_stop_s = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop_s >= drain_delay_s > 0
        period_s = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert period_s > pre_stop_s + drain_delay_s + grace_s, dep["metadata"]["name"]


def test_identity_registry_and_databases_come_from_config_and_secrets(
        objects: list[Obj]) -> None:
    """Each pod mounts its own certificate Secret at MESHKIT_CERT_DIR, names its workload in
    MESHKIT_WORKLOAD, registers its pod IP in the Consul registry of MESHKIT_REGISTRY, and
    reads DATABASE_URL from the ecom-database Secret (never a literal)."""
    config = of_kind(objects, "ConfigMap")["ecom-config"]["data"]
    consul = ConsulOptions.from_uri(config["MESHKIT_REGISTRY"], environ={})
    assert consul.addr
    assert config["MESHKIT_NATS_URL"].startswith("nats://")
    cert_dir = config["MESHKIT_CERT_DIR"]
    for dep, c in containers(objects):
        name = dep["metadata"]["name"]
        e = env(c)
        assert e["MESHKIT_WORKLOAD"]["value"] == name
        assert e["MESHKIT_ADVERTISE_HOST"]["value"] == "$(POD_IP)"
        assert e["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert list(e).index("POD_IP") < list(e).index("MESHKIT_ADVERTISE_HOST")
        assert e["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "ecom-database",
                                                                   "key": name}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        assert volumes[mounts[cert_dir]]["secret"]["secretName"] == f"meshkit-certs-{name}"
        if name == "userd":  # the JWT signing keys, shared by userd's replicas
            assert volumes[mounts[e["MESHKIT_JWT_DIR"]["value"]]]["secret"]["secretName"] \
                == "ecom-jwt-keys"


def test_every_deployment_has_an_hpa_a_service_a_pdb_and_resources(
        objects: list[Obj]) -> None:
    """Each Deployment is scaled by an autoscaling/v2 HPA (min >= 2), reached by a Service
    and a PodDisruptionBudget selecting its pods, leaves replicas to the HPA, and every
    container requests and limits CPU and memory."""
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h
            for h in of_kind(objects, "HorizontalPodAutoscaler").values()}
    services = of_kind(objects, "Service")
    pdbs = of_kind(objects, "PodDisruptionBudget")
    for name, dep in of_kind(objects, "Deployment").items():
        assert "replicas" not in dep["spec"], name
        hpa = hpas[name]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
        assert services[name]["spec"]["selector"].items() <= pod_labels.items()
        assert pdbs[name]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    for dep, c in containers(objects):
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (dep["metadata"]["name"],
                                                                    kind)


def test_dockerfile_copies_what_the_pods_run() -> None:
    """deploy/Dockerfile copies paths that exist and installs the extras the services
    import (examples: grpc, asyncpg, nats; consul: the registry the manifests name)."""
    text = (REPO / "deploy" / "Dockerfile").read_text()
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (REPO / src).exists(), src
    assert re.search(r"pip install .*\.\[[^]]*examples[^]]*consul", text), text
