"""The pure status state machine: ``omnichannel.store.status.fold``."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from omnichannel.message import DeliveryStatus
from omnichannel.store import StatusEntry
from omnichannel.store.status import ORDER, RANK, StatusState, fold, fold_all

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def entry(status: str, seconds: int, code: str | None = None) -> StatusEntry:
    return StatusEntry(DeliveryStatus(status), at(seconds), code, None if code is None else f"detail {code}")


def test_rank_orders_the_forward_statuses():
    assert sorted(RANK, key=RANK.__getitem__) == ["queued", "accepted", "sent", "delivered", "read"]
    assert DeliveryStatus.FAILED not in RANK


def test_empty_state_has_no_status():
    assert StatusState().status is None


def test_forward_path():
    state = fold_all([entry("queued", 0), entry("accepted", 1), entry("sent", 2), entry("delivered", 3)])
    assert state.status is DeliveryStatus.DELIVERED
    assert (state.queued_at, state.accepted_at, state.sent_at, state.delivered_at) == (
        at(0),
        at(1),
        at(2),
        at(3),
    )
    assert state.read_at is None


def test_late_sent_does_not_move_back():
    state = fold_all([entry("delivered", 3), entry("sent", 2)])
    assert state.status is DeliveryStatus.DELIVERED
    assert state.sent_at == at(2)


def test_failed_is_final_over_earlier_statuses():
    state = fold_all([entry("accepted", 1), entry("failed", 5, "131026"), entry("sent", 6)])
    assert state.status is DeliveryStatus.FAILED
    assert (state.failed_at, state.error_code, state.error_detail) == (at(5), "131026", "detail 131026")


def test_failed_then_delivered_is_delivered_and_keeps_the_failure():
    state = fold_all([entry("failed", 5, "x"), entry("delivered", 7)])
    assert state.status is DeliveryStatus.DELIVERED
    assert (state.failed_at, state.error_code) == (at(5), "x")


def test_read_implies_delivered_at():
    state = fold_all([entry("sent", 1), entry("read", 4)])
    assert state.status is DeliveryStatus.READ
    assert (state.delivered_at, state.read_at) == (at(4), at(4))
    assert fold(state, entry("delivered", 3)).delivered_at == at(3)
    assert fold(state, entry("delivered", 9)).delivered_at == at(4)


def test_earliest_time_and_earliest_error_win():
    state = fold_all(
        [entry("failed", 9, "late"), entry("failed", 2, "early"), entry("sent", 8), entry("sent", 3)]
    )
    assert (state.failed_at, state.error_code, state.sent_at) == (at(2), "early", at(3))


def test_duplicate_is_a_no_op():
    state = fold_all([entry("sent", 1), entry("failed", 2, "c")])
    assert fold(state, entry("failed", 2, "c")) == state
    assert fold(state, entry("sent", 1)) == state


entries = st.builds(
    lambda status, seconds, code: StatusEntry(
        status, at(seconds), code if status is DeliveryStatus.FAILED else None, code and f"detail {code}"
    ),
    st.sampled_from(list(DeliveryStatus)),
    st.integers(0, 20),
    st.sampled_from([None, "a", "b"]),
)


@given(st.lists(entries, max_size=12), st.randoms(use_true_random=False), st.data())
def test_any_order_and_duplication_gives_the_same_state(items, random, data):
    shuffled = list(items)
    random.shuffle(shuffled)
    duplicated = shuffled + data.draw(st.lists(st.sampled_from(items), max_size=6)) if items else shuffled
    random.shuffle(duplicated)
    assert fold_all(duplicated) == fold_all(items)


@given(st.lists(entries, max_size=12))
def test_status_never_moves_backwards(items):
    state = StatusState()
    for item in items:
        new = fold(state, item)
        assert new.status is not None
        if state.status is not None:
            assert ORDER[new.status] >= ORDER[state.status]
            if RANK.get(new.status, 99) < RANK.get(state.status, -1):  # only failed -> delivered/read
                raise AssertionError((state.status, new.status))
        state = new


@given(st.lists(entries, min_size=1, max_size=12))
def test_state_matches_the_rule(items):
    state = fold_all(items)
    seen = {item.status for item in items}
    arrived = seen & {DeliveryStatus.DELIVERED, DeliveryStatus.READ}
    if arrived:
        expected = max(arrived, key=RANK.__getitem__)
    elif DeliveryStatus.FAILED in seen:
        expected = DeliveryStatus.FAILED
    else:
        expected = max(seen, key=RANK.__getitem__)
    assert state.status is expected
    for status in DeliveryStatus:
        times = [item.occurred_at for item in items if item.status is status]
        if status is DeliveryStatus.DELIVERED:
            times += [item.occurred_at for item in items if item.status is DeliveryStatus.READ]
        assert state.at(status) == (min(times) if times else None)
