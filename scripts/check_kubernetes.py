#!/usr/bin/env python3
"""Checks the Kubernetes manifests of deploy/kubernetes, offline (run by check_kubernetes.sh).

Each kustomization (the base and the GPU overlay) is rendered with kubectl's built-in
kustomize; every object it yields, and the demonstration Secrets, must validate against the
schemas of one Kubernetes release in strict mode (an unknown field fails). Then the rendered
objects must hold what the mesh relies on: gRPC health probes on the served port, resources,
the non-root security context, services that listen on 0.0.0.0, a headless Service behind the
gateway's balancer, the alert-manager's spill log and the collector's data directory on volumes
claimed by their StatefulSets, ConfigMaps and Secrets that exist, alert rules and model configuration in
step with their sources, and a GPU overlay that asks for a GPU and the CUDA provider.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from kubernetes_validate import utils as schemas

ROOT = Path(__file__).resolve().parent.parent
# The oldest release the manifests are written for: gRPC probes are GA since 1.27, and the
# preStop `sleep` action is on by default since 1.30.
KUBERNETES_VERSION = "1.30.0"
RENDERINGS = {
    "base": "deploy/kubernetes",
    "gpu": "deploy/kubernetes/overlays/gpu",
}
DEMO_SECRETS = "deploy/kubernetes/examples/demo-secrets.yaml"
CERTIFICATES = "deploy/kubernetes/certificates"
TLS_KEYS = ("tls.crt", "tls.key", "ca.crt")
HEALTH_PORT = 8081
RULES_DIR = "deploy/rules"
NAMESPACE = "mesh"
SERVICES = ("gateway", "inference", "metrics-collector", "alert-manager")
RUN_AS_USER = 10001


class Report:
    """Collects failures, so that one run names all of them."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def check(self, ok: bool, where: str, what: str) -> bool:
        if not ok:
            self.failures.append(f"{where}: {what}")
        return ok


def render(kubectl: str, folder: str) -> list[dict]:
    result = subprocess.run([kubectl, "kustomize", str(ROOT / folder)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"kubectl kustomize {folder} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def name_of(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def validate(objects: list[dict], where: str, report: Report) -> None:
    for obj in objects:
        try:
            schemas.validate(obj, KUBERNETES_VERSION, strict=True)
        except schemas.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            report.check(False, f"{where} {name_of(obj)}", f"schema: {path}: {err.message}")
        except (schemas.SchemaNotFoundError, schemas.InvalidSchemaError) as err:
            report.check(False, f"{where} {name_of(obj)}", err.message)


def strict_mode_works(report: Report) -> None:
    """A typo in a probe must fail: proves the strict schemas are the ones in use."""
    container = {"name": "c", "image": "i", "readinessProbe": {"grcp": {"port": 1}}}
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "typo"},
           "spec": {"selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}},
                                 "spec": {"containers": [container]}}}}
    try:
        schemas.validate(bad, KUBERNETES_VERSION, strict=True)
    except schemas.ValidationError:
        return
    report.check(False, "kubernetes-validate", "strict mode accepted an unknown field")


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workloads(objects: list[dict]) -> dict[str, dict]:
    """Deployments and StatefulSets, by name."""
    return {**by_kind(objects, "Deployment"), **by_kind(objects, "StatefulSet")}


