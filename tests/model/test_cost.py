"""The cost model: thresholds checked against a hand-worked example, money figures added up by hand."""

from __future__ import annotations

import numpy as np
import pytest

from features.definitions import FEATURE_NAMES, feature_index
from fraudpipe.settings import CostSettings, Rule
from models.cost import Judged, cheapest_thresholds, offline_rules, policy_figures

# Four payments, best score first. With a fee of 10, a review at 5 and a false decline costing its whole amount:
#   row  score  truth   amount  decline  review  approve
#   0    0.9    fraud   100     0        5       110
#   1    0.6    genuine  50     50       5       0
#   2    0.3    fraud    80     0        5       90
#   3    0.1    genuine  20     20       5       0
# Cutting the ranking after i rows for decline and j >= i for review, cost(i, j) by hand:
#   (0,0) 200  (0,1) 95  (1,1) 90  (1,2) 95  (2,2) 140  (1,3) 10  (2,3) 55  (3,3) 50  (3,4) 55  (4,4) 70 ...
# Two reviews a day allowed: (1, 3) at 10, review from 0.3, decline from 0.9. One allowed: (3, 3) at 50.
SCORES, TRUTH, AMOUNTS = [0.9, 0.6, 0.3, 0.1], [1, 0, 1, 0], [100.0, 50.0, 80.0, 20.0]


def _costs(capacity: int) -> CostSettings:
    return CostSettings(chargeback_fee=10.0, review_cost=5.0, false_decline_share=1.0, review_capacity=capacity)


def test_the_cheapest_thresholds_are_the_hand_worked_ones() -> None:
    rows = Judged.of(TRUTH, AMOUNTS, SCORES, ["d"] * 4)
    two = cheapest_thresholds(rows, _costs(2))
    assert (two["review"], two["decline"], two["expected_cost_per_day"]) == (0.3, 0.9, 10.0)
    one = cheapest_thresholds(rows, _costs(1))
    assert (one["review"], one["decline"], one["expected_cost_per_day"]) == (0.3, 0.3, 50.0)
    assert one["chosen_by"] == "expected cost" and one["cost"]["review_capacity"] == 1


def test_the_capacity_is_per_day_and_blocked_rows_do_not_move_the_choice() -> None:
    over_two_days = Judged.of(TRUTH, AMOUNTS, SCORES, ["d1", "d1", "d2", "d2"])
    chosen = cheapest_thresholds(over_two_days, _costs(1))
    assert (chosen["review"], chosen["decline"], chosen["expected_cost_per_day"]) == (0.3, 0.9, 5.0)
    # a blocked card's payment at the top of the ranking is declined by its rule: the model's cuts stay the same
    blocked = Judged.of([*TRUTH, 0], [*AMOUNTS, 30.0], [*SCORES, 0.95], ["d"] * 5, blocked=[0, 0, 0, 0, 1])
    chosen = cheapest_thresholds(blocked, _costs(2))
    assert (chosen["review"], chosen["decline"]) == (0.3, 0.9)
    assert chosen["expected_cost_per_day"] == 10.0 + 30.0  # its false decline is paid whatever the thresholds


def test_rule_reviews_use_the_capacity() -> None:
    # row 3 is reviewed by a rule whatever its score: with two reviews a day, the model may add only one
    rows = Judged.of(TRUTH, AMOUNTS, SCORES, ["d"] * 4, forced=[0, 0, 0, 1])
    chosen = cheapest_thresholds(rows, _costs(2))
    level_reviews = sum(1 for s, f in zip(SCORES, [0, 0, 0, 1], strict=True)
                        if f or chosen["review"] <= s < chosen["decline"])  # fmt: skip
    assert level_reviews <= 2
    assert chosen["expected_cost_per_day"] == 55.0  # (3, 3): decline rows 0-2 (50), the rule reviews row 3 (5)


def test_the_policy_figures_add_up_by_hand() -> None:
    rows = Judged.of([*TRUTH, 0], [*AMOUNTS, 30.0], [*SCORES, 0.2], ["d"] * 5, blocked=[0, 0, 0, 0, 1])
    figures = policy_figures(rows, 0.3, 0.9, _costs(2))
    assert figures["alerts"] == 3 and figures["alert_rate"] == pytest.approx(3 / 5)
    assert (figures["model_alerts"], figures["rule_alerts"], figures["blocked_declines"]) == (3, 0, 1)
    assert figures["alert_precision"] == pytest.approx(2 / 3)
    assert figures["decline_rate"] == pytest.approx(2 / 5) and figures["reviews_per_day"] == 2.0
    assert (figures["fraud_amount"], figures["fraud_amount_caught"], figures["fraud_amount_missed"]) == (180, 180, 0)
    assert figures["amount_recall"] == 1.0 and figures["recall"] == 1.0
    assert (figures["false_declines"], figures["false_decline_amount"]) == (1, 30.0)
    assert figures["expected_cost"] == 10.0 + 30.0
    # rules only: the blocked card declined (30), both frauds approved (110 + 90)
    assert figures["rules_only_cost"] == 230.0
    assert figures["saving_vs_rules_only"] == pytest.approx(1 - 40 / 230)
    assert figures["fraud_cut_vs_rules_only"] == 1.0


def test_offline_rules_block_a_card_with_a_known_fraud_only_when_blocking_is_in_force() -> None:
    index = feature_index()
    matrix = np.zeros((3, len(FEATURE_NAMES)))
    matrix[:, index["amount"]] = [10.0, 10.0, 5_000.0]
    matrix[:, index["card_fraud_count_30d"]] = [0, 2, np.nan]
    rules = (Rule(id="card_blocked"), Rule(id="known_fraud_30d"), Rule(id="large_amount", threshold=1_000.0))
    blocked, forced = offline_rules(matrix, rules)
    assert blocked.tolist() == [False, True, False] and forced.tolist() == [0, 0, 1]
    blocked, forced = offline_rules(matrix, (Rule(id="known_fraud_30d"),))
    assert blocked.tolist() == [False, False, False] and forced.tolist() == [0, 1, 0]
    declining = (Rule(id="large_amount", threshold=1_000.0, at_least="decline"),)
    assert offline_rules(matrix, declining)[1].tolist() == [0, 0, 2]


def test_a_rule_that_declines_is_fixed_cost_and_its_own_in_the_baseline() -> None:
    # row 1 is declined by a rule whatever its score: the choice ignores it, the rules alone decline it too
    rows = Judged.of(TRUTH, AMOUNTS, SCORES, ["d"] * 4, forced=[0, 2, 0, 0])
    chosen = cheapest_thresholds(rows, _costs(2))
    figures = policy_figures(rows, chosen["review"], chosen["decline"], _costs(2))
    assert figures["false_declines"] >= 1 and figures["rule_alerts"] + figures["model_alerts"] == figures["alerts"]
    assert figures["rules_only_cost"] == 110 + 50 + 90  # a and c missed, b declined by its rule
