"""The log sink's line names both kinds of reason codes: the rule that forced an alert, the features that raised its
score."""

from __future__ import annotations

import asyncio
import logging

import pytest

from fraudpipe import keys
from fraudpipe.contracts import RuleReason
from streams.sinks import LogSink, RedisStreamSink, WebhookSink
from tests import factories


def test_the_log_line_names_rules_and_features(caplog: pytest.LogCaptureFixture) -> None:
    ruled = factories.alert(txn_id="t-rule", alert_id="alert:t-rule", decision="review", score=0.01,
                            reason_codes=[RuleReason(rule="known_fraud_30d", value=1.0, threshold=1.0)])  # fmt: skip
    scored = factories.alert()
    with caplog.at_level(logging.INFO, logger="streams.sinks"):
        assert asyncio.run(LogSink().send([ruled, scored, ruled])) == []
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "alert review t-rule score=0.01 rule:known_fraud_30d=1.0",
        "alert decline txn-000001 score=0.93 card_amount_ratio_30d=7.5, card_seconds_since_last=None",
    ]


def test_the_sinks_with_markers_are_the_ones_erasure_knows() -> None:
    """Erasure deletes a transaction's once-only markers of the sinks fraudpipe.keys lists: they are these."""
    assert {RedisStreamSink.name, WebhookSink.name} == set(keys.MARKED_SINKS)
