"""The Grafana dashboard, packaging/grafana/pymemcg-dashboard.json, against
what the exporter serves.

- Its structure, with no server: every panel but a row has a query, on the
  dashboard's data-source variable; ids and refIds are unique; every
  variable a query uses is defined; every metric it names is one
  `pymemcg export` serves (pymemcg.cadvisor's and pymemcg_*) or one
  Prometheus adds to each target (up, scrape_*).
- Its queries, on a real Prometheus (Debian's, as in
  test_prometheus_server.py) scraping `pymemcg export` over cgroups named as
  kubelet, the runtimes and systemd name theirs (test_prometheus.py's
  kubelet_tree), one container with a limit: each template variable's
  label_values() query has values, and every panel's query, with the
  variables substituted as Grafana does for "All" and $__rate_interval as
  1m, returns data. The same query with one of its metric names misspelled
  must return none: a check that could not fail would prove nothing.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List

import pytest

pytest.importorskip("prometheus_client")

from pymemcg.cadvisor import cadvisor_metrics  # noqa: E402
from pymemcg.exposition import exposed_name  # noqa: E402

from test_prometheus import LIMIT, exporter, kubelet_tree, set_limit  # noqa: E402,F401,F811
from test_prometheus_server import (prometheus_binary, prometheus_server,  # noqa: E402,F401,F811
                                    query)

DASHBOARD = Path(__file__).resolve().parent.parent / "packaging" / "grafana" / \
    "pymemcg-dashboard.json"

# Grafana's own variables on a one-hour panel with the data source's default
# scrape interval, 15 s: $__rate_interval = max($__interval + 15 s, 4 x 15 s)
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
# the series Prometheus itself adds for each target
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
                     "scrape_samples_post_metric_relabeling", "scrape_series_added"}
EXPORTER_OWN = {"pymemcg_info", "pymemcg_cgroups", "pymemcg_snapshot_duration_seconds",
                "pymemcg_scrape_error"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                "unless", "bool", "offset", "inf", "nan"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
LABEL_VALUES = re.compile(r"label_values\((.+),\s*(\w+)\)", re.S)


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def queried_panels(dashboard: dict) -> List[dict]:
    """Every panel that is not a row (rows may hold panels when collapsed)."""
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            out += panel.get("panels", [])
        else:
            out.append(panel)
    return out


def targets(dashboard: dict) -> List[tuple]:
    """(panel title, refId, expr) of every query."""
    return [(p["title"], t["refId"], t["expr"]) for p in queried_panels(dashboard)
            for t in p["targets"]]


def metric_names(expr: str) -> List[str]:
    """The metric names a PromQL expression selects, in order: what is left
    once strings, label matchers, ranges and groupings are taken out, less
    function names (followed by "(") and PromQL's keywords."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = []
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*(?=\s*(\(?))", text):
        if m.group(1) == "(" or m.group(0).lower() in PROMQL_WORDS:
            continue
        if m.group(0) not in names:
            names.append(m.group(0))
    return names


def served_names() -> set:
    """Every series name `pymemcg export` can serve (without the raw
    memcg_<stat> ones, which the dashboard does not use), on v1 or v2."""
    cadvisor = {exposed_name(m.name, m.type) for v in (1, 2) for m in cadvisor_metrics(v)}
    return cadvisor | EXPORTER_OWN


def substitute(expr: str, values: Dict[str, str]) -> str:
    """expr with $name and ${name} replaced; KeyError for an unknown one."""
    return VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


# --- the structure ---

def test_every_panel_has_a_query_on_the_datasource_variable():
    dashboard = load()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = dashboard["templating"]["list"]
    datasource = [v for v in variables if v["type"] == "datasource"]
    assert [(v["name"], v["query"]) for v in datasource] == [("datasource", "prometheus")]
    panels = queried_panels(dashboard)
    assert len(panels) >= 10
    nested = [p for row in dashboard["panels"] if row["type"] == "row" for p in row["panels"]]
    ids = [p["id"] for p in dashboard["panels"] + nested]
    assert len(ids) == len(set(ids)), ids
    for panel in panels:
        where = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        assert panel["targets"], f"{where}: no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), where
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], where
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, where
    for variable in variables:
        if variable["type"] == "query":
            assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert LABEL_VALUES.fullmatch(variable["definition"]), variable["definition"]


