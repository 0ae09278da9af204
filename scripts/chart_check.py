"""Offline checks of the Helm chart: lint, render every ci/*-values.yaml and the example
application chart (tests/chart/parent), validate the objects strictly against the Kubernetes
schemas, check that hooks read only what exists when they run (chart_hooks.py, proven on a
fixture of the chart before the fix), that render-time guards fail, the NOTES of both modes,
the alerts with promtool (chart_rules.py), the dashboard's metric names (chart_metrics.py), the
generated README values table (chart_readme.py), and that the chart's default config equals
config.example.toml.

Run through scripts/chart-check.sh, which installs helm-python-sdk, kubernetes-validate and
promtool. Prints 'N passed, M failed' last.
"""

import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import yaml

import chart_hooks
import chart_metrics
import chart_readme
import chart_rules

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "outbox-relay"
CI = CHART / "ci"
OPERATIONS = ROOT / "docs" / "OPERATIONS.md"
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


# --- rendering -------------------------------------------------------------------------------


def parse(manifests):
    """(objects, NOTES text of the top chart) of a render."""
    docs, notes = [], ""
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text if path.count("/charts/") == 0 else notes
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs, notes


def render_values(values, chart=CHART, **opts):
    chart = helm.Chart.load(chart)
    chart.validate_schema(values)
    opts = {"name": "relay", "namespace": "apps", "is_install": True, **opts}
    return parse(chart.render(values, **opts))


def ci_values(name):
    return helm.values_from_yaml((CI / name).read_text()) or {}


def render(values_file):
    return render_values(ci_values(values_file.name))[0]


def render_parent():
    """The example application chart with this chart as its dependency (sidecar mode)."""
    with tempfile.TemporaryDirectory() as tmp:
        parent = pathlib.Path(tmp) / "example-app"
        shutil.copytree(ROOT / "tests" / "chart" / "parent", parent)
        shutil.copytree(CHART, parent / "charts" / "outbox-relay")
        chart = helm.Chart.load(parent)
        return parse(chart.render({}, name="shop", namespace="apps", is_install=True))


def render_error(values):
    try:
        render_values(values)
    except (helm.HelmRenderError, helm.HelmValuesError) as e:
        return str(e)
    raise AssertionError(f"rendered, but should have failed: {values}")


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


def container(pod_spec, name="outbox-relay"):
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def env_from(c):
    return [next(iter(e.values()))["name"] for e in c.get("envFrom", [])]


def env_refs(c):
    """name -> (secret, key) of env entries read from Secrets."""
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def hook_annotations(doc):
    return {k: v for k, v in doc["metadata"].get("annotations", {}).items() if k.startswith("helm.sh/hook")}


def assert_restricted(pod_spec):
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_spec["enableServiceLinks"] is False
    c = container(pod_spec)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"


# --- checks ----------------------------------------------------------------------------------


