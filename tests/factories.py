"""Builders of valid events for tests: one place that knows what a well-formed event looks like."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fraudpipe.contracts import Alert, Contribution, Decision, Label, ModelRef, Thresholds, Transaction

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
VISA_TEST_PAN = "4111111111111111"
MASTERCARD_TEST_PAN = "5555555555554444"


def transaction_fields(**overrides: Any) -> dict[str, Any]:
    """JSON-ready fields of a valid transaction, with every optional field present."""
    fields: dict[str, Any] = {
        "schema_version": 1,
        "txn_id": "txn-000001",
        "event_time": "2024-03-01T12:00:00Z",
        "card_token": "tok_0123456789abcdef0123456789abcdef",
        "card_bin": "411111",
        "card_last4": "1111",
        "amount": 42.5,
        "currency": "EUR",
        "terminal_id": "T-0042",
        "merchant_id": "M-0007",
        "merchant_name": "Café Zürich — 東京",
        "mcc": "5812",
        "customer_id": "C-17",
        "device_id": "dev-9",
        "channel": "card_present",
        "country": "CH",
        "lat": 47.3769,
        "lon": 8.5417,
    }
    fields.update(overrides)
    return fields


def transaction_json(**overrides: Any) -> bytes:
    return json.dumps(transaction_fields(**overrides), ensure_ascii=False).encode()


def transaction(**overrides: Any) -> Transaction:
    return Transaction.model_validate_json(transaction_json(**overrides), strict=True)


def label(**overrides: Any) -> Label:
    fields: dict[str, Any] = {
        "txn_id": "txn-000001",
        "card_token": "tok_0123456789abcdef0123456789abcdef",
        "event_time": T0,
        "known_at": datetime(2024, 3, 9, 8, 30, tzinfo=UTC),
        "is_fraud": True,
        "source": "chargeback",
        "label_version": 1,
        "terminal_id": "T-0042",
    }
    fields.update(overrides)
    return Label(**fields)


MODEL = ModelRef(version="2024-03-01.1", sha256="ab" * 32)
THRESHOLDS = Thresholds(review=0.5, decline=0.9)
REASONS = [
    Contribution(feature="card_amount_ratio_30d", value=7.5, contribution=1.8, direction="raises"),
    Contribution(feature="card_seconds_since_last", value=None, contribution=-0.2, direction="lowers"),
]


def decision(**overrides: Any) -> Decision:
    fields: dict[str, Any] = {
        "txn_id": "txn-000001",
        "card_token": "tok_0123456789abcdef0123456789abcdef",
        "event_time": T0,
        "decided_at": datetime(2024, 3, 1, 12, 0, 0, 12_000, tzinfo=UTC),
        "amount": 42.5,
        "currency": "EUR",
        "features": {"card_amount_ratio_30d": 7.5, "card_seconds_since_last": None},
        "model": MODEL,
        "score": 0.93,
        "decision": "decline",
        "thresholds": THRESHOLDS,
        "reason_codes": REASONS,
        "latency_ms": 12.0,
    }
    fields.update(overrides)
    return Decision(**fields)


def alert(**overrides: Any) -> Alert:
    fields: dict[str, Any] = {
        "alert_id": Alert.id_for("txn-000001"),
        "txn_id": "txn-000001",
        "card_token": "tok_0123456789abcdef0123456789abcdef",
        "card_last4": "1111",
        "event_time": T0,
        "raised_at": datetime(2024, 3, 1, 12, 0, 1, tzinfo=UTC),
        "amount": 42.5,
        "currency": "EUR",
        "terminal_id": "T-0042",
        "decision": "decline",
        "score": 0.93,
        "model": MODEL,
        "reason_codes": REASONS,
    }
    fields.update(overrides)
    return Alert(**fields)


def register_champion(models_dir: Path, *, seed: int = 0, preset: str = "default") -> str:
    """Train a small real model on a short simulated history (``preset`` default or handbook: the published
    scenarios only), register it under ``models_dir`` and make it the champion; returns its version. Seconds, not
    minutes: for tests that need a worker with a model."""
    from datetime import date

    import polars as pl

    from fraudpipe.settings import TrainingSettings
    from fraudpipe.simulator.config import default, handbook
    from fraudpipe.simulator.generate import simulate
    from models.dataset import History
    from models.protocol import Windows
    from models.registry import Registry
    from models.train import train_version

    make = {"default": default, "handbook": handbook}[preset]
    _, days = simulate(make(days=24, customers=600, terminals=1_200, seed=seed), b"factories-tokenization-key-0000")
    run = list(days)
    history = History(pl.concat([d.transactions for d in run]), pl.concat([d.labels for d in run]), 0)
    trained = train_version(
        history,
        Windows(date(2018, 4, 3), 14, 3, 4),
        TrainingSettings(rounds=30, learning_rate=0.1, min_data_in_leaf=20, seed=seed),
    )
    registry = Registry(models_dir)
    version = registry.register(trained.fitted.booster, trained.fields).version
    registry.promote(version, why="test champion")
    return version


def simulated_folder(out: Path, *, days: int, customers: int, terminals: int, seed: int, key: bytes) -> Path:
    """A default-preset simulation written to ``out`` as ``fraudpipe simulate`` writes it; returns ``out``."""
    from fraudpipe.simulator.config import default
    from fraudpipe.simulator.generate import simulate
    from fraudpipe.simulator.output import write_simulation

    config = default(days=days, customers=customers, terminals=terminals, seed=seed)
    population, run = simulate(config, key)
    write_simulation(out, config, population, run, overwrite=True)
    return out
