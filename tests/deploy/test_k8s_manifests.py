"""deploy/k8s, validated offline: every overlay rendered by `kubectl kustomize`, each
object checked against the Kubernetes OpenAPI schemas (kubernetes-validate, strict, at
the oldest and newest versions we support), and the wiring the manifests promise:
probes ask the service's real health names, the grace period covers the drain, clients
reach the teacher through the headless Service, only they may, the trainer resumes from
a PVC of its own, the gpu overlay asks for GPUs, the HPA's metric exists."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from deploy_tools import OVERLAYS, containers, find, kustomize

from opd_protos.names import LIVENESS_SERVICE, SERVICE_NAME
from opd_teacher.metrics import ServiceMetrics

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: kustomize(overlay) for overlay in OVERLAYS}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_objects_match_the_kubernetes_schemas(
    overlay: str, version: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objects = rendered[overlay]
    assert len(objects) >= 12
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{overlay}: {obj['kind']} {obj['metadata']['name']}: {error}")


def _teacher(objects: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = find(objects, "Deployment", "opd-teacher")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_teacher_probes_ask_the_service_health_names(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    container = _teacher(rendered[overlay])
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    assert container["livenessProbe"]["grpc"] == {"port": grpc_port, "service": LIVENESS_SERVICE}
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["grpc"] == {"port": grpc_port, "service": SERVICE_NAME}
    startup = container["startupProbe"]
    # Model loading: at least 10 minutes before liveness may restart the pod.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_runs_as_the_images_non_root_user(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    for obj in rendered[overlay]:
        if obj["kind"] in ("Deployment", "Job"):
            context = obj["spec"]["template"]["spec"]["securityContext"]
            assert context["runAsNonRoot"] is True
            assert context["runAsUser"] == 10001
            for container in containers(obj):
                assert container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_and_pdb_select_the_teacher(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objects = rendered[overlay]
    labels = find(objects, "Deployment", "opd-teacher")["spec"]["template"]["metadata"]["labels"]
    headless = find(objects, "Service", "opd-teacher-headless")["spec"]
    cluster_ip = find(objects, "Service", "opd-teacher")["spec"]
    pdb = find(objects, "PodDisruptionBudget", "opd-teacher")["spec"]
    assert headless["clusterIP"] == "None"
    assert cluster_ip.get("type", "ClusterIP") == "ClusterIP"
    for selector in (headless["selector"], cluster_ip["selector"], pdb["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    container_ports = {p["name"] for p in _teacher(objects)["ports"]}
    for service in (headless, cluster_ip):
        assert {p["targetPort"] for p in service["ports"]} <= container_ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_and_trainers_reach_the_teacher_port(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objects = rendered[overlay]
    policy = find(objects, "NetworkPolicy", "opd-teacher")["spec"]
    teacher = find(objects, "Deployment", "opd-teacher")["spec"]["template"]["metadata"]
    assert policy["podSelector"]["matchLabels"].items() <= teacher["labels"].items()
    assert policy["policyTypes"] == ["Ingress"]
    grpc_rules = [r for r in policy["ingress"] if {p["port"] for p in r["ports"]} == {50051}]
    (rule,) = grpc_rules
    (peer,) = rule["from"]
    client_labels = peer["podSelector"]["matchLabels"]
    for kind, name in (("Deployment", "opd-gateway"), ("Job", "opd-trainer-example")):
        pod_labels = find(objects, kind, name)["spec"]["template"]["metadata"]["labels"]
        assert client_labels.items() <= pod_labels.items(), name
    assert not (client_labels.items() <= teacher["labels"].items())
    # No other rule opens the gRPC port.
    other = [r for r in policy["ingress"] if r is not rule]
    assert all(50051 not in {p["port"] for p in r["ports"]} for r in other)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_job_resumes_from_its_own_pvc(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objects = rendered[overlay]
    job = find(objects, "Job", "opd-trainer-example")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    assert job["spec"]["backoffLimit"] >= 3
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {"action": "FailJob"}.items() <= rules[0].items()
    assert rules[0]["onExitCodes"]["values"] == [2]  # opd-train's bad-input exit code
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims["data"] == "opd-trainer-example"
    teacher_claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in find(objects, "Deployment", "opd-teacher")["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims["data"] not in teacher_claims
    find(objects, "PersistentVolumeClaim", "opd-trainer-example")
    (trainer,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in trainer["volumeMounts"]}
    assert mounts["data"] == "/data"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_token_secret_is_mounted_where_the_flags_point(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    objects = rendered[overlay]
    secrets = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    for kind, name in (
        ("Deployment", "opd-teacher"),
        ("Deployment", "opd-gateway"),
        ("Job", "opd-trainer-example"),
    ):
        pod = find(objects, kind, name)["spec"]["template"]["spec"]
        (auth,) = [v for v in pod["volumes"] if v["name"] == "auth"]
        secret_name = auth["secret"]["secretName"]
        assert secret_name.startswith("opd-auth")
        if overlay == "cpu":
            assert secret_name in secrets  # generated, with its hash suffix
        else:
            assert not secrets  # created by the operator, never committed
        assert auth["secret"]["items"] == [{"key": "token", "path": "token"}]


def test_gpu_overlay_asks_for_gpus_and_scales_on_queue_depth(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    gpu = rendered["gpu"]
    container = _teacher(gpu)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--backend=vllm" in container["args"]
    assert "nvidia.com/gpu" not in _teacher(rendered["cpu"])["resources"].get("limits", {})
    hpa = find(gpu, "HorizontalPodAutoscaler", "opd-teacher")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "opd-teacher",
    }
    (metric,) = hpa["metrics"]
    gauges = {m.name for m in ServiceMetrics().registry.collect() if m.type == "gauge"}
    assert metric["pods"]["metric"]["name"] in gauges
