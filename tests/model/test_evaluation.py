"""Evaluation metrics on hand-built data with answers worked out by hand."""

from __future__ import annotations

import pytest

from models.evaluation import average_precision, card_precision_at_k, recall_at_fpr, roc_auc


def test_card_precision_at_k_by_hand() -> None:
    # Day 1: cards a (fraud, 0.9), b (0.8), c (fraud, 0.7), d (0.1). Top 2 = a, b -> 1 compromised: 1/2.
    # Day 2: a is already found and leaves; c (fraud, 0.95), b (0.6), e (fraud, 0.5). Top 2 = c, b -> 1/2.
    # Day 3: c leaves too; e (fraud, 0.4), b (0.3). Top 2 = e, b -> 1/2. Mean 0.5.
    days = [1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]
    cards = ["a", "a", "b", "c", "d", "a", "c", "b", "e", "c", "e", "b"]
    truth = [1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 0]
    scores = [0.9, 0.2, 0.8, 0.7, 0.1, 0.99, 0.95, 0.6, 0.5, 0.97, 0.4, 0.3]
    result = card_precision_at_k(days, cards, truth, scores, k=2)
    assert result.per_day == [0.5, 0.5, 0.5]
    assert result.mean == 0.5
    assert result.detected == ["a", "c", "e"]


def test_a_card_counts_once_per_day_with_its_highest_score() -> None:
    result = card_precision_at_k([1, 1, 1], ["x", "x", "y"], [0, 1, 0], [0.1, 0.2, 0.15], k=1)
    assert result.per_day == [1.0]  # x ranks by 0.2 and is compromised that day


def test_transaction_metrics() -> None:
    truth = [0, 0, 1, 1]
    assert roc_auc(truth, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert average_precision(truth, [0.1, 0.4, 0.35, 0.8]) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert recall_at_fpr(truth, [0.1, 0.4, 0.35, 0.8], max_fpr=0.0) == pytest.approx(0.5)
    assert recall_at_fpr(truth, [0.1, 0.4, 0.35, 0.8], max_fpr=0.5) == pytest.approx(1.0)
