#!/usr/bin/env python3
"""Checks the packaging files that cannot run here (no Docker engine, no
cluster): compose.yaml, compose.eventstoredb.yaml and deploy/k8s/*.yaml
parse, and hang together.
Exits non-zero naming every problem found. Needs PyYAML."""

import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
problems = []


def check_compose():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose.get("services", {})
    for name, service in services.items():
        if "image" not in service and "build" not in service:
            problems.append(f"compose: {name} has neither image nor build")
        for needed in service.get("depends_on", {}) or {}:
            if needed not in services:
                problems.append(f"compose: {name} depends on unknown service {needed}")
        env = service.get("environment", {}) or {}
        if "order-system" in str(service.get("image", "")) and name != "migrate" and "HEALTH_URL" not in env:
            problems.append(f"compose: {name} sets no HEALTH_URL for the image's health check")
    for volume in re.findall(r"^\s+volumes: \[(\w+):", (ROOT / "compose.yaml").read_text(), re.M):
        if volume not in (compose.get("volumes") or {}):
            problems.append(f"compose: volume {volume} is not declared")
    env = (services.get("command-api") or {}).get("environment") or {}
    if env.get("APP_PROFILE") == "production":
        for secret in ("JWT_SECRET", "PERSONAL_DATA_KEY"):
            if secret not in env:
                problems.append(f"compose: the production profile needs {secret}, which the services do not get")


def check_compose_override():
    """compose.eventstoredb.yaml only adds to compose.yaml: EventStoreDB, and
    EVENT_STORE_URL on every service that reads or writes events."""
    base = yaml.safe_load((ROOT / "compose.yaml").read_text()).get("services", {})
    path = ROOT / "compose.eventstoredb.yaml"
    override = yaml.safe_load(path.read_text())
    services = override.get("services", {})
    known = set(base) | set(services)
    for name, service in services.items():
        if name not in base and "image" not in service:
            problems.append(f"{path.name}: {name} is new but has no image")
        for needed in service.get("depends_on", {}) or {}:
            if needed not in known:
                problems.append(f"{path.name}: {name} depends on unknown service {needed}")
    for name in ("command-api", "relay", "saga", "notifier", "projections", "query-api"):
        url = ((services.get(name) or {}).get("environment") or {}).get("EVENT_STORE_URL", "")
        if not url.startswith("esdb://"):
            problems.append(f"{path.name}: {name} does not set EVENT_STORE_URL to EventStoreDB")
    for volume in re.findall(r"^\s+volumes: \[(\w+):", path.read_text(), re.M):
        if volume not in (override.get("volumes") or {}):
            problems.append(f"{path.name}: volume {volume} is not declared")
    if "eventstoredb" not in (ROOT / "Dockerfile").read_text():
        problems.append("Dockerfile: the image is not built with the eventstoredb feature")


def check_kubernetes():
    docs = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            for key in ("apiVersion", "kind", "metadata"):
                if key not in doc:
                    problems.append(f"{path.name}: a document lacks {key}")
            docs.append((path.name, doc))
    deployments = {d["metadata"]["name"]: d for _, d in docs if d.get("kind") == "Deployment"}
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        if any(labels.get(k) != v for k, v in spec["selector"]["matchLabels"].items()):
            problems.append(f"deployment {name}: the selector does not match the pod labels")
        for container in spec["template"]["spec"]["containers"]:
            for key in ("livenessProbe", "readinessProbe", "resources", "image"):
                if key not in container:
                    problems.append(f"deployment {name}: container {container['name']} has no {key}")
            limits = container.get("resources", {}).get("limits", {})
            if not {"cpu", "memory"} <= set(limits):
                problems.append(f"deployment {name}: no cpu and memory limits")
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                port = container.get(probe, {}).get("httpGet", {}).get("port")
                if port not in ports:
                    problems.append(f"deployment {name}: {probe} names port {port!r}, not one of {ports}")
    secrets = [d for _, d in docs if d.get("kind") == "Secret"]
    for secret in ("JWT_SECRET", "PERSONAL_DATA_KEY", "DATABASE_URL"):
        if not any(secret in (d.get("stringData") or {}) for d in secrets):
            problems.append(f"k8s: the example Secret lacks {secret}, which the production profile needs")
    for file, doc in docs:
        if doc.get("kind") == "Service":
            selector = doc["spec"]["selector"]
            if not any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
                       for d in deployments.values()):
                problems.append(f"{file}: service {doc['metadata']['name']} selects no deployment")
        if doc.get("kind") == "HorizontalPodAutoscaler":
            target = doc["spec"]["scaleTargetRef"]["name"]
            if target not in deployments:
                problems.append(f"{file}: HPA {doc['metadata']['name']} targets unknown deployment {target}")
            if target in ("relay", "projections"):
                problems.append(f"{file}: {target} runs one live instance by design; do not autoscale it")


def check_observability():
    """The dashboard parses, and every metric it or the alert rules use is
    one the services export (listed in docs/operations.md)."""
    import json
    documented = (ROOT / "docs" / "operations.md").read_text()
    prefixes = ("http_", "event_store_", "relay_", "projection_", "saga_", "payment_gateway_", "notifier_", "query_")
    def metrics_in(text):
        for name in re.findall(r"\b([a-z][a-z0-9_]*)\b", text):
            if name.startswith(prefixes):
                yield re.sub(r"_(bucket|count|sum)$", "", name)
    dashboard = json.loads((ROOT / "deploy" / "observability" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((ROOT / "deploy" / "observability" / "alerts.yaml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    for name in sorted(set(m for e in exprs for m in metrics_in(e))):
        if f"`{name}`" not in documented:
            problems.append(f"observability: {name} is used but not a metric docs/operations.md lists")


check_compose()
check_compose_override()
check_kubernetes()
check_observability()
for problem in problems:
    print(problem, file=sys.stderr)
sys.exit(1 if problems else 0)
