#!/usr/bin/env python3
"""Renders, lints and validates the kpistream Helm chart offline, and asserts what operators rely on.

Run from anywhere: `python3 helm/check_chart.py` (CI runs it through the Rust
test crates/kpi-cluster-tests/tests/chart.rs). Needs two PyPI packages that
scripts/setup-deps installs: helm-python-sdk (Helm's own Go SDK behind a C ABI,
so no helm binary and no network) and kubernetes-validate (Kubernetes' JSON
schemas, shipped inside the package).

What it does, for the default values, values-ha.yaml, and NATS external:
  * `helm lint --strict` (the one tolerated finding is the missing NATS
    dependency: the official NATS chart cannot be fetched offline, so nothing is
    vendored; `helm dependency build` fetches it before a real install);
  * renders the chart and validates every manifest against the Kubernetes
    schemas of the oldest supported and the newest known Kubernetes release,
    strictly (unknown fields are errors); CRD kinds (ServiceMonitor) have no
    schema there and get a structural check instead;
  * asserts the operational contract: probes on /healthz and /readyz, a PDB per
    workload, grace period longer than the drain, restrictive security
    contexts, resources, the aggregator's ordinal wiring, the gateway HPA;
  * checks that settings which cannot work are refused at render time.

Prints one line per check and closes with "N passed, N failed"; exits non-zero
on any failure or when a dependency is missing.
"""

from __future__ import annotations

import copy
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

try:
    import yaml
    import helm_python as helm
    import kubernetes_validate
except ImportError as missing:  # fail loudly: a skipped chart check is a lie
    sys.stderr.write(
        f"check_chart.py: missing Python package ({missing}).\n"
        "Install with: pip install helm-python-sdk kubernetes-validate pyyaml "
        "(scripts/setup-deps does this).\n"
    )
    sys.exit(2)

CHART = Path(__file__).resolve().parent / "kpistream"
RELEASE = "kpi"
NAMESPACE = "kpistream"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest
# schema set kubernetes-validate ships.
KUBE_VERSIONS = ["1.30.0", kubernetes_validate.utils.latest_version()]
# Kinds that come from CRDs and have no schema in kubernetes-validate.
CRD_KINDS = {"ServiceMonitor"}
TOLERATED_LINT = "chart directory is missing these dependencies: nats"
EXTERNAL = {"nats": {"enabled": False, "external": {"url": "nats://nats-a:4222,nats://nats-b:4222"}}}

results: list[tuple[str, bool]] = []


def check(name: str, fn: Callable[[], None]) -> None:
    """Runs one check, records and prints its outcome."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
        results.append((name, False))
        print(f"FAIL {name}: {e}")
        if not isinstance(e, AssertionError):
            traceback.print_exc()
    else:
        results.append((name, True))
        print(f"ok   {name}")


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def ha_values() -> dict:
    return yaml.safe_load((CHART / "values-ha.yaml").read_text()) or {}


def render(values: dict | None) -> list[dict]:
    """The chart's manifests for `values` (layered over values.yaml, as `helm template` does)."""
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict] = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__file__", path)
                docs.append(doc)
    return docs


def notes(values: dict | None) -> str:
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return next(v for k, v in files.items() if k.endswith("NOTES.txt"))


def lint(values: dict | None) -> None:
    report = helm.lint(str(CHART), values, strict=True, namespace=NAMESPACE, kube_version="v1.30.0")
    problems = [
        m for m in report.get("messages", [])
        if m.get("severity", 0) >= 2 and TOLERATED_LINT not in m.get("error", "")
    ]
    other_errors = [e for e in report.get("errors", []) if TOLERATED_LINT not in e]
    assert not problems and not other_errors, f"lint: {problems or other_errors}"