def container_env(container: dict, config_maps: dict[str, dict]) -> dict[str, str]:
    """The container's environment as the kubelet builds it (literal values; env wins)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref and ref["name"] in config_maps:
            env.update(config_maps[ref["name"]].get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_deployment(dep: dict, config_maps: dict[str, dict], where: str,
                     report: Report) -> None:
    where = f"{where} {name_of(dep)}"
    pod = dep["spec"]["template"]["spec"]
    pod_security = pod.get("securityContext", {})
    for container in pod["containers"]:
        here = f"{where} container {container['name']}"
        ports = {p["containerPort"] for p in container.get("ports", [])}
        for kind in ("livenessProbe", "readinessProbe"):
            probe = container.get(kind, {})
            if report.check("grpc" in probe, here, f"{kind} is not a gRPC health probe"):
                report.check(probe["grpc"]["port"] in ports, here,
                             f"{kind} checks port {probe['grpc']['port']}, not a served port")
        resources = container.get("resources", {})
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                report.check(resource in resources.get(part, {}), here,
                             f"no {resource} in resources.{part}")
        security = {**pod_security, **container.get("securityContext", {})}
        report.check(security.get("runAsNonRoot") is True, here, "runAsNonRoot is not true")
        report.check(security.get("runAsUser") == RUN_AS_USER, here,
                     f"runAsUser is not {RUN_AS_USER}")
        report.check(security.get("allowPrivilegeEscalation") is False, here,
                     "allowPrivilegeEscalation is not false")
        report.check(security.get("readOnlyRootFilesystem") is True, here,
                     "readOnlyRootFilesystem is not true")
        report.check("ALL" in security.get("capabilities", {}).get("drop", []), here,
                     "capabilities do not drop ALL")
        # Each served port has a *_LISTEN variable on every address, and each such variable
        # names a served port.
        env = container_env(container, config_maps)
        listens = {k: v for k, v in env.items() if k.endswith("_LISTEN")}
        for key, value in listens.items():
            host, _, port = value.rpartition(":")
            report.check(host == "0.0.0.0" and port.isdigit() and int(port) in ports, here,
                         f"{key}={value} is not 0.0.0.0 on a served port {sorted(ports)}")
        listened = {int(v.rpartition(":")[2]) for v in listens.values()
                    if v.rpartition(":")[2].isdigit()}
        report.check(ports <= listened, here,
                     f"ports {sorted(ports - listened)} have no *_LISTEN variable")


def check_references(objects: list[dict], secrets: dict[str, dict], where: str,
                     report: Report) -> None:
    """Every ConfigMap and Secret that a pod names exists (Secrets: in the demonstration file,
    which stands for the ones created out of band), with the keys it reads."""
    config_maps = by_kind(objects, "ConfigMap")
    for dep in workloads(objects).values():
        pod = dep["spec"]["template"]["spec"]
        here = f"{where} {name_of(dep)}"
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                report.check(volume["configMap"]["name"] in config_maps, here,
                             f"ConfigMap {volume['configMap']['name']} does not exist")
            if "secret" in volume:
                report.check(volume["secret"]["secretName"] in secrets, here,
                             f"Secret {volume['secret']['secretName']} is not in {DEMO_SECRETS}")
        secret_volumes = {v["name"]: v["secret"]["secretName"]
                          for v in pod.get("volumes", []) if "secret" in v}
        for container in pod["containers"]:
            # A file path in the environment that points into a mounted Secret names one of
            # its keys (GATEWAY_API_KEYS_FILE=/etc/mesh/api-keys/api-keys.toml).
            for mount in container.get("volumeMounts", []):
                secret = secrets.get(secret_volumes.get(mount["name"], ""))
                for var in container.get("env", []) if secret else []:
                    key = var.get("value", "").removeprefix(mount["mountPath"].rstrip("/") + "/")
                    if key != var.get("value", ""):
                        report.check(key in secret.get("stringData", {}), here,
                                     f"{var['name']}: Secret {secret['metadata']['name']} "
                                     f"has no key {key}")
            for source in container.get("envFrom", []):
                name = source.get("configMapRef", {}).get("name")
                report.check(name is None or name in config_maps, here,
                             f"ConfigMap {name} does not exist")
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    secret = secrets.get(ref["name"], {})
                    report.check(ref["key"] in secret.get("stringData", {}), here,
                                 f"Secret {ref['name']} key {ref['key']} is not in {DEMO_SECRETS}")


def check_mesh(objects: list[dict], where: str, report: Report) -> dict:
    """What both renderings share; returns the inference Deployment and its environment."""
    deployments = workloads(objects)
    services = by_kind(objects, "Service")
    config_maps = by_kind(objects, "ConfigMap")
    report.check(sorted(deployments) == sorted(SERVICES), where,
                 f"workloads are {sorted(deployments)}, expected {sorted(SERVICES)}")
    for obj in objects:
        if obj["kind"] != "Namespace":
            report.check(obj["metadata"].get("namespace") == NAMESPACE, f"{where} {name_of(obj)}",
                         f"not in namespace {NAMESPACE}")
    for dep in deployments.values():
        check_deployment(dep, config_maps, where, report)

    # Services select a Deployment's pods and target one of its ports.
    pods = {name: d["spec"]["template"] for name, d in deployments.items()}
    serving: dict[str, dict] = {}
    for svc in services.values():
        targets = [n for n, t in pods.items()
                   if selects(svc["spec"].get("selector", {}), t["metadata"]["labels"])]
        if not report.check(len(targets) == 1, f"{where} {name_of(svc)}",
                            f"selects the pods of {targets}, expected one Deployment"):
            continue
        serving[svc["metadata"]["name"]] = svc
        ports = pods[targets[0]]["spec"]["containers"][0].get("ports", [])
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            report.check(any(target in (p.get("name"), p["containerPort"]) for p in ports),
                         f"{where} {name_of(svc)}", f"targetPort {target} is not a container port")
        headless = svc["spec"].get("clusterIP") == "None"
        if targets[0] == "inference":
            report.check(headless, f"{where} {name_of(svc)}",
                         "the inference Service is not headless (clusterIP: None)")
        else:
            report.check(not headless and svc["spec"].get("type", "ClusterIP") == "ClusterIP",
                         f"{where} {name_of(svc)}", "not a ClusterIP Service")
    for name in SERVICES:
        report.check(any(selects(s["spec"]["selector"], pods[name]["metadata"]["labels"])
                         for s in serving.values()) if name in pods else False,
                     where, f"no Service for {name}")
    # A StatefulSet's serviceName is a Service of this rendering that selects its pods.
    for name, workload in deployments.items():
        if workload["kind"] != "StatefulSet":
            continue
        governing = services.get(workload["spec"].get("serviceName", ""), {})
        report.check(selects(governing.get("spec", {}).get("selector", {}),
                             pods[name]["metadata"]["labels"]), f"{where} {name_of(workload)}",
                     f"serviceName {workload['spec'].get('serviceName')!r} is not a Service "
                     "that selects its pods")

    # The gateway's balancer gets the headless Service's name and port.
    gateway = deployments.get("gateway")
    if gateway:
        env = container_env(gateway["spec"]["template"]["spec"]["containers"][0], config_maps)
        host, _, port = env.get("GATEWAY_INFERENCE", "").rpartition(":")
        headless = serving.get(host.split(".")[0], {})
        report.check(headless.get("spec", {}).get("clusterIP") == "None"
                     and any(str(p["port"]) == port for p in headless["spec"]["ports"]),
                     f"{where} Deployment/gateway",
                     f"GATEWAY_INFERENCE={env.get('GATEWAY_INFERENCE')} does not name the "
                     "inference headless Service and its port")

    # Autoscalers and disruption budgets of the gateway and the inference service.
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    pdbs = by_kind(objects, "PodDisruptionBudget")
    for name in ("gateway", "inference"):
        report.check(any(h["apiVersion"] == "autoscaling/v2"
                         and h["spec"]["scaleTargetRef"]["name"] == name for h in hpas.values()),
                     where, f"no autoscaling/v2 HorizontalPodAutoscaler for {name}")
        report.check(name in pods and any(
            p["apiVersion"] == "policy/v1"
            and selects(p["spec"]["selector"]["matchLabels"], pods[name]["metadata"]["labels"])
            for p in pdbs.values()), where, f"no policy/v1 PodDisruptionBudget for {name}")
        report.check("replicas" not in deployments.get(name, {}).get("spec", {}), where,
                     f"Deployment {name} sets replicas, which its autoscaler owns")
    alert_manager = deployments.get("alert-manager", {})
    report.check(alert_manager.get("spec", {}).get("replicas") == 2, where,
                 "the alert-manager does not run 2 replicas")
    check_spill_volume(alert_manager, config_maps, where, report)
    check_collector_volume(deployments.get("metrics-collector", {}), config_maps, where, report)
    check_network_policies(objects, where, report)
    check_sender_keys(deployments, config_maps, where, report)

    inference = deployments.get("inference")
    if not inference:
        return {}
    container = inference["spec"]["template"]["spec"]["containers"][0]
    report.check("grpc" in container.get("startupProbe", {}), f"{where} Deployment/inference",
                 "no gRPC startupProbe (model loading)")
    check_model_config(inference, config_maps, where, report)
    return {"container": container, "env": container_env(container, config_maps)}


def check_claimed_dir(workload: dict, variable: str, name: str, config_maps: dict[str, dict],
                      where: str, report: Report) -> None:
    """`workload` is a StatefulSet whose folder `variable` is a volume claimed per replica
    (ReadWriteOnce, with a size), mounted writable there; the pod's fsGroup lets the non-root
    user write it."""
    here = f"{where} {name}"
    if not report.check(workload.get("kind") == "StatefulSet", here, "not a StatefulSet"):
        return
    claims = {t["metadata"]["name"]: t.get("spec", {})
              for t in workload["spec"].get("volumeClaimTemplates", [])}
    if not report.check(bool(claims), here, "has no volumeClaimTemplate"):
        return
    for claim, spec in claims.items():
        report.check("ReadWriteOnce" in spec.get("accessModes", []), here,
                     f"volumeClaimTemplate {claim} is not ReadWriteOnce")
        report.check(bool(spec.get("resources", {}).get("requests", {}).get("storage")), here,
                     f"volumeClaimTemplate {claim} requests no storage")
    pod = workload["spec"]["template"]["spec"]
    report.check(pod.get("securityContext", {}).get("fsGroup") == RUN_AS_USER, here,
                 f"fsGroup is not {RUN_AS_USER}: the non-root user cannot write its volume")
    container = pod["containers"][0]
    folder = container_env(container, config_maps).get(variable)
    if not report.check(bool(folder), here, f"{variable} is not set"):
        return
    report.check(any(m["mountPath"].rstrip("/") == folder.rstrip("/") and m["name"] in claims
                     and not m.get("readOnly", False)
                     for m in container.get("volumeMounts", [])), here,
                 f"{variable}={folder} is not a volumeClaimTemplate mounted writable there")


def check_spill_volume(alert_manager: dict, config_maps: dict[str, dict], where: str,
                       report: Report) -> None:
    """The alert-manager is a StatefulSet whose ALERT_MANAGER_SPILL_DIR is a volume claimed per
    replica (a pod's emptyDir would lose the waiting writes with the pod)."""
    check_claimed_dir(alert_manager, "ALERT_MANAGER_SPILL_DIR", "alert-manager", config_maps,
                      where, report)


def check_collector_volume(collector: dict, config_maps: dict[str, dict], where: str,
                           report: Report) -> None:
    """The metrics-collector is a StatefulSet of one replica whose COLLECTOR_DATA_DIR (its
    write-ahead log and snapshots) is a claimed volume, so that a restart reads its windows
    back: one collector owns one volume, and the alert managers query that one source."""
    check_claimed_dir(collector, "COLLECTOR_DATA_DIR", "metrics-collector", config_maps, where,
                      report)
    report.check(collector.get("spec", {}).get("replicas") == 1, f"{where} metrics-collector",
                 "does not run exactly 1 replica")


# Who may reach each service's port: the workloads (by app.kubernetes.io/name) or labels of
# other pods a NetworkPolicy admits; "*" is anyone.
REACHABLE_BY = {
    ("gateway", 50051): {"*"},
    ("inference", 50052): {"gateway", "alert-manager"},
    ("metrics-collector", 4317): {"gateway", "inference", "alert-manager"},
    ("metrics-collector", 9464): {"prometheus"},
    ("alert-manager", 50054): {"mesh.example.com/operator=true"},
}


def check_network_policies(objects: list[dict], where: str, report: Report) -> None:
    """Ingress is denied by default, and each service's port admits only REACHABLE_BY."""
    policies = by_kind(objects, "NetworkPolicy").values()
    report.check(any(p["spec"].get("podSelector") == {} and "Ingress" in p["spec"]["policyTypes"]
                     and not p["spec"].get("ingress") for p in policies),
                 where, "no default-deny ingress NetworkPolicy")
    for (service, port), expected in REACHABLE_BY.items():
        admitted: set[str] = set()
        for policy in policies:
            selected = policy["spec"].get("podSelector", {}).get("matchLabels", {})
            if selected.get("app.kubernetes.io/name") != service:
                continue
            for rule in policy["spec"].get("ingress", []):
                if not any(p.get("port") == port for p in rule.get("ports", [])):
                    continue
                if not rule.get("from"):
                    admitted.add("*")
                for peer in rule.get("from", []):
                    labels = peer.get("podSelector", {}).get("matchLabels", {})
                    name = labels.get("app.kubernetes.io/name")
                    admitted.add(name or ",".join(f"{k}={v}" for k, v in labels.items()) or "*")
        report.check(admitted == expected, f"{where} NetworkPolicy {service}:{port}",
                     f"admits {sorted(admitted)}, expected {sorted(expected)}")


def check_replicas(workloads: dict[str, dict], config_maps: dict[str, dict], where: str,
                   report: Report) -> None:
    """At N replicas: each pod exports its own instance id, the gateways share their canary
    splits through PostgreSQL, and model actions go to every inference pod."""
    for name, workload in workloads.items():
        container = workload["spec"]["template"]["spec"]["containers"][0]
        instance = [v for v in container.get("env", []) if v["name"] == "SERVICE_INSTANCE_ID"]
        report.check(bool(instance) and instance[0].get("valueFrom", {}).get("fieldRef", {})
                     .get("fieldPath") == "metadata.name", f"{where} {name}",
                     "SERVICE_INSTANCE_ID is not the pod's name (downward API): replicas' "
                     "metrics would fold into one")
    gateway = workloads.get("gateway")
    if gateway:
        container = gateway["spec"]["template"]["spec"]["containers"][0]
        url = [v for v in container.get("env", []) if v["name"] == "GATEWAY_DATABASE_URL"]
        ref = url[0].get("valueFrom", {}).get("secretKeyRef", {}) if url else {}
        report.check(ref.get("name") == "gateway-secrets" and ref.get("key") == "database-url",
                     f"{where} gateway", "GATEWAY_DATABASE_URL does not come from Secret "
                     "gateway-secrets (database-url): each replica would hold its own splits")
    manager = workloads.get("alert-manager")
    if manager:
        env = container_env(manager["spec"]["template"]["spec"]["containers"][0], config_maps)
        report.check(env.get("ALERT_MANAGER_INFERENCE", "").split("://")[-1].startswith(
                         "inference-headless:"), f"{where} alert-manager",
                     "ALERT_MANAGER_INFERENCE is not the headless Service: model actions would "
                     "reach one inference pod")


def check_sender_keys(workloads: dict[str, dict], config_maps: dict[str, dict], where: str,
                      report: Report) -> None:
    """The collector takes writes from key holders only, and every service sends a key."""
    def env(name: str) -> dict[str, str]:
        workload = workloads.get(name)
        if not workload:
            return {}
        return container_env(workload["spec"]["template"]["spec"]["containers"][0], config_maps)
    report.check(bool(env("metrics-collector").get("COLLECTOR_API_KEYS_FILE")),
                 f"{where} metrics-collector", "COLLECTOR_API_KEYS_FILE is not set: anyone may write")
    for name in ("gateway", "inference", "alert-manager"):
        report.check(env(name).get("OTEL_EXPORTER_OTLP_HEADERS", "").startswith(
                         "authorization=Bearer%20"),
                     f"{where} {name}", "OTEL_EXPORTER_OTLP_HEADERS sends no sender key")
    report.check(bool(env("gateway").get("GATEWAY_RECORDS_API_KEY")), f"{where} gateway",
                 "GATEWAY_RECORDS_API_KEY is not set: its records would be refused")


def check_model_config(inference: dict, config_maps: dict[str, dict], where: str,
                       report: Report) -> None:
    """Each model's config.toml is mounted at <MODEL_REPOSITORY>/<model>/config.toml, parses,
    names its model, and has the inputs and outputs of the graph that `make model` built."""
    pod = inference["spec"]["template"]["spec"]
    container = pod["containers"][0]
    repository = container_env(container, config_maps).get("MODEL_REPOSITORY", "")
    volumes = {v["name"]: v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    mounted = 0
    for mount in container.get("volumeMounts", []):
        config_map = config_maps.get(volumes.get(mount["name"], ""))
        if config_map is None or "subPath" not in mount:
            continue
        mounted += 1
        here = f"{where} ConfigMap/{config_map['metadata']['name']} {mount['subPath']}"
        text = config_map.get("data", {}).get(mount["subPath"])
        if not report.check(text is not None, here, "no such key"):
            continue
        config = tomllib.loads(text)
        model = config.get("name", "")
        report.check(mount["subPath"] == f"{model}.toml", here, f"holds model {model!r}")
        report.check(mount["mountPath"] == f"{repository}/{model}/config.toml", here,
                     f"mounted at {mount['mountPath']}, not {repository}/{model}/config.toml")
        built = ROOT / "models" / model / "config.toml"
        if built.exists():
            graph = tomllib.loads(built.read_text())
            # version_policy too: with the int8 version beside the fp32 one in the image, a
            # policy that picks the newest would serve int8 to every caller.
            for part in ("input", "output", "version_policy"):
                report.check(config.get(part) == graph.get(part), here,
                             f"its {part} differs from {built.relative_to(ROOT)}")
    report.check(mounted > 0, f"{where} Deployment/inference", "no model config mounted")


def check_rules(objects: list[dict], report: Report) -> None:
    """The ConfigMap alert-rules holds every rules file of deploy/rules, unchanged."""
    rules = by_kind(objects, "ConfigMap").get("alert-rules")
    if not report.check(rules is not None, "base", "no ConfigMap alert-rules"):
        return
    files = {p.name: p.read_text() for p in sorted((ROOT / RULES_DIR).iterdir())
             if p.suffix in (".yaml", ".yml")}
    data = rules.get("data", {})
    report.check(sorted(data) == sorted(files), "base ConfigMap/alert-rules",
                 f"holds {sorted(data)}, {RULES_DIR} has {sorted(files)} "
                 f"(list every rules file in {RULES_DIR}/Kustomization)")
    for name in set(data) & set(files):
        report.check(data[name] == files[name], "base ConfigMap/alert-rules",
                     f"{name} differs from {RULES_DIR}/{name}")


def certificate_secrets(kubectl: str, report: Report) -> dict[str, dict]:
    """cert-manager's Certificates: each service's, signed by the mesh's CA, for both ends of a
    call. Returns the Secrets they will fill, as if created (tls.crt, tls.key, ca.crt)."""
    certificates = by_kind(render(kubectl, CERTIFICATES), "Certificate")
    issuers = by_kind(render(kubectl, CERTIFICATES), "Issuer")
    report.check(certificates.get("mesh-ca", {}).get("spec", {}).get("isCA") is True,
                 CERTIFICATES, "no CA Certificate mesh-ca")
    report.check(issuers.get("mesh-ca", {}).get("spec", {}).get("ca", {}).get("secretName")
                 == "mesh-ca", CERTIFICATES, "no Issuer mesh-ca signing with the CA")
    secrets = {}
    for service in SERVICES:
        spec = certificates.get(service, {}).get("spec", {})
        here = f"{CERTIFICATES} Certificate/{service}"
        if not report.check(bool(spec), here, "missing"):
            continue
        report.check(spec.get("secretName") == f"{service}-tls", here,
                     f"secretName {spec.get('secretName')}, expected {service}-tls")
        report.check(spec.get("issuerRef", {}).get("name") == "mesh-ca", here,
                     "not issued by the mesh's CA (Issuer mesh-ca)")
        usages = set(spec.get("usages", []))
        report.check({"server auth", "client auth"} <= usages, here,
                     f"usages {sorted(usages)} lack server auth or client auth")
        report.check(service in spec.get("dnsNames", []), here, f"does not name {service}")
        secrets[f"{service}-tls"] = {"metadata": {"name": f"{service}-tls"},
                                     "stringData": {key: "" for key in TLS_KEYS},
                                     "dnsNames": spec.get("dnsNames", [])}
    return secrets


def check_tls(deployments: dict[str, dict], config_maps: dict[str, dict],
              secrets: dict[str, dict], where: str, report: Report) -> None:
    """Every service reads its own certificate, answers the kubelet's probes on a plaintext
    health port, and calls its peers at https:// addresses their certificates name."""
    for service in SERVICES:
        dep = deployments.get(service)
        if dep is None:
            continue
        here = f"{where} {name_of(dep)}"
        pod = dep["spec"]["template"]["spec"]
        container = pod["containers"][0]
        env = container_env(container, config_maps)
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        tls_volume = next((v["name"] for v in pod.get("volumes", [])
                           if v.get("secret", {}).get("secretName") == f"{service}-tls"), None)
        if report.check(tls_volume in mounts, here, f"does not mount the Secret {service}-tls"):
            folder = mounts[tls_volume].rstrip("/")
            for var, key in zip(("TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE"), TLS_KEYS):
                report.check(env.get(var) == f"{folder}/{key}", here,
                             f"{var}={env.get(var)}, expected {folder}/{key}")
        report.check("MESH_PLAINTEXT" not in env, here, "runs with MESH_PLAINTEXT")
        report.check(env.get("PLAINTEXT_HEALTH_LISTEN") == f"0.0.0.0:{HEALTH_PORT}", here,
                     f"PLAINTEXT_HEALTH_LISTEN={env.get('PLAINTEXT_HEALTH_LISTEN')}")
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(kind)
            if probe is not None:
                report.check(probe.get("grpc", {}).get("port") == HEALTH_PORT, here,
                             f"{kind} is not on the plaintext health port {HEALTH_PORT}")
        for var, value in env.items():
            if value.startswith(("http://", "https://")) and not var.startswith("PROMETHEUS"):
                report.check(value.startswith("https://"), here, f"{var}={value} is not https://")
                host = value.split("://", 1)[1].rsplit(":", 1)[0]
                peer = next((s for s in SERVICES if host == s or host.startswith(f"{s}.")), None)
                if peer and f"{peer}-tls" in secrets:
                    report.check(host in secrets[f"{peer}-tls"]["dnsNames"], here,
                                 f"{var}: {host} is not named by {peer}'s certificate")
    inference = env_of(deployments.get("gateway"), config_maps).get("GATEWAY_INFERENCE", "")
    host = inference.rsplit(":", 1)[0]
    report.check(host in secrets.get("inference-tls", {}).get("dnsNames", []), where,
                 f"GATEWAY_INFERENCE host {host} is not named by the inference certificate")


def env_of(dep: dict | None, config_maps: dict[str, dict]) -> dict[str, str]:
    if dep is None:
        return {}
    return container_env(dep["spec"]["template"]["spec"]["containers"][0], config_maps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubectl", default="kubectl", help="kubectl binary (for kustomize)")
    args = parser.parse_args()
    report = Report()
    strict_mode_works(report)

    demo = [d for d in yaml.safe_load_all((ROOT / DEMO_SECRETS).read_text()) if d]
    validate(demo, DEMO_SECRETS, report)
    secrets = by_kind(demo, "Secret")
    secrets.update(certificate_secrets(args.kubectl, report))
    keys_file = secrets.get("mesh-api-keys", {}).get("stringData", {}).get("api-keys.toml")
    report.check(keys_file == (ROOT / "deploy/api-keys.example.toml").read_text(), DEMO_SECRETS,
                 "api-keys.toml differs from deploy/api-keys.example.toml")

    found = {}
    for label, folder in RENDERINGS.items():
        objects = render(args.kubectl, folder)
        validate(objects, label, report)
        check_references(objects, secrets, label, report)
        check_tls(workloads(objects), by_kind(objects, "ConfigMap"), secrets, label, report)
        check_replicas(workloads(objects), by_kind(objects, "ConfigMap"), label, report)
        found[label] = check_mesh(objects, label, report)
        print(f"{label}: kubectl kustomize {folder}: {len(objects)} objects "
              f"({', '.join(sorted({o['kind'] for o in objects}))})")
        if label == "base":
            check_rules(objects, report)

    base, gpu = found.get("base", {}), found.get("gpu", {})
    if base:
        limits = base["container"].get("resources", {}).get("limits", {})
        report.check("nvidia.com/gpu" not in limits, "base Deployment/inference", "asks for a GPU")
        report.check(base["container"]["image"].split(":")[0] == "mesh/inference",
                     "base Deployment/inference", f"image {base['container']['image']}")
        report.check(base["env"].get("INFERENCE_DEVICE") == "cpu", "base Deployment/inference",
                     f"INFERENCE_DEVICE={base['env'].get('INFERENCE_DEVICE')}, expected cpu")
    if gpu:
        limits = gpu["container"].get("resources", {}).get("limits", {})
        report.check(str(limits.get("nvidia.com/gpu")) == "1", "gpu Deployment/inference",
                     "does not ask for nvidia.com/gpu: 1")
        report.check(gpu["container"]["image"].split(":")[0] == "mesh/inference-gpu",
                     "gpu Deployment/inference", f"image {gpu['container']['image']}")
        report.check(gpu["env"].get("INFERENCE_DEVICE") == "cuda", "gpu Deployment/inference",
                     f"INFERENCE_DEVICE={gpu['env'].get('INFERENCE_DEVICE')}, expected cuda")

    if report.failures:
        for failure in report.failures:
            print(f"FAIL {failure}")
        print(f"{len(report.failures)} failure(s)")
        return 1
    print(f"ok: every object valid against Kubernetes {KUBERNETES_VERSION} (strict schemas), "
          "probes, resources, security, services, config and the GPU overlay as the mesh needs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
