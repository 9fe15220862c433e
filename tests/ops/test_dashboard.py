"""docs/ops/grafana-dashboard.json and the alert rules use only metrics the metrics plugin exports.

The exported names come from the plugin itself (a service with the plugin, its registry), so a
renamed metric or a typo in a query fails here instead of showing an empty panel or an alert
that can never fire.
"""

import json
import re
from pathlib import Path
from typing import Any

import pytest

from omnichannel.testing import RecordingChannel, make_service
from omnichannel_metrics import MetricsPlugin, instruments

OPS = Path(__file__).resolve().parents[2] / "docs" / "ops"
DASHBOARD = OPS / "grafana-dashboard.json"

METRIC = re.compile(r"\bomnichannel_[a-z_]+")
"""A metric name with the default prefix, as it appears in PromQL."""

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
"""The series names Prometheus stores for a metric family, by its type."""

CHANNEL_METRICS = {
    "omnichannel_messages_sent",
    "omnichannel_messages_failed",
    "omnichannel_send_attempts",
    "omnichannel_retries",
    "omnichannel_send_duration_seconds",
    "omnichannel_message_status",
    "omnichannel_message_status_failures",
    "omnichannel_templates_used",
    "omnichannel_circuit_breaker_state",
    "omnichannel_circuit_breaker_transitions",
    "omnichannel_rate_limiter_wait_seconds",
    "omnichannel_rate_limiter_deferred",
}
"""The metrics with a ``channel`` label: the dashboard filters them on ``$channel``."""


def exported() -> dict[str, str]:
    """The names Prometheus scrapes from the metrics plugin, each with its family's type.

    prometheus-client names a Counter's family without ``_total`` and a Histogram's without
    ``_bucket``/``_sum``/``_count``; the scraped series carry those suffixes (``_created``
    series are left out: no query needs them).
    """
    service = make_service(RecordingChannel(), ("metrics", MetricsPlugin()))
    names = {}
    for family in instruments(service).registry.collect():
        assert family.type in SUFFIXES, f"{family.name}: a {family.type}; teach this test its series names"
        for suffix in SUFFIXES[family.type]:
            names[family.name + suffix] = family.type
    return names


def family(name: str) -> str:
    """``omnichannel_send_duration_seconds_bucket`` -> ``omnichannel_send_duration_seconds``."""
    return re.sub(r"_(total|bucket|sum|count)$", "", name)


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(node: object) -> list[str]:
    """Every PromQL string in the dashboard: targets' and annotations' ``expr``, variables' ``query``."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                found.append(value)
            else:
                found.extend(queries(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(queries(item))
    return found


def yaml_without_comments(path: Path) -> str:
    """A YAML file's text without its comment lines (PromQL itself carries no comment here)."""
    return "\n".join(
        line for line in path.read_text(encoding="utf-8").splitlines() if not line.lstrip().startswith("#")
    )


# ------------------------------------------------------------ the dashboard itself


def test_dashboard_is_an_importable_grafana_dashboard():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["channel"]["type"] == "query"
    assert variables["channel"]["includeAll"]

    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_channel_panel_follows_the_channel_variable():
    """A query of a metric with a ``channel`` label filters on ``$channel``."""
    unfiltered = []
    for panel in panels(load_dashboard()):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for selector in re.findall(r"\bomnichannel_[a-z_]+(?:\{[^}]*\})?", expr):
                name = family(selector.split("{")[0])
                if name in CHANNEL_METRICS and '$channel"' not in selector:
                    unfiltered.append(f"{panel['title']}: {selector}")
    assert not unfiltered


# ------------------------------------------------------------ metric names


def test_the_plugin_exports_what_this_test_expects():
    """The exported names as the plugin's registry lists them (guards ``exported()`` itself)."""
    names = exported()
    assert names["omnichannel_messages_sent_total"] == "counter"
    assert names["omnichannel_send_duration_seconds_bucket"] == "histogram"
    assert names["omnichannel_circuit_breaker_state"] == "gauge"
    assert "omnichannel_messages_sent" not in names
    assert {family(name) for name in names} >= CHANNEL_METRICS


@pytest.mark.parametrize(
    ("source", "text"),
    [
        pytest.param(name, read, id=name)
        for name, read in [
            ("grafana-dashboard.json", lambda: "\n".join(queries(load_dashboard()))),
            ("alerts.yml", lambda: yaml_without_comments(OPS / "alerts.yml")),
            ("alerts-tests.yml", lambda: yaml_without_comments(OPS / "alerts-tests.yml")),
        ]
    ],
)
def test_only_exported_metrics_are_queried(source, text):
    names = exported()
    used = set(METRIC.findall(text()))
    assert used, f"{source}: no omnichannel_ metric found"
    unknown = sorted(used - set(names))
    assert not unknown, (
        f"{source} uses series the metrics plugin does not export: {unknown}; "
        f"exported: {sorted(names)} (counters end in _total, histograms in _bucket/_sum/_count)"
    )


def test_the_dashboard_shows_every_metric():
    """A metric added to the plugin gets a panel (or is listed here with the reason it has none)."""
    shown = {family(name) for name in METRIC.findall("\n".join(queries(load_dashboard())))}
    # The legacy PHP names repeat circuit_breaker_state and messages_failed for old alerts only.
    legacy = {"whatsapp_circuit_breaker_state", "whatsapp_errors"}
    missing = sorted({family(name) for name in exported()} - shown - legacy)
    assert not missing, f"metrics without a panel in {DASHBOARD.name}: {missing}"


def test_histograms_are_queried_through_their_series():
    """``histogram_quantile`` over ``_bucket`` with ``le`` kept; no bare histogram name."""
    names = exported()
    histograms = {family(name) for name, kind in names.items() if kind == "histogram"}
    text = "\n".join(queries(load_dashboard()))
    for quantile in re.findall(r"histogram_quantile\(.*", text):
        assert "_bucket" in quantile, quantile
        assert re.search(r"by \((le|[a-z_, ]+, le)\b", quantile), f"'le' must be kept: {quantile}"
    for name in METRIC.findall(text):
        assert name not in histograms, f"{name}: query its _bucket, _sum or _count series"
