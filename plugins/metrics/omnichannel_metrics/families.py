"""Counters, histograms and gauges kept as plain numbers, turned into prometheus-client families when scraped.

prometheus-client's own ``Counter.labels(...).inc()`` and ``Histogram.observe`` take a lock per
value (three for an observation) and go through several calls: a few microseconds per send, on
the event loop, for metrics that are read every 15 s. Here a series is a dictionary entry keyed by
its label values, moved with one lookup and one store, and :meth:`collect` builds the same
families a scrape of prometheus-client's own metrics gives: the same names, types, help texts,
label names, series order (first observed first), bucket bounds and ``_created`` samples.

Written from the event loop's thread only (the listener and the ``send`` wrapper run there); a
scrape copies each dictionary in one C-level step, so a scrape from another thread sees every series
whole, at worst one observation behind in a histogram's count or sum.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Sequence
from typing import cast

import prometheus_client.metrics
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

_go_float = cast(Callable[[float], str], floatToGoString)
"""How prometheus-client writes a bucket bound (``le``): ``0.005``, ``1.0``, ``+Inf``."""

__all__ = ["CounterFamily", "Family", "GaugeFamily", "HistogramFamily"]

Labels = tuple[str, ...]
"""The label values of one series, in the order of the family's label names."""


def _created_series() -> bool:
    # prometheus-client's switch for ``_created`` samples (``disable_created_metrics()``, or
    # ``PROMETHEUS_DISABLE_CREATED_SERIES``): honour it as its own metrics do.
    return bool(getattr(prometheus_client.metrics, "_use_created", True))


class Family:
    """What every family has: a name, a help text, label names, and when each series appeared."""

    __slots__ = ("created", "documentation", "labelnames", "name")

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.created: dict[Labels, float] = {}
        """Series -> ``time.time()`` when it was first moved (prometheus-client's ``_created``)."""

    def empty(self) -> Metric:
        """The family without its series (what a collector's ``describe`` returns)."""
        raise NotImplementedError

    def collect(self) -> Metric:
        """The family with every series, as prometheus-client's registry hands it to ``generate_latest``."""
        raise NotImplementedError

    def _labels(self, key: Labels) -> dict[str, str]:
        return dict(zip(self.labelnames, key, strict=True))


class CounterFamily(Family):
    """A labelled counter (``<name>_total``); :meth:`inc` with the label values in order."""

    __slots__ = ("values",)

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, documentation, labelnames)
        self.values: dict[Labels, float] = {}

    def inc(self, key: Labels, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0) to the series ``key``."""
        values = self.values
        value = values.get(key)
        if value is None:
            self.created[key] = time.time()
            value = 0.0
        values[key] = value + amount

    def value(self, key: Labels) -> float:
        """The series' value (0 for a series never moved)."""
        return self.values.get(key, 0.0)

    def empty(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Metric:
        family = self.empty()
        created = self.created if _created_series() else {}
        for key, value in list(self.values.items()):
            family.add_metric(key, value, created=created.get(key))
        return family


class HistogramFamily(Family):
    """A labelled histogram with fixed bucket bounds; :meth:`observe` with the label values in order.

    A series is one list: the count of each bucket alone (not cumulative; the last one is
    ``+Inf``), then the sum. A value lands in the first bucket whose bound is ``>=`` it, as in
    prometheus-client.
    """

    __slots__ = ("bounds", "series")

    def __init__(
        self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]
    ) -> None:
        super().__init__(name, documentation, labelnames)
        self.bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        self.series: dict[Labels, list[float]] = {}

    def observe(self, key: Labels, value: float) -> None:
        """Count ``value`` in the series ``key``."""
        counts = self.series.get(key)
        if counts is None:
            self.created[key] = time.time()
            counts = self.series[key] = [0.0] * (len(self.bounds) + 2)
        counts[bisect.bisect_left(self.bounds, value)] += 1
        counts[-1] += value

    def empty(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Metric:
        family = self.empty()
        created = self.created if _created_series() else {}
        edges = [_go_float(b) for b in self.bounds] + ["+Inf"]
        for key, series in list(self.series.items()):
            counts = list(series)  # one copy: the buckets and the sum of the same moment
            cumulative, buckets = 0.0, []
            for edge, count in zip(edges, counts, strict=False):
                cumulative += count
                buckets.append((edge, cumulative))
            family.add_metric(key, buckets, counts[-1])
            stamp = created.get(key)
            if stamp is not None:
                family.samples.append(Sample(f"{self.name}_created", self._labels(key), stamp))
        return family


class GaugeFamily(Family):
    """A labelled gauge; :meth:`set` with the label values in order."""

    __slots__ = ("values",)

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, documentation, labelnames)
        self.values: dict[Labels, float] = {}

    def set(self, key: Labels, value: float) -> None:
        """Set the series ``key`` to ``value``."""
        self.values[key] = float(value)

    def empty(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Metric:
        family = self.empty()
        for key, value in list(self.values.items()):
            family.add_metric(key, value)
        return family
