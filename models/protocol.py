"""The evaluation protocol's windows, pure: which days train, which wait for labels, which test.

Following the handbook (../shared/REFERENCE.md): train on ``train_days`` from ``train_start`` (with ``history_days``
more before it for features and, optionally, training), leave a gap of ``delay_days`` whose labels are not known yet
when the model is trained, test on the ``test_days`` after it. In the test window, a card whose fraud was already
known is no longer a detection target. Exactly as the handbook's protocol: a payment on day ``d`` is dropped when its
card had a fraud from the training window's first day up to day ``d - delay_days - 1`` (the frauds of the training
window, then each test day those of one more day of the gap).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl

__all__ = ["Windows", "drop_known_compromised", "known_compromised", "window_of"]


@dataclass(frozen=True, slots=True)
class Windows:
    """Day ranges, each ``[first, end)``: history, train, delay gap, test."""

    train_start: date
    train_days: int
    delay_days: int
    test_days: int
    history_days: int = 0

    @property
    def history(self) -> tuple[date, date]:
        return self.train_start - timedelta(days=self.history_days), self.train_start

    @property
    def train(self) -> tuple[date, date]:
        return self.train_start, self.train_start + timedelta(days=self.train_days)

    @property
    def delay(self) -> tuple[date, date]:
        end = self.train[1]
        return end, end + timedelta(days=self.delay_days)

    @property
    def test(self) -> tuple[date, date]:
        end = self.delay[1]
        return end, end + timedelta(days=self.test_days)


def window_of(frame: pl.DataFrame, days: tuple[date, date], column: str = "event_time") -> pl.DataFrame:
    """Rows of ``frame`` whose UTC day of ``column`` is in ``[days[0], days[1])``."""
    day = pl.col(column).dt.date()
    return frame.filter((day >= days[0]) & (day < days[1]))


def known_compromised(test: pl.DataFrame, history: pl.DataFrame, delay_days: int) -> pl.Series:
    """For each row of ``test``, whether its card's fraud was known by its day (see the module docstring): such a
    card would be blocked.

    ``history`` holds the payments that may reveal a fraud, from the training window's first day on, with
    ``card_token``, ``event_time`` and ``is_fraud``.
    """
    first_fraud = (
        history.filter(pl.col("is_fraud"))
        .group_by("card_token")
        .agg(pl.col("event_time").dt.date().min().alias("first_fraud_day"))
    )
    known = test.select("card_token", "event_time").join(
        first_fraud, on="card_token", how="left", maintain_order="left"
    )
    return (
        known.select(
            pl.col("first_fraud_day").is_not_null()
            & (pl.col("first_fraud_day") < pl.col("event_time").dt.date() - pl.duration(days=delay_days))
        )
        .to_series()
        .alias("known_compromised")
    )


def drop_known_compromised(test: pl.DataFrame, history: pl.DataFrame, delay_days: int) -> pl.DataFrame:
    """``test`` without the payments of cards whose fraud was known by their day (:func:`known_compromised`)."""
    return test.filter(~known_compromised(test, history, delay_days))
