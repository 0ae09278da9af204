"""Offline checks of the Helm chart: lint, render every ci/*-values.yaml, validate the
rendered objects strictly against the Kubernetes schemas, check the values schema rejects a
bad file, and check the chart's default config matches config.example.toml.

Run through scripts/chart-check.sh, which installs helm-python-sdk and kubernetes-validate.
Prints 'N passed, M failed' last.
"""

import pathlib
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "outbox-relay"
KUBE_VERSION = "1.31.0"

passed = 0
failed = 0


def check(name, fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"PASS {name}")
    except Exception as e:  # noqa: BLE001 - report every failure, keep going
        failed += 1
        print(f"FAIL {name}: {e}")


def render(values_file):
    values = helm.values_from_yaml(values_file.read_text()) or {}
    chart = helm.Chart.load(CHART)
    chart.validate_schema(values)
    manifests = chart.render(values, name="relay", namespace="apps", is_install=True)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def kinds(docs):
    return sorted(d["kind"] for d in docs)


def find(docs, kind, name_suffix=""):
    for d in docs:
        if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix):
            return d
    raise AssertionError(f"no {kind} *{name_suffix} in {kinds(docs)}")


def validate_strict(docs):
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i, d in enumerate(docs):
            f = pathlib.Path(tmp) / f"{i:02d}-{d['kind']}.yaml"
            f.write_text(yaml.safe_dump(d))
            files.append(str(f))
        out = subprocess.run(
            [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", KUBE_VERSION, *files],
            capture_output=True,
            text=True,
        )
        text = out.stdout + out.stderr
        if out.returncode != 0 or "ERROR" in text:
            raise AssertionError(text)


def lint():
    report = helm.lint(CHART, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    assert not problems and not report.get("errors"), report


def container(pod_spec, name="outbox-relay"):
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def assert_restricted(pod_spec):
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_spec["enableServiceLinks"] is False
    c = container(pod_spec)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"


def defaults():
    docs = render(CHART / "ci" / "defaults-values.yaml")
    validate_strict(docs)
    dep = find(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert_restricted(spec)
    assert container(spec)["readinessProbe"]["httpGet"]["path"] == "/readyz"
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/config" in annotations and "checksum/secret" in annotations
    config = tomllib.loads(find(docs, "ConfigMap")["data"]["config.toml"])
    grace = config["relay"]["shutdown_grace"]
    assert grace.endswith("s") and int(grace[:-1]) < spec["terminationGracePeriodSeconds"], grace
    assert find(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    find(docs, "Job", "-migrate")
    find(docs, "Pod", "-test-readyz")
    assert "ServiceMonitor" not in kinds(docs) and "PrometheusRule" not in kinds(docs)


def ha_monitoring():
    docs = render(CHART / "ci" / "ha-monitoring-values.yaml")
    validate_strict(docs)
    assert find(docs, "Deployment")["spec"]["replicas"] == 2
    assert find(docs, "ServiceMonitor")["spec"]["endpoints"][0]["path"] == "/metrics"
    rules = find(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert names == {
        "OutboxRelayBacklogTooOld",
        "OutboxRelayDeadMessages",
        "OutboxRelayNoLeader",
        "OutboxRelayPassedRowsFound",
    }, names
    config = tomllib.loads(find(docs, "ConfigMap")["data"]["config.toml"])
    assert config["broker"]["kind"] == "kafka"
    assert config["broker"]["kafka"]["properties"]["compression.type"] == "zstd"
    secret = find(docs, "Secret", "relay-outbox-relay")
    assert "OUTBOX_RELAY__DATABASE__URL" in secret["stringData"]
    # The migrate Job runs as the schema owner: its Secret comes last and overrides the relay's.
    job = find(docs, "Job", "-migrate")["spec"]["template"]["spec"]
    refs = [e["secretRef"]["name"] for e in container(job, "migrate")["envFrom"]]
    assert refs == ["relay-outbox-relay", "app-outbox-owner"], refs
    # CA files for TLS are mounted into both the relay and the migrate Job.
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    for spec, name in ((pod, "outbox-relay"), (job, "migrate")):
        assert {"name": "tls", "secret": {"secretName": "app-outbox-ca"}} in spec["volumes"], spec["volumes"]
        mounts = {m["name"]: m["mountPath"] for m in container(spec, name)["volumeMounts"]}
        assert mounts.get("tls") == "/etc/outbox-relay-tls", mounts


def existing_secret():
    docs = render(CHART / "ci" / "existing-secret-values.yaml")
    validate_strict(docs)
    spec = find(docs, "Deployment")["spec"]["template"]["spec"]
    refs = [e["secretRef"]["name"] for e in container(spec)["envFrom"]]
    assert refs == ["app-outbox-credentials"], refs
    assert not any(d["kind"] == "Secret" for d in docs), kinds(docs)
    assert "Job" not in kinds(docs)


def sidecar():
    docs = render(CHART / "ci" / "sidecar-values.yaml")
    validate_strict(docs)
    app = find(docs, "Deployment", "-example-app")
    spec = app["spec"]["template"]["spec"]
    relay = container(spec)
    assert relay in spec["initContainers"], "the relay is a native sidecar"
    assert relay["restartPolicy"] == "Always"
    assert relay["readinessProbe"]["httpGet"]["path"] == "/livez", "a broker outage must not unready the app"
    assert {v["name"] for v in spec["volumes"]} == {"outbox-relay-config"}
    assert_restricted(spec)


def application_chart_includes_the_sidecar():
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        parent = pathlib.Path(tmp) / "example-app"
        shutil.copytree(ROOT / "tests" / "chart" / "parent", parent)
        shutil.copytree(CHART, parent / "charts" / "outbox-relay")
        chart = helm.Chart.load(parent)
        manifests = chart.render({}, name="shop", namespace="apps", is_install=True)
    docs = [
        d
        for path, text in manifests.items()
        if not path.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]
    validate_strict(docs)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in deployments] == ["shop-app"], "only the application's Deployment"
    assert "Service" not in kinds(docs) and "PodDisruptionBudget" not in kinds(docs), kinds(docs)
    spec = deployments[0]["spec"]["template"]["spec"]
    relay = container(spec)
    assert relay in spec["initContainers"] and relay["restartPolicy"] == "Always"
    assert relay["readinessProbe"]["httpGet"]["path"] == "/livez"
    configmap = find(docs, "ConfigMap")
    assert spec["volumes"][0]["configMap"]["name"] == configmap["metadata"]["name"]
    find(docs, "Secret", "outbox-relay")


def schema_rejects_bad_values():
    chart = helm.Chart.load(CHART)
    bad = helm.values_from_yaml((ROOT / "tests" / "chart" / "bad-values.yaml").read_text())
    try:
        chart.validate_schema(bad)
    except helm.HelmValuesError as e:
        text = str(e)
        for key in ["replicaCount", "replicas"]:
            assert key in text, f"{key} not named in: {text}"
        return
    raise AssertionError("the schema accepted bad values")


def default_config_matches_example():
    docs = render(CHART / "ci" / "defaults-values.yaml")
    rendered = tomllib.loads(find(docs, "ConfigMap")["data"]["config.toml"])
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    assert rendered == example, f"chart config differs from config.example.toml:\n{rendered}\n{example}"


def every_ci_values_file_renders():
    files = sorted((CHART / "ci").glob("*-values.yaml"))
    assert len(files) >= 4, files
    for f in files:
        validate_strict(render(f))


check("helm lint --strict", lint)
check("defaults render, restricted pod, probes, checksums, PDB, migrate job, helm test", defaults)
check("two replicas with ServiceMonitor and PrometheusRule", ha_monitoring)
check("existingSecret", existing_secret)
check("sidecar snippet as a native sidecar", sidecar)
check("an application chart includes the relay as a native sidecar", application_chart_includes_the_sidecar)
check("values.schema.json rejects a bad values file", schema_rejects_bad_values)
check("chart default config equals config.example.toml", default_config_matches_example)
check("every ci/*-values.yaml renders valid objects", every_ci_values_file_renders)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
