"""What the simulator generates: population sizes, fraud scenarios, label delays, a drift campaign. Frozen values.

Two presets:

- :func:`handbook` reproduces the published simulator (Le Borgne et al., 2022; ../shared/REFERENCE.md): 5,000
  customers, 10,000 terminals, 183 days from 2018-04-01, card-present only, scenarios 1-3 with the book's rates,
  every fraud known exactly 7 days later (the book's assumption), no false chargebacks.
- :func:`default` adds what a payments team sees: e-commerce with devices, card testing, account takeover,
  impossible travel, realistic label delays (analyst verdicts in hours, chargebacks in days), unreported frauds and
  false chargebacks.

Units: amounts in major currency units, times in seconds unless the name says days or hours, rates per day.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "AccountTakeover",
    "AmountThreshold",
    "CardTesting",
    "CompromisedCards",
    "CompromisedTerminals",
    "DriftCampaign",
    "ImpossibleTravel",
    "LabelDelays",
    "Scenarios",
    "SimulationConfig",
    "default",
    "handbook",
]

Rate = Annotated[float, Field(ge=0.0)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AmountThreshold(_Frozen):
    """Scenario 1: every genuine payment above ``threshold`` is fraud."""

    enabled: bool = True
    threshold: Annotated[float, Field(gt=0)] = 220.0


class CompromisedTerminals(_Frozen):
    """Scenario 2: each day ``per_day`` terminals are compromised; all their payments for ``days`` are fraud."""

    enabled: bool = True
    per_day: Rate = 2.0
    days: Annotated[int, Field(ge=1)] = 28


class CompromisedCards(_Frozen):
    """Scenario 3: each day ``per_day`` cards leak; for ``days``, a ``share`` of their payments is fraud with the
    amount multiplied by ``amount_factor``."""

    enabled: bool = True
    per_day: Rate = 3.0
    days: Annotated[int, Field(ge=1)] = 14
    share: Share = 1 / 3
    amount_factor: Annotated[float, Field(gt=0)] = 5.0


class CardTesting(_Frozen):
    """Scenario 4: a burst of ``min_tests``-``max_tests`` tiny e-commerce payments at merchants new to the card,
    seconds apart, then one large payment within minutes. ``per_day`` cards are tested each day."""

    enabled: bool = True
    per_day: Rate = 2.0
    min_tests: Annotated[int, Field(ge=1, le=100)] = 3
    max_tests: Annotated[int, Field(ge=1, le=100)] = 8
    tiny_amount: tuple[float, float] = (0.5, 3.0)
    large_amount: tuple[float, float] = (300.0, 1_500.0)

    @model_validator(mode="after")
    def _ordered(self) -> CardTesting:
        if self.min_tests > self.max_tests:
            raise ValueError("card_testing.min_tests must not exceed max_tests")
        return self


class AccountTakeover(_Frozen):
    """Scenario 5: e-commerce payments from a device the customer never used, in a foreign country, for a high
    amount (``amount_factor`` range times the customer's mean, at least ``min_amount``)."""

    enabled: bool = True
    per_day: Rate = 2.0
    max_payments: Annotated[int, Field(ge=1, le=20)] = 3
    amount_factor: tuple[float, float] = (5.0, 15.0)
    min_amount: Annotated[float, Field(gt=0)] = 250.0


class ImpossibleTravel(_Frozen):
    """Scenario 6: a card-present payment at a terminal at least ``min_distance_km`` away from the card's previous
    card-present payment, ``gap_minutes`` later: faster than any traveller."""

    enabled: bool = True
    per_day: Rate = 2.0
    min_distance_km: Annotated[float, Field(gt=0)] = 400.0
    gap_minutes: tuple[float, float] = (5.0, 20.0)


class DriftCampaign(_Frozen):
    """A new card-testing campaign from ``start_day`` (0-based) at ``merchants`` merchants never seen before, hitting
    ``cards_per_day`` cards a day. Off unless ``start_day`` is set."""

    start_day: Annotated[int, Field(ge=0)] | None = None
    merchants: Annotated[int, Field(ge=1)] = 5
    cards_per_day: Rate = 15.0


class Reissue(_Frozen):
    """A card with a confirmed fraud is blocked the day its first fraud label is known; from the next day its
    customer pays with a new card (new PAN, new token), and the fraud scenarios that held the old card end. The
    fraudsters keep trying the blocked card now and then (card testing: ``retry_per_day`` of the blocked cards a
    day try 1 to ``retry_tests`` tiny online payments, for ``retry_days`` days after the block)."""

    enabled: bool = True
    retry_per_day: Share = 0.05
    retry_tests: Annotated[int, Field(ge=1)] = 2
    retry_days: Annotated[int, Field(ge=0)] = 7


class Scenarios(_Frozen):
    """Every fraud scenario; each can be switched off and has its own rate."""

    amount_threshold: AmountThreshold = AmountThreshold()
    compromised_terminals: CompromisedTerminals = CompromisedTerminals()
    compromised_cards: CompromisedCards = CompromisedCards()
    card_testing: CardTesting = CardTesting()
    account_takeover: AccountTakeover = AccountTakeover()
    impossible_travel: ImpossibleTravel = ImpossibleTravel()


class LabelDelays(_Frozen):
    """What the bank learns, and when.

    Each reported fraud is an analyst verdict with probability ``analyst_share`` (delay ~ exponential, mean
    ``analyst_mean_hours``) or a chargeback (delay ~ log-normal, median ``chargeback_median_days``, sigma
    ``chargeback_sigma``, clipped to ``chargeback_max_days``). ``fixed_days`` replaces both with a constant delay.
    ``unreported_share`` of frauds never get a label; ``false_chargeback_share`` of genuine payments get a
    chargeback, and ``overturn_share`` of those are later overturned by an analyst (``label_version`` 2).
    """

    fixed_days: Annotated[float, Field(gt=0)] | None = None
    analyst_share: Share = 0.3
    analyst_mean_hours: Annotated[float, Field(gt=0)] = 8.0
    chargeback_median_days: Annotated[float, Field(gt=0)] = 10.0
    chargeback_sigma: Annotated[float, Field(ge=0)] = 0.6
    chargeback_max_days: Annotated[float, Field(gt=0)] = 90.0
    unreported_share: Share = 0.1
    false_chargeback_share: Share = 0.0003
    overturn_share: Share = 0.5
    overturn_mean_days: Annotated[float, Field(gt=0)] = 5.0


class SimulationConfig(_Frozen):
    """One simulation run. Deterministic: the same config (seed included) gives byte-identical output."""

    preset: Literal["handbook", "default", "custom"] = "default"
    seed: Annotated[int, Field(ge=0)] = 0
    start_date: date = date(2018, 4, 1)
    days: Annotated[int, Field(ge=1, le=3_660)] = 183
    customers: Annotated[int, Field(ge=1)] = 5_000
    terminals: Annotated[int, Field(ge=1)] = 10_000
    radius: Annotated[float, Field(gt=0)] = 5.0
    currency: str = "EUR"
    ecommerce_share: tuple[Share, Share] = (0.0, 0.3)
    online_merchants: Annotated[int, Field(ge=1)] = 200
    scenarios: Scenarios = Scenarios()
    labels: LabelDelays = LabelDelays()
    drift: DriftCampaign = DriftCampaign()
    reissue: Reissue = Reissue()


def handbook(**overrides: object) -> SimulationConfig:
    """The published simulator: scenarios 1-3 only, card-present only, every fraud known 7 days later, no card ever
    reissued (its evaluation removes known-compromised cards instead)."""
    scenarios = Scenarios(
        card_testing=CardTesting(enabled=False),
        account_takeover=AccountTakeover(enabled=False),
        impossible_travel=ImpossibleTravel(enabled=False),
    )
    labels = LabelDelays(fixed_days=7.0, unreported_share=0.0, false_chargeback_share=0.0, analyst_share=0.0)
    base = SimulationConfig(preset="handbook", ecommerce_share=(0.0, 0.0), scenarios=scenarios, labels=labels,
                            reissue=Reissue(enabled=False))  # fmt: skip
    return SimulationConfig.model_validate({**base.model_dump(), **overrides})


def default(**overrides: object) -> SimulationConfig:
    """Every scenario, e-commerce, realistic label delays, blocked cards reissued."""
    return SimulationConfig.model_validate({"preset": "default", **overrides})
