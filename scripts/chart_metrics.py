"""The metric names the relay exposes, and the metric names a PromQL expression uses.

The chart's alerts and Grafana dashboard may name only metrics in KNOWN. A test of the relay
(tests/*.rs) scrapes a live /metrics and checks the same files against what it really exposes;
both rely on metric names appearing literally in the expressions (histograms by their
exposition names: _bucket, _sum, _count).
"""

import json
import re

COUNTERS = [
    "outbox_relay_messages_published_total",
    "outbox_relay_publish_failures_total",
    "outbox_relay_messages_dead_total",
    "outbox_relay_messages_expired_total",
    "outbox_relay_messages_purged_total",
    "outbox_relay_passed_rows_found_total",
    "process_cpu_seconds_total",
]
GAUGES = [
    "outbox_relay_dead_messages",
    "outbox_relay_pending_messages",
    "outbox_relay_oldest_pending_age_seconds",
    "outbox_relay_leader",
    "outbox_relay_up",
    "outbox_relay_build_info",
    "outbox_relay_table_size_bytes",
    "outbox_relay_index_size_bytes",
    "outbox_relay_table_dead_tuples",
    "outbox_relay_last_autovacuum_age_seconds",
    "outbox_relay_vacuum_horizon_age_seconds",
    "outbox_relay_vacuum_horizon_age_xids",
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "process_threads",
]
HISTOGRAMS = [
    "outbox_relay_commit_to_publish_seconds",
    "outbox_relay_publish_batch_seconds",
    "outbox_relay_broker_ack_seconds",
    "outbox_relay_batch_messages",
]
# `up` is Prometheus' own series for every scraped target.
KNOWN = set(COUNTERS + GAUGES + ["up"]) | {
    f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}

KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on", "ignoring"}


def metric_names(expr):
    """The metric names in a PromQL expression (a small lexer, enough for our expressions):
    strings, label matchers, ranges, numbers and grouping clauses are dropped, and an
    identifier followed by '(' is a function or an aggregation."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "{}", e)
    e = re.sub(r"\[[^\]]*\]", "[]", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\boffset\s+\S+", " ", e)
    e = re.sub(r"(?<![\w:])\d+(\.\d+)?([eE][+-]?\d+)?", " ", e)
    names = []
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group(0) in KEYWORDS:
            continue
        names.append(m.group(0))
    return names


def unknown(exprs):
    """Metric names used by the expressions that the relay does not expose."""
    return sorted({n for e in exprs for n in metric_names(e)} - KNOWN)


def dashboard_exprs(dashboard):
    """Every query of a Grafana dashboard: panel targets (rows nest panels) and the template
    variables' label_values(metric...) queries (reduced to their metric selector)."""
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        m = re.match(r"label_values\(([^,]+),", query)
        if var.get("type") == "query" and m:
            exprs.append(m.group(1))
    return exprs


def check_dashboard(text):
    """Problems of the dashboard JSON text: not JSON, unknown metrics, missing variables, or
    a datasource that is not the ${datasource} variable."""
    dashboard = json.loads(text)
    problems = []
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    for want in ("datasource", "namespace", "outbox_relay"):
        if want not in variables:
            problems.append(f"no template variable {want}")
    exprs = dashboard_exprs(dashboard)
    if not exprs:
        problems.append("no queries")
    if bad := unknown(exprs):
        problems.append(f"metrics the relay does not expose: {bad}")
    for e in exprs:
        if "outbox_relay_" in e and 'outbox_relay="$outbox_relay"' not in e and "label_values" not in e:
            if not e.startswith("outbox_relay_build_info"):
                problems.append(f"query does not select the install: {e}")
    for uid in re.findall(r'"uid":\s*"([^"]*)"', text):
        if uid not in ("${datasource}", dashboard.get("uid")):
            problems.append(f"datasource uid {uid!r} is not the ${{datasource}} variable")
    return problems
