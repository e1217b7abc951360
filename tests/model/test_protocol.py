"""The evaluation protocol's windows and the removal of cards already known compromised, by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl

from models.protocol import Windows, drop_known_compromised, window_of


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
