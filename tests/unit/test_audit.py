"""``fraudpipe audit show`` with both kinds of reason codes: a rule that forced a review, a SHAP contribution, and
rows logged before rules had reasons (contributions without ``kind``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl

from fraudpipe.audit import trail, trails
from fraudpipe.clock import FixedClock
from fraudpipe.logstore import Logs
from fraudpipe.privacy import access, subject_digest
from models.scorer import Fired
from streams.outputs import Decided, LogPart, decision_rows, reason_texts
from streams.scoring import conflict_rows
from tests import factories

ROOT = Path(__file__).resolve().parents[2]


def _rows(txn_ids: list[str], reasons: list[str]) -> pl.DataFrame:
    n = len(txn_ids)
    txns = [factories.transaction(txn_id=txn_id) for txn_id in txn_ids]
    matrix = np.full((n, 43), 1.0)
    return decision_rows([LogPart.of(Decided(txns=txns, decided_at=factories.T0, latency_ms=np.ones(n), matrix=matrix,
                                 scores=np.full(n, 0.01), level=np.ones(n, dtype=np.int8), versions=["v0001"] * n,
                                 sha256s=["ab" * 32] * n, review=0.5, decline=0.9, reasons=reasons,
                                 degraded=False))])  # fmt: skip


def test_the_trail_and_audit_show_name_rules_and_contributions(tmp_path: Path) -> None:
    blocked = Fired("card_blocked", np.array([False, False, True]), np.full(3, np.nan), np.nan)
    rule = Fired("known_fraud_30d", np.array([True, False, False]), np.array([2.0, 0.0, 0.0]), 1.0)
    contribution = factories.REASONS[0]
    reasons = reason_texts(np.array([True, True, True]), (blocked, rule), {1: [contribution]})
    old = json.dumps([{k: v for k, v in contribution.model_dump().items() if k != "kind"}])
    logs = Logs.under(tmp_path)
    logs.decisions.append(pl.concat([_rows(["ruled", "scored", "blocked"], reasons), _rows(["old"], [old])]))
    codes = {t: trail(t, logs, registered=None, key=None)["decision"]["reason_codes"]  # type: ignore[index]
             for t in ("ruled", "scored", "old")}  # fmt: skip
    assert codes["ruled"] == [{"schema_version": 1, "kind": "rule", "rule": "known_fraud_30d", "value": 2.0,
                               "threshold": 1.0}]  # fmt: skip
    assert [c["kind"] for c in codes["scored"]] == [c["kind"] for c in codes["old"]] == ["feature"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    env |= {"FRAUD_PATHS__DATA_DIR": str(tmp_path), "FRAUD_PATHS__MODELS_DIR": str(tmp_path / "models"),
            "PYTHONPATH": str(ROOT)}  # fmt: skip
    shown = {}
    for txn_id in ("ruled", "old", "blocked"):
        result = subprocess.run([sys.executable, "-m", "fraudpipe", "audit", "show", txn_id], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert result.returncode == 0, result.stderr
        shown[txn_id] = result.stdout
    assert "reason: rule known_fraud_30d: 2.0 (fires at 1.0)" in shown["ruled"]
    assert "reason: rule card_blocked (the card was blocked: a fraud on it had been confirmed" in shown["blocked"]
    assert "reason: card_amount_ratio_30d = 7.5 raises the score by 1.800" in shown["old"]


def _cards_rows(pairs: list[tuple[str, str]], merchant: str = "M-0007") -> pl.DataFrame:
    txns = [factories.transaction(txn_id=t, card_token=c, merchant_name=merchant) for t, c in pairs]
    n = len(txns)
    return decision_rows([LogPart.of(Decided(txns=txns, decided_at=factories.T0, latency_ms=np.ones(n),
                                             matrix=np.full((n, 43), 1.0), scores=np.full(n, 0.7),
                                             level=np.ones(n, dtype=np.int8), versions=["v0001"] * n,
                                             sha256s=["ab" * 32] * n, review=0.5, decline=0.9,
                                             reasons=["[]"] * n, degraded=False))])  # fmt: skip


def test_the_access_export_holds_each_trail_and_nothing_of_another_subject(tmp_path: Path) -> None:
    """Two cards; tok_other's payments under tok_me's id m1 — one decided (the memory had forgotten the id), one
    refused as a conflict — are someone else's data; a merchant name with markup (escaped on the page)."""
    me, other = "tok_" + "a" * 32, "tok_" + "b" * 32
    logs = Logs.under(tmp_path / "data")
    logs.decisions.append(_cards_rows([("m1", other)], merchant="Other"))  # m1 under another card, decided first
    logs.decisions.append(pl.concat([_cards_rows([("m1", me), ("m2", me)], merchant="<b>Shop</b>"),
                                     _cards_rows([("o1", other)])]))  # fmt: skip
    refused = factories.transaction(txn_id="m1", card_token=other, amount=999.0)
    logs.conflicts.append(conflict_rows([refused], factories.T0))
    receipt = access([me], requested_as="card", logs=logs, online=lambda card: {"online_state": None},
                     erased={}, registered=None, key=b"k" * 32, out=tmp_path / "out",
                     receipts=tmp_path / "data" / "privacy" / "access-receipts", clock=FixedClock(factories.T0),
                     by="test")  # fmt: skip
    document = json.loads((tmp_path / "out" / "subject-access.json").read_text())
    page = (tmp_path / "out" / "subject-access.html").read_text()
    assert [t["txn_id"] for t in document["transactions"]] == ["m1", "m2"]
    first = document["transactions"][0]
    assert (
        first["event"]["card_token"] == me and first["decision"]["redeliveries"] == 0
    )  # the other card's m1: not theirs
    alone = trail("m2", logs, registered=None, key=b"k" * 32)
    assert document["transactions"][1] == json.loads(json.dumps(alone, default=str))
    assert trails(["m1", "m2", "o1", "never"], logs, registered=None, key=None).keys() == {"m1", "m2", "o1"}
    assert document["transactions"][0]["conflicts"] == [] and other not in json.dumps(document) and other not in page
    assert "&lt;b&gt;Shop&lt;/b&gt;" in page and "<b>Shop</b>" not in page
    assert receipt.sections["transactions"] == 2 and receipt.subjects == [subject_digest(b"k" * 32, me)]
    assert me not in (tmp_path / "data" / "privacy" / "access-receipts" / f"{receipt.export_id}.json").read_text()
