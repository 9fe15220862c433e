"""The plugin's plain-number families scrape exactly as prometheus-client's own metrics do.

Each test moves a prometheus-client metric and one of ``omnichannel_metrics.families`` the same
way, in registries of their own, and compares the two expositions (``generate_latest``) line for
line: names, types, help texts, labels, series order, bucket bounds, values. ``_created`` samples
are compared by presence and label set; their values (creation times) are checked to be the time
of the first move.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

from omnichannel_metrics.families import CounterFamily, Family, GaugeFamily, HistogramFamily

CREATED = re.compile(r"^(\w+_created\{[^}]*\}) (\S+)$", re.MULTILINE)


class One:
    """A collector of one family."""

    def __init__(self, family: Family) -> None:
        self.family = family

    def collect(self) -> list[Metric]:
        return [self.family.collect()]

    def describe(self) -> list[Metric]:
        return [self.family.empty()]


def exposition(family: Family) -> str:
    registry = CollectorRegistry()
    registry.register(One(family))
    return generate_latest(registry).decode()


def masked(text: str) -> str:
    """The exposition with every ``_created`` value replaced by ``T``."""
    return CREATED.sub(r"\1 T", text)


def created_values(text: str) -> list[float]:
    return [float(value) for _, value in CREATED.findall(text)]


def test_a_counter_scrapes_as_prometheus_clients() -> None:
    before = time.time()
    ours = CounterFamily("app_messages_sent_total", "Messages sent.", ("channel", "sender"))
    registry = CollectorRegistry()
    theirs = Counter("app_messages_sent_total", "Messages sent.", ("channel", "sender"), registry=registry)
    for key, amount in [(("wa", "1"), 1.0), (("sms", "x"), 2.0), (("wa", "1"), 1.0), (("wa", "2"), 0.5)]:
        ours.inc(key, amount)
        theirs.labels(*key).inc(amount)
    text = exposition(ours)
    assert masked(text) == masked(generate_latest(registry).decode())
    assert 'app_messages_sent_total{channel="wa",sender="1"} 2.0' in text
    assert all(before <= value <= time.time() for value in created_values(text))
    assert len(created_values(text)) == 3
    assert ours.value(("wa", "1")) == 2.0
    assert ours.value(("never", "seen")) == 0.0


def test_a_histogram_scrapes_as_prometheus_clients_bounds_included() -> None:
    buckets = (0.005, 0.01, 0.5, 1.0, 30.0)
    ours = HistogramFamily("app_send_duration_seconds", "Send time.", ("channel", "outcome"), buckets)
    registry = CollectorRegistry()
    theirs = Histogram(
        "app_send_duration_seconds", "Send time.", ("channel", "outcome"), buckets=buckets, registry=registry
    )
    # On a bound (inclusive), between bounds, zero, past the last bound (+Inf), two series.
    for key, value in [
        (("wa", "sent"), 0.005),
        (("wa", "sent"), 0.0071),
        (("wa", "sent"), 0.0),
        (("wa", "failed"), 31.0),
        (("wa", "sent"), 1.0),
        (("wa", "sent"), 0.75),
    ]:
        ours.observe(key, value)
        theirs.labels(*key).observe(value)
    text = exposition(ours)
    assert masked(text) == masked(generate_latest(registry).decode())
    assert 'app_send_duration_seconds_bucket{channel="wa",le="0.005",outcome="sent"} 2.0' in text
    assert 'app_send_duration_seconds_bucket{channel="wa",le="30.0",outcome="failed"} 0.0' in text
    assert 'app_send_duration_seconds_bucket{channel="wa",le="+Inf",outcome="failed"} 1.0' in text
    assert 'app_send_duration_seconds_count{channel="wa",outcome="sent"} 5.0' in text
    assert len(created_values(text)) == 2


def test_a_gauge_scrapes_as_prometheus_clients() -> None:
    ours = GaugeFamily("app_circuit_breaker_state", "Breaker state.", ("channel", "sender"))
    registry = CollectorRegistry()
    theirs = Gauge("app_circuit_breaker_state", "Breaker state.", ("channel", "sender"), registry=registry)
    for key, value in [(("wa", "1"), 2), (("wa", "2"), 0), (("wa", "1"), 1)]:
        ours.set(key, value)
        theirs.labels(*key).set(value)
    assert exposition(ours) == generate_latest(registry).decode()


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (
            lambda: CounterFamily("app_events_total", "Events.", ("event",)),
            lambda r: Counter("app_events_total", "Events.", ("event",), registry=r),
        ),
        (
            lambda: HistogramFamily("app_wait_seconds", "Waits.", ("sender",), (0.1, 1.0)),
            lambda r: Histogram("app_wait_seconds", "Waits.", ("sender",), buckets=(0.1, 1.0), registry=r),
        ),
        (
            lambda: GaugeFamily("app_state", "State.", ("sender",)),
            lambda r: Gauge("app_state", "State.", ("sender",), registry=r),
        ),
    ],
    ids=["counter", "histogram", "gauge"],
)
def test_a_family_never_moved_has_its_help_and_type_and_no_series(
    ours: Callable[[], Family], theirs: Callable[[CollectorRegistry], object]
) -> None:
    registry = CollectorRegistry()
    theirs(registry)
    assert exposition(ours()) == generate_latest(registry).decode()


def test_created_samples_follow_prometheus_clients_switch() -> None:
    ours = CounterFamily("app_sent_total", "Sent.", ("channel",))
    ours.inc(("wa",))
    disable_created_metrics()
    try:
        registry = CollectorRegistry()
        Counter("app_sent_total", "Sent.", ("channel",), registry=registry).labels("wa").inc()
        text = exposition(ours)
        assert text == generate_latest(registry).decode()
        assert "_created" not in text
    finally:
        enable_created_metrics()
    assert "_created" in exposition(ours)


def test_two_families_of_one_name_are_refused_by_the_registry() -> None:
    registry = CollectorRegistry()
    registry.register(One(CounterFamily("app_sent_total", "Sent.", ("channel",))))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Counter("app_sent_total", "Sent.", ("channel",), registry=registry)
