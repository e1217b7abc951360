"""The evaluation protocol's windows, the removal of cards already known compromised and when the truth labels become
visible, by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from models.dataset import History
from models.evaluate import VISIBILITY, Visibility, split
from models.protocol import Windows, drop_known_compromised, window_of
from tests import factories


def _frame(rows: list[tuple[str, int, bool]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "card_token": [card for card, _, _ in rows],
            "event_time": [datetime(2018, 7, day, 12, tzinfo=UTC) for _, day, _ in rows],
            "is_fraud": [fraud for _, _, fraud in rows],
        }
    )


def test_windows_follow_each_other() -> None:
    w = Windows(train_start=date(2018, 7, 25), train_days=7, delay_days=7, test_days=7, history_days=3)
    assert w.history == (date(2018, 7, 22), date(2018, 7, 25))
    assert w.train == (date(2018, 7, 25), date(2018, 8, 1))
    assert w.delay == (date(2018, 8, 1), date(2018, 8, 8))
    assert w.test == (date(2018, 8, 8), date(2018, 8, 15))


def test_window_of_is_half_open() -> None:
    frame = _frame([("a", 1, False), ("a", 2, False), ("a", 3, False)])
    assert window_of(frame, (date(2018, 7, 2), date(2018, 7, 3))).height == 1


def test_known_compromised_cards_leave_the_test_set() -> None:
    # delay 2 days: a fraud of day f is known from day f + 3 (the handbook adds day d - 3 on test day d).
    history = _frame([("a", 1, True), ("b", 5, True), ("c", 2, False)])
    test = _frame([("a", 3, False), ("a", 4, False), ("b", 5, True), ("b", 7, True), ("b", 8, False), ("c", 8, False)])
    kept = drop_known_compromised(test, history, delay_days=2)
    assert list(zip(kept["card_token"], kept["event_time"].dt.day(), strict=True)) == [
        ("a", 3),  # a's fraud of day 1 is not known yet on day 3
        ("b", 5),
        ("b", 7),
        ("c", 8),  # c never had a fraud
    ]


def _history(payments: list[tuple[str, str, bool]]) -> History:
    """A history of card ``a``'s payments (id, ISO time, fraud), at one terminal."""
    rows = [factories.transaction(txn_id=txn, card_token="a", event_time=at).model_dump() | {"is_fraud": fraud}
            for txn, at, fraud in payments]  # fmt: skip
    frame = pl.DataFrame(rows).drop("schema_version").with_columns(fraud_scenario=pl.lit(None, dtype=pl.String))
    return History(frame, pl.DataFrame(), 0)


@pytest.mark.parametrize(("visibility", "seen"), [("aligned", 0), ("exact", 1)])
def test_a_label_is_visible_only_once_the_card_leaves_the_test(visibility: Visibility, seen: int) -> None:
    """Delay 1 day: a fraud on 2 July (in the gap) makes its card known compromised from 4 July (the removal rule).
    With aligned labels, the card's payment late on 3 July — still a detection target — does not see the label; with
    exact ones (known 3 July 22:00) it does. The payment of 4 July is removed either way."""
    history = _history([
        ("train", "2018-07-01T10:00:00Z", False),
        ("fraud", "2018-07-02T22:00:00Z", True),
        ("target", "2018-07-03T23:30:00Z", False),
        ("known", "2018-07-04T00:30:00Z", False),
    ])  # fmt: skip
    data = split(history, Windows(date(2018, 7, 1), train_days=1, delay_days=1, test_days=2), visibility)
    assert data.everything.get_column("txn_id").to_list() == ["target", "known"]
    assert data.blocked.to_list() == [False, True]
    assert data.test.get_column("txn_id").to_list() == ["target"]
    assert data.test.get_column("card_fraud_count_30d").to_list() == [seen]
    labels = history.truth_labels(timedelta(days=1), aligned=visibility == "aligned")
    known = datetime(2018, 7, 4, tzinfo=UTC) if visibility == "aligned" else datetime(2018, 7, 3, 22, tzinfo=UTC)
    assert labels.get_column("known_at").to_list() == [known]


def test_with_no_delay_a_fraud_never_sees_its_own_label() -> None:
    history = _history([("train", "2018-07-01T10:00:00Z", False), ("fraud", "2018-07-02T22:00:00Z", True),
                        ("later", "2018-07-02T23:00:00Z", False)])  # fmt: skip
    for visibility in VISIBILITY:
        data = split(history, Windows(date(2018, 7, 1), train_days=1, delay_days=0, test_days=1), visibility)
        counts = dict(zip(data.everything["txn_id"], data.everything["card_fraud_count_30d"], strict=True))
        assert counts == {"fraud": 0, "later": 0 if visibility == "aligned" else 1}