def validate(docs: list[dict]) -> None:
    for doc in docs:
        body = {k: v for k, v in doc.items() if k != "__file__"}
        where = f"{doc['kind']}/{doc['metadata']['name']} ({doc['__file__']})"
        if doc["kind"] in CRD_KINDS:
            assert body["apiVersion"] == "monitoring.coreos.com/v1", where
            eps = body["spec"]["endpoints"]
            assert eps and all(e["port"] == "http" and e["path"] == "/metrics" for e in eps), where
            assert body["spec"]["selector"]["matchLabels"], where
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(body, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise AssertionError(f"{where} invalid for Kubernetes {version}: {e.message} at {list(e.path)}") from None


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, component: str) -> dict:
    found = [d for d in by_kind(docs, kind)
             if d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    assert len(found) == 1, f"expected one {kind} for {component}, found {len(found)}"
    return found[0]


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


WORKLOADS = [("Deployment", "ingest"), ("StatefulSet", "aggregator"), ("Deployment", "gateway")]


def operator_contract(docs: list[dict], values: dict) -> None:
    """The things an operator relies on, checked on the rendered output."""
    cm = by_kind(docs, "ConfigMap")
    assert len(cm) == 1, "one shared ConfigMap"
    shared = cm[0]["data"]
    for key in ["NATS_URL", "KPI_PARTITIONS", "KPI_REPLICAS"]:
        assert shared.get(key), f"ConfigMap lacks {key}"
    assert by_kind(docs, "Secret") or values.get("auth", {}).get("existingSecret"), "Secret missing"
    pdbs = by_kind(docs, "PodDisruptionBudget")
    for kind, component in WORKLOADS:
        w = one(docs, kind, component)
        spec = w["spec"]["template"]["spec"]
        pod_labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), f"{component}: selector"
        # Probes.
        (c,) = spec["containers"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", f"{component}: liveness"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", f"{component}: readiness"
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz", f"{component}: startup"
        ports = {p["name"] for p in c["ports"]}
        assert c["livenessProbe"]["httpGet"]["port"] in ports, f"{component}: probe port"
        # Disruption budget selecting exactly this workload's pods.
        mine = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()]
        assert len(mine) == 1, f"{component}: expected one PodDisruptionBudget, found {len(mine)}"
        # Grace period longer than the drain (plus the preStop sleep).
        env = env_of(c)
        drain = int(env.get("KPI_DRAIN_SECS") or env.get("KPI_DRAIN_GRACE_SECS"))
        pre_stop = int(c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0))
        grace = int(spec["terminationGracePeriodSeconds"])
        assert grace > drain + pre_stop, f"{component}: grace {grace}s <= drain {drain}s + preStop {pre_stop}s"
        # Security.
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["seccompProfile"]["type"] == "RuntimeDefault", f"{component}: pod securityContext"
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, f"{component}: readOnlyRootFilesystem"
        assert sc["allowPrivilegeEscalation"] is False, f"{component}: allowPrivilegeEscalation"
        assert sc["capabilities"]["drop"] == ["ALL"], f"{component}: capabilities"
        assert spec["automountServiceAccountToken"] is False, f"{component}: token mounted"
        # Resources.
        res = c["resources"]
        assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"], f"{component}: resources"
        # Shared settings come from the ConfigMap.
        assert any(ref.get("configMapRef", {}).get("name") == cm[0]["metadata"]["name"] for ref in c["envFrom"]), f"{component}: envFrom"
        assert c["command"] == [f"/usr/local/bin/kpi-{component}"], f"{component}: command"
    # The aggregator derives partition ownership from its ordinal.
    agg = one(docs, "StatefulSet", "aggregator")
    env = env_of(agg["spec"]["template"]["spec"]["containers"][0])
    assert env["KPI_REPLICA_INDEX"] == {"fieldRef": {"fieldPath": "metadata.name"}}, "aggregator: KPI_REPLICA_INDEX"
    assert int(env["KPI_REPLICA_COUNT"]) == agg["spec"]["replicas"], "aggregator: KPI_REPLICA_COUNT != replicas"
    assert agg["spec"]["replicas"] <= int(shared["KPI_PARTITIONS"]), "aggregator: more replicas than partitions"
    headless = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == agg["spec"]["serviceName"]]
    assert headless and headless[0]["spec"]["clusterIP"] == "None", "aggregator: headless Service"
    # The gateway autoscales, and its Deployment leaves replicas to the HPA.
    gw = one(docs, "Deployment", "gateway")
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": gw["metadata"]["name"]}, "HPA target"
    assert "replicas" not in gw["spec"], "gateway: replicas set while the HPA owns them"
    assert gw["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "gateway: rolling update may drop capacity"
    # Every workload is reachable through a Service with the ports it names.
    for component in ["ingest", "gateway"]:
        svc = one(docs, "Service", component)
        assert svc["spec"]["selector"].items() <= one(docs, "Deployment", component)["spec"]["template"]["metadata"]["labels"].items()


# Blocks handed to Kubernetes as they are: their comment documents the whole object.
PASSTHROUGH = {"podSecurityContext", "securityContext", "resources", "natsPodLabels"}


def check_values_documented() -> None:
    """Every key of values.yaml has a comment right above it (keys inside a
    pass-through Kubernetes object are covered by the object's comment)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str, bool]] = []  # (indent, key, commented)
    undocumented = []
    prev = ""
    for i, line in enumerate(lines):
        stripped = line.strip()
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if m and not stripped.startswith("#"):
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            commented = prev.startswith("#")
            covered = any(k in PASSTHROUGH and c for _, k, c in stack)
            if not (commented or covered):
                undocumented.append(f"line {i + 1}: {stripped}")
            stack.append((indent, m.group(2), commented))
        if stripped:
            prev = stripped
    assert not undocumented, "undocumented values: " + "; ".join(undocumented)


def refuses(values: dict, fragment: str) -> None:
    try:
        render(values)
    except helm.HelmError as e:
        assert fragment in str(e), f"render failed, but not with {fragment!r}: {e}"
    else:
        raise AssertionError(f"render accepted {values}")


def main() -> int:
    ha = ha_values()
    cases = {"default": None, "ha": ha, "external-nats": EXTERNAL, "ha+external-nats": merge(ha, EXTERNAL)}
    check("values.yaml documents every value", check_values_documented)
    check("lint default values", lambda: lint(None))
    check("lint values-ha.yaml", lambda: lint(ha))
    check("lint external NATS", lambda: lint(EXTERNAL))
    rendered: dict[str, list[dict]] = {}
    for name, values in cases.items():
        def do_render(name=name, values=values) -> None:
            rendered[name] = render(values)
            assert rendered[name], "nothing rendered"
        check(f"render {name}", do_render)
        if name not in rendered:
            continue
        check(f"validate {name} against Kubernetes {', '.join(KUBE_VERSIONS)} schemas",
              lambda name=name: validate(rendered[name]))
        check(f"operator contract {name}", lambda name=name, values=values: operator_contract(rendered[name], values or {}))

    def in_cluster_url() -> None:
        cm = by_kind(rendered["default"], "ConfigMap")[0]
        assert cm["data"]["NATS_URL"] == f"nats://{RELEASE}-nats:4222", cm["data"]["NATS_URL"]
        ext = by_kind(rendered["external-nats"], "ConfigMap")[0]
        assert ext["data"]["NATS_URL"] == EXTERNAL["nats"]["external"]["url"], ext["data"]["NATS_URL"]
    check("NATS URL: subchart service or external", in_cluster_url)

    def env_names_exist() -> None:
        # Every variable the chart sets must be one a binary reads, or the
        # setting is silently ignored in production.
        src = "\n".join(p.read_text() for p in (Path(__file__).resolve().parent.parent / "crates").glob("*/src/**/*.rs"))
        known = set(re.findall(r'env = "([A-Z0-9_]+)"', src)) | {"NATS_URL", "RUST_LOG", "KPI_LOG_FORMAT"}
        for alg in ("hs256", "rsa", "ed25519", "jwks"):
            docs = render({"auth": {"jwt": {"key": "k", "algorithm": alg, "audience": "a", "issuer": "i"}}})
            for doc in docs + rendered["ha"]:
                if doc.get("kind") == "ConfigMap":
                    names = set(doc.get("data", {}))
                else:
                    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
                    names = {e["name"] for c in spec.get("containers", []) for e in c.get("env", [])}
                unknown = {n for n in names if n.startswith("KPI_") or n == "NATS_URL"} - known
                assert not unknown, f"{doc.get('kind')} {doc['metadata']['name']} sets variables no binary reads: {sorted(unknown)}"
        refuses({"auth": {"jwt": {"key": "k", "algorithm": "md5"}}}, "auth.jwt.algorithm")
    check("every KPI_* variable the chart sets is read by a binary", env_names_exist)

    def ha_profile() -> None:
        docs = rendered["ha"]
        cm = by_kind(docs, "ConfigMap")[0]["data"]
        assert cm["KPI_REPLICAS"] == "3", "HA streams are R3"
        assert one(docs, "StatefulSet", "aggregator")["spec"]["replicas"] >= 3
        (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
        assert hpa["spec"]["minReplicas"] > 2
        assert ha["nats"]["config"]["cluster"]["replicas"] == 3
        assert len(by_kind(docs, "ServiceMonitor")) == 3 and len(by_kind(docs, "NetworkPolicy")) == 3
        assert "NOTE: NATS runs" not in notes(ha)
    check("values-ha.yaml: R3 streams, 3 NATS, more gateways and aggregators", ha_profile)

    def publisher_token() -> None:
        docs = render({"auth": {"publisherToken": "s3cret", "jwt": {"key": "k"}}})
        ing = one(docs, "Deployment", "ingest")["spec"]["template"]["spec"]["containers"][0]
        ref = env_of(ing)["KPI_PUBLISHER_TOKEN"]["secretKeyRef"]
        assert ref["key"] == "publisher-token", ref
        # No token: the variable is absent (an empty one would be refused by ingest).
        ing = one(rendered["default"], "Deployment", "ingest")["spec"]["template"]["spec"]["containers"][0]
        assert "KPI_PUBLISHER_TOKEN" not in env_of(ing)
        gw = one(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
        assert any(v["name"] == "jwt" for v in gw["volumes"])
        validate(docs)
    check("publisher token and JWT key come from the Secret", publisher_token)

    check("refuses grace period <= drain", lambda: refuses(
        {"gateway": {"drainSecs": 30, "terminationGracePeriodSeconds": 30}}, "terminationGracePeriodSeconds"))
    check("refuses more aggregator replicas than partitions", lambda: refuses(
        {"partitions": 2, "aggregator": {"replicas": 3}}, "must not exceed partitions"))
    check("refuses nats.enabled=false without a URL", lambda: refuses(
        {"nats": {"enabled": False}}, "nats.external.url is required"))

    passed = sum(1 for _, ok in results if ok)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
