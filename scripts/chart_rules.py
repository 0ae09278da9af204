"""The chart's PrometheusRule as a plain Prometheus rules file, checked and unit-tested with
promtool (Debian package `prometheus`).

The unit tests in tests/chart/rules/*.test.yaml name `rules.yaml` in rule_files: run() writes
the rendered groups there, next to copies of the tests, in a scratch directory. Every alert
needs a test where it fires and one where it stays silent (coverage()).
"""

import pathlib
import shutil
import subprocess
import tempfile

import yaml

TESTS = pathlib.Path(__file__).resolve().parent.parent / "tests" / "chart" / "rules"


def coverage(groups, tests):
    """Problems: alerts of `groups` without a firing and a silent test case in `tests` (the
    parsed test files), and test cases naming alerts that do not exist."""
    alerts = {r["alert"] for g in groups for r in g["rules"] if "alert" in r}
    firing, silent = set(), set()
    for t in tests:
        for case in t.get("tests", []):
            for a in case.get("alert_rule_test", []):
                (firing if a.get("exp_alerts") else silent).add(a["alertname"])
    problems = [f"{a}: no test case where it fires" for a in sorted(alerts - firing)]
    problems += [f"{a}: no test case where it stays silent" for a in sorted(alerts - silent)]
    problems += [f"{a}: tested but not a rule" for a in sorted((firing | silent) - alerts)]
    return problems


def promtool(*args, cwd):
    out = subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"promtool {' '.join(args)}:\n{out.stdout}{out.stderr}")
    return out.stdout


def run(prometheus_rule):
    """Check and unit-test the rendered PrometheusRule; returns promtool's test report."""
    groups = prometheus_rule["spec"]["groups"]
    test_files = sorted(TESTS.glob("*.test.yaml"))
    assert test_files, f"no rule tests in {TESTS}"
    problems = coverage(groups, [yaml.safe_load(f.read_text()) for f in test_files])
    assert not problems, "\n".join(problems)
    with tempfile.TemporaryDirectory() as tmp:
        (pathlib.Path(tmp) / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
        for f in test_files:
            shutil.copy(f, tmp)
        promtool("check", "rules", "rules.yaml", cwd=tmp)
        return promtool("test", "rules", *(f.name for f in test_files), cwd=tmp)
