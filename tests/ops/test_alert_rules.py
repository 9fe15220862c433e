"""docs/ops: the alert rules, their promtool unit tests and the scrape configuration are valid.

promtool (Prometheus's checker) does the real work: syntax and types of every expression,
the rule unit tests of docs/ops/alerts-tests.yml, the scrape configuration. Without it these
tests are skipped on a developer's machine and fail on CI (.ci/run installs it).
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "docs" / "ops"

INSTALL = (
    "install promtool: `apt-get install prometheus` (Debian/Ubuntu), or only its promtool: "
    "`apt-get download prometheus && dpkg-deb -x prometheus_*.deb x && cp x/usr/bin/promtool ~/.local/bin/`; "
    "or a release archive from https://prometheus.io/download/"
)


@pytest.fixture(scope="module")
def promtool() -> str:
    """The path of promtool: if missing, a failure on CI, else a skip."""
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is not on PATH; CI is set, so the alert rules must be checked")
        pytest.skip(f"promtool is not on PATH; {INSTALL}")
    return found


def run(promtool: str, *args: str) -> str:
    result = subprocess.run(
        [promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def alert_names() -> list[str]:
    return re.findall(r"^\s*- alert:\s*(\S+)\s*$", (OPS / "alerts.yml").read_text(), re.MULTILINE)


# ------------------------------------------------------------ promtool


def test_alert_rules_are_valid(promtool):
    output = run(promtool, "check", "rules", "docs/ops/alerts.yml")
    assert f"SUCCESS: {len(alert_names())} rules found" in output


def test_prometheus_config_is_valid(promtool):
    """Offline: promtool reads the scrape config and the rule files it names (relative to it)."""
    output = run(promtool, "check", "config", "docs/ops/prometheus.yml")
    assert "SUCCESS: 1 rule files found" in output


def test_alert_rule_unit_tests_pass(promtool):
    output = run(promtool, "test", "rules", "docs/ops/alerts-tests.yml")
    assert "SUCCESS" in output


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    """Every query of the Grafana dashboard, its variables replaced, parses as PromQL."""
    dashboard = json.loads((OPS / "grafana-dashboard.json").read_text(encoding="utf-8"))
    variables = {
        "$channel": ".*",
        "$__rate_interval": "1m",
        "$__interval": "1m",
        "$__range": "6h",
    }
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs.append(target["expr"])
    exprs.extend(a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a)
    rules = []
    for number, expr in enumerate(exprs):
        for variable, value in variables.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"an unknown Grafana variable in {expr!r}"
        # A recording rule per query; JSON strings are valid YAML scalars.
        rules.append(f"      - record: dashboard:query_{number}\n        expr: {json.dumps(expr)}\n")
    path = tmp_path / "dashboard-rules.yml"
    path.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(rules))
    output = run(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(exprs)} rules found" in output


# ------------------------------------------------------------ what the files say


def rule_blocks() -> dict[str, str]:
    """Each alert rule's text in alerts.yml, by alert name."""
    text = (OPS / "alerts.yml").read_text()
    parts = re.split(r"^\s*- alert:\s*", text, flags=re.MULTILINE)[1:]
    return {part.split()[0]: part for part in parts}


def test_the_required_alerts_exist():
    assert {
        "OmnichannelCircuitBreakerOpen",
        "OmnichannelHighErrorRate",
        "OmnichannelDeliveryRateDrop",
        "OmnichannelCircuitBreakerFlapping",
    } <= set(alert_names())


def test_every_alert_has_a_severity_and_says_what_happened():
    for name, block in rule_blocks().items():
        assert re.search(r"^\s+severity: (critical|warning|info)\s*$", block, re.MULTILINE), name
        assert re.search(r"^\s+summary: ", block, re.MULTILINE), name
        assert re.search(r"^\s+description: ", block, re.MULTILINE), name


def test_the_breaker_alert_keeps_the_legacy_meaning():
    """``state == 2`` for 5 minutes, per channel and sender, with the runbook."""
    block = rule_blocks()["OmnichannelCircuitBreakerOpen"]
    assert "max by (channel, sender) (omnichannel_circuit_breaker_state) == 2" in block
    assert re.search(r"^\s+for: 5m\s*$", block, re.MULTILINE)
    assert "{{ $labels.sender }}" in block
    assert "docs/ops/circuit-breaker-runbook.md" in block
    assert (OPS / "circuit-breaker-runbook.md").is_file()


def test_every_alert_is_unit_tested_firing_and_silent():
    """alerts-tests.yml expects each alert at least once and its absence at least once."""
    text = (OPS / "alerts-tests.yml").read_text()
    cases = re.split(r"^\s*- eval_time:", text, flags=re.MULTILINE)[1:]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in cases:
        name = re.search(r"alertname:\s*(\S+)", case)
        assert name, case
        (silent if re.search(r"exp_alerts:\s*\[\]", case) else firing).add(name.group(1))
    for name in alert_names():
        assert name in firing, f"no test case where {name} fires"
        assert name in silent, f"no test case where {name} stays silent"
