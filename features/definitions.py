"""The feature contract: one ordered list, shared by the online store, the offline builder, training and every
model manifest. A model whose manifest lists other names, or the same names in another order, is refused.

Names are ``<entity>_<aggregate>_<window>``. Windows are *bucketed*, the same way online and offline (see
:mod:`features.windows`): ``1h`` is the current 5-minute bucket and the 11 before it, ``24h`` the current hour and
the 23 before it, ``1d`` / ``7d`` / ``30d`` the current UTC day and the 0 / 6 / 29 before it. Card windows include
the transaction being scored (the handbook's convention); ``*_prev_*`` values exclude it.

Missing values are explicit ``None`` (NaN for the model): a feature that needs an optional field the transaction
lacks (device, geo, channel, terminal, merchant), or history the card does not have yet, is missing — never 0.
Label-derived features use only labels received before the decision (online: what the label agent has applied;
offline: labels whose ``known_at`` is strictly before the transaction's event time, so a payment never sees its
own label, even with no delay). Terminal and merchant fraud rates
look at the window ending ``LABEL_DELAY_DAYS`` (7) before the payment's day, as the handbook does: the most recent
payments cannot be labelled yet, and counting them would dilute the rate toward zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["FEATURES", "FEATURE_NAMES", "FeatureDef", "feature_index"]

Entity = Literal["transaction", "card", "terminal", "merchant"]


@dataclass(frozen=True, slots=True)
class FeatureDef:
    """One feature: its name, the entity it describes, its window (or None), what it means and when it is missing."""

    name: str
    entity: Entity
    window: str | None
    meaning: str
    missing: str = "never"


def _velocity() -> list[FeatureDef]:
    out = []
    for window in ("1h", "24h", "7d", "30d"):
        out += [
            FeatureDef(f"card_count_{window}", "card", window, f"payments of the card in {window}, this one included"),
            FeatureDef(f"card_sum_{window}", "card", window, f"amount paid by the card in {window} (major units)"),
            FeatureDef(f"card_mean_{window}", "card", window, f"mean amount of the card in {window}"),
            FeatureDef(
                f"card_std_{window}",
                "card",
                window,
                f"std of amounts in {window} (population)",
                "fewer than 2 payments",
            ),
        ]
    return out


FEATURES: tuple[FeatureDef, ...] = (
    FeatureDef("amount", "transaction", None, "amount of this payment, major units"),
    FeatureDef("hour_of_day", "transaction", None, "UTC hour of the event, 0-23"),
    FeatureDef("is_weekend", "transaction", None, "1 on Saturday and Sunday (UTC), else 0"),
    FeatureDef("is_night", "transaction", None, "1 when the UTC hour is <= 6, else 0"),
    FeatureDef("is_ecommerce", "transaction", None, "1 for e-commerce / MOTO, 0 card-present or ATM", "no channel"),
    *_velocity(),
    FeatureDef(
        "card_amount_ratio_30d",
        "card",
        "30d",
        "amount / the card's mean over 30d before this payment",
        "no earlier payment in 30d",
    ),
    FeatureDef(
        "card_amount_zscore_30d",
        "card",
        "30d",
        "(amount - mean) / std of the card's 30d before this payment",
        "fewer than 2 earlier payments in 30d, or std 0",
    ),
    FeatureDef(
        "card_seconds_since_last",
        "card",
        None,
        "seconds since the card's previous payment (0 if that one is later)",
        "first payment of the card",
    ),
    FeatureDef("card_distinct_terminals_24h", "card", "24h", "terminals used by the card in 24h", "no terminal"),
    FeatureDef(
        "card_distinct_merchants_24h",
        "card",
        "24h",
        "merchants used by the card in 24h (a late payment: those also within a day of the card's latest before it)",
        "no merchant",
    ),
    FeatureDef(
        "card_distinct_countries_24h",
        "card",
        "24h",
        "countries the card paid in within 24h (a late payment: likewise)",
        "no country",
    ),
    FeatureDef(
        "card_geo_speed_kmh",
        "card",
        None,
        "km/h from the card's previous card-present payment to this one",
        "not card-present, no geo, or no earlier card-present payment",
    ),
    FeatureDef("card_new_device", "card", None, "1 if the card never used this device before", "no device"),
    FeatureDef("card_new_terminal", "card", None, "1 if the card never used this terminal before", "no terminal"),
    FeatureDef("card_fraud_count_30d", "card", "30d", "frauds on the card's payments of 30d known so far"),
    FeatureDef("terminal_count_1d", "terminal", "1d", "payments at the terminal today", "no terminal"),
    FeatureDef("terminal_count_7d", "terminal", "7d", "payments at the terminal in 7d", "no terminal"),
    FeatureDef("terminal_count_30d", "terminal", "30d", "payments at the terminal in 30d", "no terminal"),
    FeatureDef(
        "terminal_fraud_rate_1d",
        "terminal",
        "1d",
        "known frauds / payments at the terminal, the day 7d ago",
        "no terminal",
    ),
    FeatureDef(
        "terminal_fraud_rate_7d",
        "terminal",
        "7d",
        "known frauds / payments at the terminal, 7d ending 7d ago",
        "no terminal",
    ),
    FeatureDef(
        "terminal_fraud_rate_30d",
        "terminal",
        "30d",
        "known frauds / payments at the terminal, 30d ending 7d ago",
        "no terminal",
    ),
    FeatureDef("merchant_count_1d", "merchant", "1d", "payments at the merchant today", "no merchant"),
    FeatureDef("merchant_count_7d", "merchant", "7d", "payments at the merchant in 7d", "no merchant"),
    FeatureDef("merchant_count_30d", "merchant", "30d", "payments at the merchant in 30d", "no merchant"),
    FeatureDef(
        "merchant_fraud_rate_1d",
        "merchant",
        "1d",
        "known frauds / payments at the merchant, the day 7d ago",
        "no merchant",
    ),
    FeatureDef(
        "merchant_fraud_rate_7d",
        "merchant",
        "7d",
        "known frauds / payments at the merchant, 7d ending 7d ago",
        "no merchant",
    ),
    FeatureDef(
        "merchant_fraud_rate_30d",
        "merchant",
        "30d",
        "known frauds / payments at the merchant, 30d ending 7d ago",
        "no merchant",
    ),
)
"""Every feature, in the order models see them."""

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)


def feature_index() -> dict[str, int]:
    """Column of each feature in a feature matrix."""
    return {name: i for i, name in enumerate(FEATURE_NAMES)}