def test_queries_use_defined_variables_and_served_metrics():
    dashboard = load()
    defined = {v["name"]: v["name"] for v in dashboard["templating"]["list"]}
    known = served_names() | PROMETHEUS_SERIES
    used = set()
    queries = [(title, expr) for title, _, expr in targets(dashboard)]
    queries += [(v["name"], v["definition"]) for v in dashboard["templating"]["list"]
                if v["type"] == "query"]
    for title, expr in queries:
        try:
            substitute(expr, {**defined, **BUILTINS})
        except KeyError as e:
            raise AssertionError(f"{title}: {expr} uses ${e.args[0]}, which is not defined")
        names = metric_names(LABEL_VALUES.sub(r"\1", expr))
        assert names, f"{title}: no metric in {expr}"
        unknown = set(names) - known
        assert not unknown, f"{title}: {expr} names {unknown}, which nothing serves"
        used |= set(names)
    # what the dashboard covers: memory by container and pod, working set and
    # limit, page faults, OOM kills, the exporter's health
    assert {"container_memory_usage_bytes", "container_memory_working_set_bytes",
            "container_spec_memory_limit_bytes", "container_memory_failures_total",
            "container_oom_events_total", "up", "pymemcg_scrape_error"} <= used


def test_metric_names_reads_promql():
    assert metric_names('rate(a_total{x="b{c}", y=~"$v"}[$__rate_interval])') == ["a_total"]
    assert metric_names('sum by (job, qos) (max by (pod) (m{p!=""}))\n / (n > 0)') == ["m", "n"]
    assert metric_names("up{job=~\"$job\"} and on(instance) x") == ["up", "x"]


# --- the queries, on a real Prometheus ---

def api_get(api: str, path: str, **params):
    """The data of a GET of Prometheus' HTTP API."""
    url = f"{api}{path}?" + urllib.parse.urlencode(params, doseq=True)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{url}: {e.code} {e.read().decode(errors='replace')}") from None
    assert body["status"] == "success", body
    return body["data"]


def resolve_variables(api: str, dashboard: dict) -> Dict[str, str]:
    """Each query variable's values through Prometheus' label-values API (as
    Grafana runs label_values()), in order, each with the ones before it
    substituted; the value is Grafana's "All": allValue, or the values as
    one regular expression, escaped for a PromQL string as Grafana does."""
    values = dict(BUILTINS)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        selector, label = LABEL_VALUES.fullmatch(variable["definition"]).groups()
        found = api_get(api, f"/api/v1/label/{label}/values",
                        **{"match[]": substitute(selector, values)})
        assert found, f"variable {variable['name']}: {variable['definition']} has no values"
        values[variable["name"]] = variable.get("allValue") or \
            "(" + "|".join(re.escape(v).replace("\\", "\\\\") for v in found) + ")"
    return values


def misspelled(name: str) -> str:
    """name with its last two letters swapped (or doubled, for a palindrome end)."""
    wrong = name[:-2] + name[-1] + name[-2]
    return wrong if wrong != name else name + name[-1]


def test_every_panel_returns_data_from_a_real_prometheus(bpf_ok, cgroups, kubelet_tree,
                                                          cgroup_version, prometheus_binary,
                                                          tmp_path):
    paths, _ = kubelet_tree
    set_limit(paths["container"], cgroup_version, LIMIT)
    dashboard = load()
    with exporter("--listen", "127.0.0.1:0", "--backend", "bpf", cgroups.base) as (_, url, _s):
        target = urllib.parse.urlsplit(url).netloc
        with prometheus_server(prometheus_binary, tmp_path, target) as api:
            deadline = time.monotonic() + 60
            while True:
                # rate() and increase() need two scrapes in their range
                try:
                    values = resolve_variables(api, dashboard)
                    pending = {}
                    for title, ref, expr in targets(dashboard):
                        promql = substitute(expr, values)
                        if not query(api, promql):
                            pending[f"{title} ({ref})"] = promql
                except AssertionError as e:
                    pending = {"variables": str(e)}
                if not pending or time.monotonic() > deadline:
                    break
                time.sleep(1)
            assert not pending, f"panels without data after 60 s: {pending}"
            # the check can fail: each metric name misspelled, the query is empty
            known = set(api_get(api, "/api/v1/label/__name__/values"))
            tried = 0
            for title, ref, expr in targets(dashboard):
                for name in metric_names(expr):
                    wrong = misspelled(name)
                    assert name in known and wrong not in known, (name, wrong)
                    broken = re.sub(rf"\b{name}\b", wrong, expr)
                    assert not query(api, substitute(broken, values)), \
                        f"{title} ({ref}) still has data with {name} misspelled {wrong}"
                    tried += 1
            assert tried >= len(targets(dashboard))
