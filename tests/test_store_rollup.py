"""The aggregates' arithmetic: latency buckets, histogram percentiles, range plans and deltas."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from omnichannel.message import DeliveryStatus
from omnichannel.store.analytics import percentile, plan
from omnichannel.store.rollup import (
    BOUNDS,
    DAY,
    HOUR,
    RELATIVE_ERROR,
    Deltas,
    Facts,
    bucket_middle,
    from_micros,
    histogram_percentiles,
    latency_bucket,
    micros,
)
from omnichannel.store.status import StatusState

T0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
SECOND = 1_000_000


def bound(values: list[float], fraction: float) -> float:
    """How far an approximate percentile may be from ``percentile_cont`` of the sorted values."""
    position = fraction * (len(values) - 1)
    low, high = values[math.floor(position)], values[min(math.floor(position) + 1, len(values) - 1)]
    return RELATIVE_ERROR * max(abs(low), abs(high)) + 0.0005 + 1e-9


def test_bounds_are_five_percent_apart_from_one_millisecond():
    assert BOUNDS[:4] == (1000, 1050, 1102, 1158)
    assert all(low < high <= low * 1.0511 for low, high in itertools.pairwise(BOUNDS))
    assert BOUNDS[-1] > 300 * 365 * DAY * SECOND  # three centuries
    assert 0.025 < RELATIVE_ERROR < 0.026


@given(st.integers(-(10**15), 10**15), st.integers(-(10**15), 10**15))
def test_buckets_keep_the_order_of_latencies(a, b):
    if a <= b:
        assert latency_bucket(a) <= latency_bucket(b)
    else:
        assert latency_bucket(a) >= latency_bucket(b)


@given(st.integers(-(10**15), 10**15))
def test_a_bucket_middle_is_half_a_bucket_away_at_most(latency_us):
    seconds = latency_us / 1e6
    middle = bucket_middle(latency_bucket(latency_us))
    assert abs(middle - seconds) <= RELATIVE_ERROR * abs(seconds) + 0.0005 + 1e-12
    if latency_us > 0:  # negative latencies mirror the positive ones
        assert latency_bucket(-latency_us) == -1 - latency_bucket(latency_us)
        assert bucket_middle(latency_bucket(-latency_us)) == -middle


def test_bucket_edges():
    assert [latency_bucket(us) for us in (0, 999, 1000, 1049, 1050, -1, -999, -1000)] == [
        0,
        0,
        1,
        1,
        2,
        -1,
        -1,
        -2,
    ]
    assert bucket_middle(0) == 0.0005
    assert bucket_middle(1) == 0.001025
    assert bucket_middle(-2) == -0.001025
    assert bucket_middle(len(BOUNDS)) == BOUNDS[-1] / 1e6


@given(
    st.lists(
        st.one_of(st.integers(0, 2000), st.integers(0, 10**11), st.integers(-(10**7), 0)),
        min_size=1,
        max_size=200,
    )
)
def test_histogram_percentiles_are_within_the_bound(latencies_us):
    histogram: dict[int, int] = {}
    for value in latencies_us:
        histogram[latency_bucket(value)] = histogram.get(latency_bucket(value), 0) + 1
    histogram[7] = histogram.get(7, 0)  # an emptied bucket (count 0) changes nothing
    count, found = histogram_percentiles(histogram, (0.0, 0.5, 0.95, 1.0))
    values = sorted(max(value, 0) / 1e6 for value in latencies_us)  # negative latencies count as 0
    assert count == len(values)
    for fraction, approximate in zip((0.0, 0.5, 0.95, 1.0), found, strict=True):
        exact = percentile(values, fraction)
        assert approximate is not None
        assert exact is not None
        assert abs(approximate - exact) <= bound(values, fraction)


def test_empty_histogram():
    assert histogram_percentiles({}, (0.5,)) == (0, [None])
    assert histogram_percentiles({3: 0}, (0.5, 0.95)) == (0, [None, None])


# ---------------------------------------------------------------- plans


def covered(found):
    pieces = [(low, high) for _, low, high in found.segments] + list(found.edges)
    return sorted(pieces)


offsets = st.integers(-3 * DAY * SECOND, 5 * DAY * SECOND).map(lambda us: T0 + timedelta(microseconds=us))


@given(offsets, offsets)
def test_plan_covers_the_range_once(a, b):
    if a == b:
        return
    start, end = min(a, b), max(a, b)
    found = plan(start, end)
    pieces = covered(found)
    assert pieces[0][0] == start
    assert pieces[-1][1] == end
    assert all(one[1] == two[0] for one, two in itertools.pairwise(pieces))  # no gap, no overlap
    assert all(low < high for low, high in pieces)
    for span, low, high in found.segments:
        assert micros(low) % (span * SECOND) == 0
        assert micros(high) % (span * SECOND) == 0
    assert len(found.edges) <= 2
    longest = timedelta(hours=1 if found.segments else 2)  # no whole hour inside: all from messages
    assert all(high - low < longest for low, high in found.edges)
    if end - start >= timedelta(days=2):  # long ranges read mostly day rows
        assert any(span == DAY for span, _, _ in found.segments)


def test_plan_examples():
    assert plan(T0, T0 + timedelta(hours=1)).segments == ((HOUR, T0, T0 + timedelta(hours=1)),)
    assert plan(T0, T0 + timedelta(hours=1)).edges == ()
    inside = plan(T0 + timedelta(minutes=1), T0 + timedelta(minutes=59))
    assert (inside.segments, inside.edges) == ((), ((T0 + timedelta(minutes=1), T0 + timedelta(minutes=59)),))
    midnight = datetime(2026, 3, 2, tzinfo=UTC)
    found = plan(T0 - timedelta(seconds=1), midnight + timedelta(days=1, hours=2, seconds=1))
    assert found.segments == (
        (HOUR, T0, midnight),
        (DAY, midnight, midnight + timedelta(days=1)),
        (HOUR, midnight + timedelta(days=1), midnight + timedelta(days=1, hours=2)),
    )
    assert found.edges == (
        (T0 - timedelta(seconds=1), T0),
        (midnight + timedelta(days=1, hours=2), midnight + timedelta(days=1, hours=2, seconds=1)),
    )


def test_micros_round_trip():
    moment = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    assert from_micros(micros(moment)) == moment
    assert micros(datetime(1970, 1, 1, tzinfo=UTC)) == 0


# ---------------------------------------------------------------- deltas


def facts(**changes):
    base = Facts(
        micros(T0) + 5 * 60 * SECOND,
        "whatsapp",
        "welcome",
        None,
        "accepted",
        None,
        micros(T0),
        None,
        None,
        None,
    )
    return base._replace(**changes)


def test_a_new_message_counts_once_per_span():
    deltas = Deltas()
    deltas.move(None, facts())
    hour, day = micros(T0), micros(datetime(2026, 3, 1, tzinfo=UTC))
    assert deltas.count_rows() == [
        ((HOUR, hour, "whatsapp", "welcome", "", "accepted", "", 1), 1),
        ((DAY, day, "whatsapp", "welcome", "", "accepted", "", 1), 1),
    ]
    assert deltas.latency_rows() == []


def test_a_change_moves_the_message_and_adds_its_latencies():
    old = facts()
    state = StatusState(
        accepted_at=T0, delivered_at=T0 + timedelta(seconds=2), read_at=T0 + timedelta(seconds=9)
    )
    new = old.folded(state, micros)
    assert (new.status, new.delivered_at) == (DeliveryStatus.READ.value, micros(T0) + 2 * SECOND)
    deltas = Deltas()
    deltas.move(old, new)
    hour = micros(T0)
    counts = dict(deltas.count_rows())
    assert counts[(HOUR, hour, "whatsapp", "welcome", "", "accepted", "", 1)] == -1
    assert counts[(HOUR, hour, "whatsapp", "welcome", "", "read", "", 1)] == 1
    assert len(counts) == 4
    latencies = dict(deltas.latency_rows())
    assert latencies[(HOUR, hour, "whatsapp", "welcome", "delivered", latency_bucket(2 * SECOND))] == 1
    assert latencies[(HOUR, hour, "whatsapp", "welcome", "read", latency_bucket(9 * SECOND))] == 1
    assert len(latencies) == 4


def test_no_change_no_rows_and_opposite_moves_cancel():
    deltas = Deltas()
    deltas.move(facts(), facts())
    assert (deltas.count_rows(), deltas.latency_rows()) == ([], [])
    failed = facts(status="failed", error_code="131026")
    deltas.move(facts(), failed)
    deltas.move(failed, facts())
    assert (deltas.count_rows(), deltas.latency_rows()) == ([], [])


def test_a_message_without_send_time_has_no_latency():
    queued = facts(status="queued", accepted_at=None, delivered_at=micros(T0))
    assert queued.latencies() == []
    sent_only = facts(accepted_at=None, sent_at=micros(T0), delivered_at=micros(T0) - SECOND)
    assert sent_only.latencies() == [("delivered", latency_bucket(-SECOND))]