def lint():
    report = helm.lint(CHART, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    assert not problems and not report.get("errors"), report


def defaults():
    docs = render(CI / "defaults-values.yaml")
    validate_strict(docs)
    dep = find(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert_restricted(spec)
    relay = container(spec)
    assert relay["ports"] == [{"name": "outbox-http", "containerPort": 9464, "protocol": "TCP"}], relay["ports"]
    assert relay["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "outbox-http"}
    startup = relay["startupProbe"]
    assert startup["httpGet"]["path"] == "/livez" and startup["periodSeconds"] * startup["failureThreshold"] == 300
    service = find(docs, "Service")["spec"]["ports"][0]
    assert service["port"] == 9464 and service["targetPort"] == "outbox-http", service
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/config" in annotations and "checksum/secret" in annotations
    config = tomllib.loads(find(docs, "ConfigMap")["data"]["config.toml"])
    grace = config["relay"]["shutdown_grace"]
    assert grace.endswith("s") and int(grace[:-1]) < spec["terminationGracePeriodSeconds"], grace
    assert find(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    job = find(docs, "Job", "-migrate")["spec"]["template"]["spec"]
    assert "envFrom" not in container(job, "migrate"), "no Secret to load without secret.*"
    find(docs, "Pod", "-test-readyz")
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "NetworkPolicy"):
        assert kind not in kinds(docs), kind
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"] == ["relay-outbox-relay"]


def ha_monitoring():
    docs = render(CI / "ha-monitoring-values.yaml")
    validate_strict(docs)
    assert find(docs, "Deployment")["spec"]["replicas"] == 2
    endpoint = find(docs, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "http", endpoint
    assert {"action": "replace", "targetLabel": "outbox_relay", "replacement": "relay-outbox-relay"} in endpoint["relabelings"]
    config = tomllib.loads(find(docs, "ConfigMap", "relay-outbox-relay")["data"]["config.toml"])
    assert config["broker"]["kind"] == "kafka"
    assert config["broker"]["kafka"]["properties"]["compression.type"] == "zstd"
    secret = find(docs, "Secret", "relay-outbox-relay")
    assert "OUTBOX_RELAY__DATABASE__URL" in secret["stringData"]
    # The migrate Job reads the hook-time copy of secret.env, then the owner's Secret, which
    # comes last and overrides the relay's credentials.
    job = find(docs, "Job", "-migrate")["spec"]["template"]["spec"]
    refs = env_from(container(job, "migrate"))
    assert refs == ["relay-outbox-relay-migrate-env", "app-outbox-owner"], refs
    copy = find(docs, "Secret", "-migrate-env")
    assert copy["stringData"] == secret["stringData"]
    assert hook_annotations(copy) == {
        "helm.sh/hook": "pre-install,pre-upgrade",
        "helm.sh/hook-weight": "-1",
        "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
    }, hook_annotations(copy)
    # CA files for TLS are mounted into both the relay and the migrate Job.
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    for spec, name in ((pod, "outbox-relay"), (job, "migrate")):
        assert {"name": "tls", "secret": {"secretName": "app-outbox-ca"}} in spec["volumes"], spec["volumes"]
        mounts = {m["name"]: m["mountPath"] for m in container(spec, name)["volumeMounts"]}
        assert mounts.get("tls") == "/etc/outbox-relay-tls", mounts
    dashboard = find(docs, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(dashboard["data"]["outbox-relay.json"])
    assert shipped == json.loads((CHART / "dashboards" / "outbox-relay.json").read_text())


def upgrade_uses_new_values():
    """On upgrade the hook copies are rendered again from the new values and replaced before
    the Job runs (before-hook-creation), so the Job migrates with the new credentials."""
    values = ci_values("ha-monitoring-values.yaml")
    values["secret"]["env"]["OUTBOX_RELAY__DATABASE__URL"] = "postgres://relay:rotated@db:5432/app"
    values["config"]["ha"]["lease_ttl"] = "20s"
    docs, _ = render_values(values, is_install=False, is_upgrade=True, revision=2)
    env = find(docs, "Secret", "-migrate-env")
    assert env["stringData"]["OUTBOX_RELAY__DATABASE__URL"].endswith("rotated@db:5432/app")
    config = tomllib.loads(find(docs, "Secret", "-migrate-config")["stringData"]["config.toml"])
    assert config["ha"]["lease_ttl"] == "20s"
    for d in (env, find(docs, "Secret", "-migrate-config"), find(docs, "Job", "-migrate")):
        assert "before-hook-creation" in hook_annotations(d)["helm.sh/hook-delete-policy"], d["metadata"]


def hooks_read_only_what_exists():
    """Every ci values file and the application chart: no hook reads an object the chart
    creates later (chart_hooks.py)."""
    renders = {f.name: render(f) for f in sorted(CI.glob("*-values.yaml"))}
    renders["tests/chart/parent"] = render_parent()[0]
    problems = [f"{name}: {p}" for name, docs in renders.items() for p in chart_hooks.problems(docs)]
    assert not problems, "\n".join(problems)
    jobs = sum(1 for docs in renders.values() for d in docs if d["kind"] == "Job")
    assert jobs >= 5, f"only {jobs} migration Jobs rendered: the check would prove little"


def hook_check_catches_the_old_chart():
    """The check reports the bug of issue 21 in the chart as it was (a rendered fixture), and
    every way a pod can read a ConfigMap or Secret (a fixture naming bad-* and ok-* objects)."""
    fixtures = ROOT / "tests" / "chart" / "hooks"
    old = [d for d in yaml.safe_load_all((fixtures / "old-chart-migrate-job.yaml").read_text()) if d]
    found = chart_hooks.problems(old)
    assert len(found) == 1 and "reads Secret relay-outbox-relay (container migrate envFrom)" in found[0], found
    docs = [d for d in yaml.safe_load_all((fixtures / "every-reference.yaml").read_text()) if d]
    found = chart_hooks.problems(docs)
    named = {m for p in found for m in re.findall(r"\b((?:bad|ok)-[a-z-]+)\b", p)}
    expected = {d["metadata"]["name"] for d in docs if d["metadata"]["name"].startswith("bad-")}
    assert named == expected, f"missed {sorted(expected - named)}, wrongly reported {sorted(named - expected)}"
    assert len(found) == len(expected), found


def existing_secret():
    docs = render(CI / "existing-secret-values.yaml")
    validate_strict(docs)
    spec = find(docs, "Deployment")["spec"]["template"]["spec"]
    assert env_from(container(spec)) == ["app-outbox-credentials"]
    assert not any(d["kind"] == "Secret" for d in docs), kinds(docs)
    assert "Job" not in kinds(docs)


def cloudnativepg():
    docs = render(CI / "cloudnativepg-values.yaml")
    validate_strict(docs)
    relay = container(find(docs, "Deployment")["spec"]["template"]["spec"])
    assert env_refs(relay) == {"OUTBOX_RELAY__DATABASE__URL": ("orders-db-app", "uri")}
    assert env_from(relay) == ["relay-outbox-relay"], env_from(relay)
    migrate = container(find(docs, "Job", "-migrate")["spec"]["template"]["spec"], "migrate")
    assert env_refs(migrate) == {"OUTBOX_RELAY__DATABASE__URL": ("orders-db-owner", "uri")}, "the owner's URL"
    assert env_from(migrate) == ["relay-outbox-relay-migrate-env"], env_from(migrate)
    # Without migrations.urlSecretRef the Job uses the relay's URL reference...
    values = ci_values("cloudnativepg-values.yaml")
    values["migrations"]["urlSecretRef"] = {"name": "", "key": ""}
    migrate = container(find(render_values(values)[0], "Job", "-migrate")["spec"]["template"]["spec"], "migrate")
    assert env_refs(migrate) == {"OUTBOX_RELAY__DATABASE__URL": ("orders-db-app", "uri")}
    # ...unless migrations.existingSecret carries the owner's URL: an env entry would override it.
    values["migrations"]["existingSecret"] = "orders-db-owner-env"
    migrate = container(find(render_values(values)[0], "Job", "-migrate")["spec"]["template"]["spec"], "migrate")
    assert env_refs(migrate) == {} and env_from(migrate)[-1] == "orders-db-owner-env", migrate


def customised():
    docs = render(CI / "customised-values.yaml")
    validate_strict(docs)
    for d in docs:
        assert d["metadata"]["labels"].get("team") == "payments", f"commonLabels missing on {d['kind']} {d['metadata']['name']}"
        assert d["metadata"]["name"].startswith("orders-outbox"), d["metadata"]["name"]
    dep = find(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    relay = container(spec)
    assert relay["image"] == "ghcr.io/outbox-relay/outbox-relay@sha256:" + "0123456789abcdef" * 4, relay["image"]
    assert relay["ports"][0]["containerPort"] == 8080 and find(docs, "Service")["spec"]["ports"][0]["port"] == 8080
    assert "startupProbe" not in relay and relay["livenessProbe"]["periodSeconds"] == 15
    assert spec["priorityClassName"] == "business-critical" and spec["topologySpreadConstraints"][0]["maxSkew"] == 1
    assert env_from(relay) == ["orders-outbox-credentials", "orders-outbox-env"], env_from(relay)
    assert dep["spec"]["template"]["metadata"]["labels"]["team"] == "payments"
    assert "team" not in dep["spec"]["selector"]["matchLabels"], "commonLabels must stay out of selectors"
    # The user's ConfigMap replaces the chart's, for the relay and for the migration Job.
    assert {"name": "outbox-relay-config", "configMap": {"name": "orders-outbox-config"}} in spec["volumes"]
    job = find(docs, "Job", "-migrate")["spec"]["template"]["spec"]
    assert {"name": "config", "configMap": {"name": "orders-outbox-config"}} in job["volumes"], job["volumes"]
    assert env_from(container(job, "migrate")) == ["orders-outbox-credentials", "orders-outbox-env"]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("ConfigMap", "orders-outbox") not in names and ("Secret", "orders-outbox-migrate-config") not in names, names
    policy = find(docs, "NetworkPolicy")["spec"]
    assert policy["ingress"][0]["ports"] == [{"port": "outbox-http", "protocol": "TCP"}]
    assert policy["policyTypes"] == ["Ingress", "Egress"] and len(policy["egress"]) == 2
    monitor = find(docs, "PodMonitor")["spec"]
    assert monitor["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert monitor["podMetricsEndpoints"][0]["port"] == "outbox-http"
    assert monitor["podMetricsEndpoints"][0]["relabelings"][0]["replacement"] == "orders-outbox"


def secrets_from_files():
    """The README's Vault/CSI example: the URLs come from mounted files, so config.toml names
    the files and leaves the URL values out (a value and its file form are an error)."""
    docs = render(CI / "secrets-from-files-values.yaml")
    validate_strict(docs)
    for config in (
        tomllib.loads(find(docs, "ConfigMap")["data"]["config.toml"]),
        tomllib.loads(find(docs, "Secret", "-migrate-config")["stringData"]["config.toml"]),
    ):
        assert config["database"] == {**config["database"], "url_file": "/mnt/secrets/database-url"}
        assert "url" not in config["database"] and "url" not in config["broker"]["amqp"], config
    for spec, name in (
        (find(docs, "Deployment")["spec"]["template"]["spec"], "outbox-relay"),
        (find(docs, "Job", "-migrate")["spec"]["template"]["spec"], "migrate"),
    ):
        assert any(v.get("csi", {}).get("driver") == "secrets-store.csi.k8s.io" for v in spec["volumes"]), spec["volumes"]
        assert {"name": "secrets", "mountPath": "/mnt/secrets", "readOnly": True} in container(spec, name)["volumeMounts"]


def sidecar():
    docs = render(CI / "sidecar-values.yaml")
    validate_strict(docs)
    app = find(docs, "Deployment", "-example-app")
    spec = app["spec"]["template"]["spec"]
    relay = container(spec)
    assert relay in spec["initContainers"], "the relay is a native sidecar"
    assert relay["restartPolicy"] == "Always"
    assert relay["readinessProbe"]["httpGet"]["path"] == "/livez", "a broker outage must not unready the app"
    assert relay["ports"][0]["name"] == "outbox-http", "must not clash with the application's own http port"
    assert {v["name"] for v in spec["volumes"]} == {"outbox-relay-config"}
    assert_restricted(spec)
    monitor = find(docs, "PodMonitor")["spec"]
    assert monitor["selector"]["matchLabels"] == {"app.kubernetes.io/name": "example-app"}
    assert monitor["selector"]["matchLabels"].items() <= app["spec"]["template"]["metadata"]["labels"].items()
    assert monitor["podMetricsEndpoints"][0]["port"] == "outbox-http"
    assert find(docs, "PrometheusRule")


def application_chart_includes_the_sidecar():
    docs, notes = render_parent()
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
    refs = env_from(container(find(docs, "Job")["spec"]["template"]["spec"], "migrate"))
    assert refs == ["shop-outbox-relay-migrate-env"], refs


def notes_say_the_right_thing():
    _, notes = render_values({})
    assert "deploy/relay-outbox-relay" in notes and "relay-outbox-relay.apps:9464/readyz" in notes, notes
    assert "set serviceMonitor.enabled" in notes, notes
    _, notes = render_values({"deployment": {"enabled": False}})
    assert "sidecar mode" in notes and "no Service" in notes and "-c outbox-relay" in notes, notes
    assert "deploy/" not in notes and ".apps:" not in notes, "no Service or Deployment exists in sidecar mode"
    assert "podMonitor.selector" in notes, notes
    _, notes = render_values(ci_values("sidecar-values.yaml") | {"deployment": {"enabled": False}})
    assert 'PodMonitor relay-outbox-relay scrapes port outbox-http of the pods labelled {"app.kubernetes.io/name":"example-app"}' in notes, notes


def render_guards():
    """Values that cannot work fail the render with a message naming the fix."""
    cases = [
        ({"service": {"port": 8080}}, "service.port 8080 differs from the port of config.http.listen"),
        ({"config": {"http": {"listen": "127.0.0.1:9464"}}}, "loopback"),
        ({"config": {"http": {"listen": "0.0.0.0"}}}, "/config/http/listen"),
        ({"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}, "not both"),
        ({"deployment": {"enabled": False}, "podMonitor": {"enabled": True}}, "podMonitor.selector"),
        ({"deployment": {"enabled": False}, "serviceMonitor": {"enabled": True}}, "use podMonitor"),
        ({"secret": {"urlSecretRef": {"name": "db-app", "key": ""}}}, "secret.urlSecretRef.key"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        (
            {"config": {"relay": {"partitions": 6}, "broker": {"kind": "kafka", "kafka": {"delivery": "exactly_once"}}}},
            "config.relay.partitions must be 1",
        ),
        ({"config": {"relay": {"partitions": 0}}}, "/config/relay/partitions"),
    ]
    for values, message in cases:
        error = render_error(values)
        assert message in error, f"{values}: {error}"
    # The Service port may equal the listen port, and follows it when 0.
    docs, _ = render_values({"config": {"http": {"listen": "[::]:9000"}}})
    assert find(docs, "Service")["spec"]["ports"][0]["port"] == 9000


def alerts():
    docs = render(CI / "ha-monitoring-values.yaml")
    rule = find(docs, "PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == {
        "OutboxRelayBacklogTooOld",
        "OutboxRelayPublishFailures",
        "OutboxRelayDeadMessages",
        "OutboxRelayNoLeader",
        "OutboxRelayDown",
        "OutboxRelayVacuumHeldBack",
        "OutboxRelayPassedRowsFound",
    }, [r["alert"] for r in rules]
    anchors = markdown_anchors(OPERATIONS.read_text())
    for r in rules:
        assert "service=" not in r["expr"], f"{r['alert']}: only ServiceMonitor scrapes carry service"
        assert 'outbox_relay="relay-outbox-relay"' in r["expr"], f"{r['alert']} does not select the install"
        url = r["annotations"]["runbook_url"]
        assert url.startswith("https://github.com/outbox-relay/outbox-relay/blob/main/docs/OPERATIONS.md#"), url
        assert url.split("#")[1] in anchors, f"{r['alert']}: no section #{url.split('#')[1]} in {OPERATIONS}"
    assert not (bad := chart_metrics.unknown(r["expr"] for r in rules)), f"unknown metrics {bad}"
    print(chart_rules.run(rule).strip())


def markdown_anchors(text):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        for m in re.finditer(r"^#+\s+(.*)$", text, re.M)
    }


def rule_coverage_is_enforced():
    groups = [{"rules": [{"alert": "A", "expr": "x"}, {"alert": "B", "expr": "y"}]}]
    tests = [{"tests": [{"alert_rule_test": [{"alertname": "A", "exp_alerts": [{}]}, {"alertname": "A"}]}]}]
    problems = chart_rules.coverage(groups, tests)
    assert problems == ["B: no test case where it fires", "B: no test case where it stays silent"], problems


def dashboard():
    text = (CHART / "dashboards" / "outbox-relay.json").read_text()
    problems = chart_metrics.check_dashboard(text)
    assert not problems, "\n".join(problems)
    used = {n for e in chart_metrics.dashboard_exprs(json.loads(text)) for n in chart_metrics.metric_names(e)}
    for want in ("outbox_relay_commit_to_publish_seconds_bucket", "outbox_relay_dead_messages",
                 "outbox_relay_vacuum_horizon_age_seconds", "process_cpu_seconds_total"):
        assert want in used, f"the dashboard does not show {want}"
    # The checker itself: an invented metric is caught, PromQL functions are not metrics.
    assert chart_metrics.unknown(['sum by (le) (rate(outbox_relay_nope_total{a="b"}[5m])) > 1e3']) == ["outbox_relay_nope_total"]


def readme_values_table():
    problems = chart_readme.check()
    assert not problems, "\n".join(problems)


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


FILE_FORMS = {"url_file", "sasl_password_file", "auth_secret_file"}


def without_empty_file_keys(table):
    """The chart leaves the file forms of secrets out of its defaults (setting one must never
    meet a value from values.yaml); config.example.toml lists them empty, meaning unset."""
    return {
        k: without_empty_file_keys(v) if isinstance(v, dict) else v
        for k, v in table.items()
        if not (k in FILE_FORMS and v == "")
    }


def default_config_matches_example():
    docs = render(CI / "defaults-values.yaml")
    rendered = tomllib.loads(find(docs, "ConfigMap")["data"]["config.toml"])
    example = without_empty_file_keys(tomllib.loads((ROOT / "config.example.toml").read_text()))
    assert rendered == example, f"chart config differs from config.example.toml:\n{rendered}\n{example}"


def every_ci_values_file_renders():
    files = sorted(CI.glob("*-values.yaml"))
    assert len(files) >= 6, files
    for f in files:
        validate_strict(render(f))


check("helm lint --strict", lint)
check("defaults: restricted pod, port from config.http.listen, probes, PDB, migrate job, helm test", defaults)
check("two replicas, ServiceMonitor relabeling, hook copy of secret.env, dashboard ConfigMap", ha_monitoring)
check("upgrade: hook copies carry the new values and are re-created", upgrade_uses_new_values)
check("hooks read only earlier hooks or user-named objects (every ci file, parent chart)", hooks_read_only_what_exists)
check("the hook check reports the old chart's migrate Job and every way of reading", hook_check_catches_the_old_chart)
check("existingSecret", existing_secret)
check("urlSecretRef for the relay and the migration Job (CloudNativePG)", cloudnativepg)
check("overrides, commonLabels, digest, existingConfigMap, NetworkPolicy, PodMonitor", customised)
check("secrets from files: CSI volume in relay and Job, url_file without url", secrets_from_files)
check("sidecar snippet as a native sidecar, with a PodMonitor", sidecar)
check("an application chart includes the relay as a native sidecar", application_chart_includes_the_sidecar)
check("NOTES.txt in Deployment and sidecar mode", notes_say_the_right_thing)
check("values that cannot work fail the render", render_guards)
check("alerts: selectors, runbooks, promtool check and test rules", alerts)
check("every alert must have a firing and a silent test", rule_coverage_is_enforced)
check("dashboard: JSON, variables, only metrics the relay exposes", dashboard)
check("README values table is generated and current; schema fully described", readme_values_table)
check("values.schema.json rejects a bad values file", schema_rejects_bad_values)
check("chart default config equals config.example.toml", default_config_matches_example)
check("every ci/*-values.yaml renders valid objects", every_ci_values_file_renders)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
