"""Day-by-day generation of transactions (with ground truth) and the labels the bank will receive. Pure.

:func:`simulate` yields one :class:`Day` at a time, so a run of any length streams to disk without holding more
than a day in memory. Each day has its own random generator derived from (seed, day): output is a function of the
config alone.

Per day (handbook process): each customer makes ``Poisson(tx_per_day)`` payments at ``Normal(noon, 20,000 s)``
(draws outside the day dropped) of ``Normal(mean, mean / 2)`` (negative draws redrawn ``Uniform(0, 2 mean)``),
at a terminal within the radius chosen uniformly — or, with the customer's e-commerce share, online at one of their
favourite merchants from one of their devices. Then, in the handbook's order, scenarios 1-3 turn some of these into
fraud; scenarios 4-6 and the drift campaign add fraudulent payments of their own.

With ``config.reissue`` (the default preset), a card is blocked the day its first fraud label is known; from the next
day its customer pays with a new card, and fraudsters now and then try the blocked one (``blocked_card_testing``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from numpy.typing import NDArray

from fraudpipe.contracts import Transaction
from fraudpipe.simulator.config import SimulationConfig
from fraudpipe.simulator.population import GRID_COUNTRIES, Population, Reissued, build_population, reissue_card

__all__ = ["SCENARIOS", "TRANSACTION_COLUMNS", "Day", "haversine_km", "simulate"]

SCENARIOS = (
    None,
    "amount_threshold",
    "compromised_terminal",
    "compromised_card",
    "card_testing",
    "account_takeover",
    "impossible_travel",
    "campaign_card_testing",
    "blocked_card_testing",
)
"""Scenario names by code; code 0 (None) is a genuine payment."""
TRANSACTION_COLUMNS = (
    *(name for name in Transaction.model_fields if name != "schema_version"),
    "is_fraud",
    "fraud_scenario",
)
"""The contract's fields in order, then the ground truth (never a model input)."""
LABEL_COLUMNS = (
    "txn_id",
    "card_token",
    "event_time",
    "known_at",
    "is_fraud",
    "source",
    "label_version",
    "terminal_id",
    "merchant_id",
)
_SCENARIO_NAMES = pl.Series([name or "" for name in SCENARIOS], dtype=pl.String)
_DAY_S = 86_400.0
_CARD_PRESENT, _ONLINE = 0, 1


@dataclass(frozen=True, slots=True)
class Day:
    """One simulated day: ``transactions`` sorted by event time (TRANSACTION_COLUMNS) and the ``labels`` of those
    transactions (LABEL_COLUMNS; their ``known_at`` may be days later)."""

    index: int
    date: datetime
    transactions: pl.DataFrame
    labels: pl.DataFrame


@dataclass
class _Rows:
    """Column arrays of a day's payments while they are being built (one entry per payment)."""

    customer: NDArray[np.int64]
    seconds: NDArray[np.float64]
    amount: NDArray[np.float64]
    kind: NDArray[np.int8]  # _CARD_PRESENT or _ONLINE
    terminal: NDArray[np.int64]  # -1 when online
    online: NDArray[np.int64]  # -1 when card-present; >= online_merchants for campaign merchants
    device: NDArray[np.int64]  # >= 0 the customer's own (customer * 2 + k), < -1 a fraudster's, -1 none
    scenario: NDArray[np.int8]
    card: NDArray[np.int64]  # the card paying (a card number), -1: the customer's card in use that day

    def extend(self, other: _Rows) -> None:
        for name in _Rows.__dataclass_fields__:
            setattr(self, name, np.concatenate([getattr(self, name), getattr(other, name)]))


@dataclass
class _State:
    """What carries over from day to day: compromised terminals and cards with the day their compromise ends."""

    terminals_until: dict[int, int] = field(default_factory=dict)
    cards_until: dict[int, int] = field(default_factory=dict)
    next_txn: int = 0
    next_fraud_device: int = 2
    card_of: NDArray[np.int64] = field(default_factory=lambda: np.array([], np.int64))
    """Each customer's card in use (a _Cards number)."""
    known: dict[int, int] = field(default_factory=dict)
    """Cards with a fraud label, by card number: the day the first one is known (the card is blocked that day)."""
    blocked: dict[int, int] = field(default_factory=dict)
    """Blocked cards replaced by a new one, by card number: the day the block was known."""


def haversine_km(lat1: NDArray[np.float64], lon1: NDArray[np.float64], lat2: NDArray[np.float64],
                 lon2: NDArray[np.float64]) -> NDArray[np.float64]:  # fmt: skip
    """Great-circle distance in km between arrays of points given in degrees."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dlat, dlon = p2 - p1, np.radians(lon2 - lon1)
    a = np.sin(dlat / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlon / 2) ** 2
    return np.asarray(2 * 6_371.0 * np.arcsin(np.sqrt(a)), dtype=np.float64)


def _count(rng: np.random.Generator, rate: float) -> int:
    """An integer count with mean ``rate``: its whole part always, its fraction by chance."""
    whole = int(rate)
    return whole + int(rng.random() < rate - whole)


def _empty() -> _Rows:
    i64, f64 = np.array([], np.int64), np.array([], np.float64)
    return _Rows(i64, f64, f64, np.array([], np.int8), i64, i64, i64, np.array([], np.int8), i64)


def _genuine(pop: Population, rng: np.random.Generator) -> _Rows:
    n_available = np.diff(pop.available_offsets)
    counts = rng.poisson(pop.tx_per_day)
    counts[(n_available == 0) & (pop.ecommerce_share == 0)] = 0
    customer = np.repeat(np.arange(pop.customers, dtype=np.int64), counts)
    seconds = rng.normal(_DAY_S / 2, 20_000, len(customer))
    keep = (seconds >= 0) & (seconds < _DAY_S)
    customer, seconds = customer[keep], np.floor(seconds[keep])
    n = len(customer)

    mean = pop.mean_amount[customer]
    amount = rng.normal(mean, pop.std_amount[customer])
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    amount = np.round(amount, 2)  # 0.00 happens, as in the published data (an account verification)

    online = (rng.random(n) < pop.ecommerce_share[customer]) | (n_available[customer] == 0)
    pick = pop.available_offsets[customer] + np.floor(rng.random(n) * n_available[customer]).astype(np.int64)
    terminal = np.where(online, -1, pop.available_terminals[np.minimum(pick, len(pop.available_terminals) - 1)])
    favourite = pop.favourites[customer, rng.integers(0, pop.favourites.shape[1], n)]
    device = customer * 2 + np.floor(rng.random(n) * pop.devices[customer]).astype(np.int64)
    return _Rows(
        customer=customer,
        seconds=seconds,
        amount=amount,
        kind=online.astype(np.int8),
        terminal=terminal,
        online=np.where(online, favourite, -1),
        device=np.where(online, device, -1),
        scenario=np.zeros(n, np.int8),
        card=np.full(n, -1, np.int64),
    )


def _handbook_scenarios(config: SimulationConfig, day: int, rows: _Rows, state: _State, pop: Population,
                        rng: np.random.Generator) -> None:  # fmt: skip
    """Scenarios 1-3 on the day's genuine payments, in the handbook's order (a later one overrides)."""
    s = config.scenarios
    if s.amount_threshold.enabled:
        rows.scenario[rows.amount > s.amount_threshold.threshold] = 1
    if s.compromised_terminals.enabled:
        for terminal in rng.integers(0, pop.terminals, _count(rng, s.compromised_terminals.per_day)):
            state.terminals_until[int(terminal)] = day + s.compromised_terminals.days
        active = np.array([t for t, until in state.terminals_until.items() if until > day], dtype=np.int64)
        rows.scenario[np.isin(rows.terminal, active) & (rows.terminal >= 0)] = 2
    if s.compromised_cards.enabled:
        for customer in rng.integers(0, pop.customers, _count(rng, s.compromised_cards.per_day)):
            state.cards_until[int(customer)] = day + s.compromised_cards.days
        active = np.array([c for c, until in state.cards_until.items() if until > day], dtype=np.int64)
        hit = np.isin(rows.customer, active) & (rng.random(len(rows.customer)) < s.compromised_cards.share)
        rows.amount[hit] = np.round(rows.amount[hit] * s.compromised_cards.amount_factor, 2)
        rows.scenario[hit] = 3


def _fraud_device(state: _State) -> int:
    state.next_fraud_device += 1
    return -state.next_fraud_device


def _online_fraud(customer: int, seconds: NDArray[np.float64], amounts: NDArray[np.float64],
                  merchants: NDArray[np.int64], device: int, code: int) -> _Rows:  # fmt: skip
    """Fraudulent online payments of one card from one fraudster device, labelled with scenario ``code``."""
    n = len(seconds)
    return _Rows(
        customer=np.full(n, customer, np.int64),
        seconds=seconds,
        amount=amounts,
        kind=np.full(n, _ONLINE, np.int8),
        terminal=np.full(n, -1, np.int64),
        online=merchants.astype(np.int64),
        device=np.full(n, device, np.int64),
        scenario=np.full(n, code, np.int8),
        card=np.full(n, -1, np.int64),
    )


def _bursts(pop: Population, rng: np.random.Generator, state: _State, cards: int, merchants: NDArray[np.int64],
            config_tests: tuple[int, int], tiny: tuple[float, float], large: tuple[float, float],
            code: int) -> _Rows:  # fmt: skip
    """Card-testing bursts: tiny online payments seconds apart at ``merchants`` new to the card, then a large one."""
    rows = _empty()
    for _ in range(cards):
        customer = int(rng.integers(0, pop.customers))
        tests = int(rng.integers(config_tests[0], config_tests[1] + 1))
        gaps = np.concatenate([rng.uniform(5, 90, tests), rng.uniform(60, 600, 1)])
        start = rng.uniform(0, _DAY_S - gaps.sum() - 1)
        seconds = np.floor(start + np.cumsum(gaps))
        amounts = np.round(np.concatenate([rng.uniform(*tiny, tests), rng.uniform(*large, 1)]), 2)
        where = rng.choice(merchants, size=tests + 1, replace=len(merchants) < tests + 1)
        rows.extend(_online_fraud(customer, seconds, amounts, where, _fraud_device(state), code))
    return rows


def _account_takeover(config: SimulationConfig, pop: Population, rng: np.random.Generator, state: _State) -> _Rows:
    ato = config.scenarios.account_takeover
    foreign = np.flatnonzero(pop.online_is_foreign)
    rows = _empty()
    if not ato.enabled or len(foreign) == 0:
        return rows
    for _ in range(_count(rng, ato.per_day)):
        customer = int(rng.integers(0, pop.customers))
        n = int(rng.integers(1, ato.max_payments + 1))
        offsets = np.cumsum(rng.uniform(60, 1_200, n))
        seconds = np.floor(rng.uniform(0, _DAY_S - offsets[-1] - 1) + offsets)
        amounts = np.round(
            np.maximum(rng.uniform(*ato.amount_factor, n) * pop.mean_amount[customer], ato.min_amount), 2
        )
        rows.extend(_online_fraud(customer, seconds, amounts, rng.choice(foreign, size=n), _fraud_device(state), 5))
    return rows


def _impossible_travel(config: SimulationConfig, pop: Population, rng: np.random.Generator, genuine: _Rows) -> _Rows:
    travel = config.scenarios.impossible_travel
    rows = _empty()
    present = np.flatnonzero(genuine.kind == _CARD_PRESENT)
    if not travel.enabled or len(present) == 0:
        return rows
    lat, lon = pop.terminal_latlon[:, 0], pop.terminal_latlon[:, 1]
    travelled: set[int] = set()
    for anchor in rng.choice(present, size=min(_count(rng, travel.per_day), len(present)), replace=False):
        customer, here = int(genuine.customer[anchor]), int(genuine.terminal[anchor])
        if customer in travelled:
            continue
        travelled.add(customer)
        at = genuine.seconds[anchor] + np.floor(rng.uniform(*travel.gap_minutes) * 60)
        same_card = (genuine.customer == customer) & (genuine.kind == _CARD_PRESENT)
        between = same_card & (genuine.seconds > genuine.seconds[anchor]) & (genuine.seconds <= at)
        if at >= _DAY_S or between.any():
            continue  # the injected payment must directly follow its anchor on this card, within the day
        far = np.flatnonzero(haversine_km(lat[here], lon[here], lat, lon) >= travel.min_distance_km)
        if len(far) == 0:
            continue
        rows.extend(
            _Rows(
                customer=np.array([customer], np.int64),
                seconds=np.array([at]),
                amount=np.round(rng.uniform(50, 500, 1), 2),
                kind=np.array([_CARD_PRESENT], np.int8),
                terminal=np.array([int(rng.choice(far))], np.int64),
                online=np.array([-1], np.int64),
                device=np.array([-1], np.int64),
                scenario=np.array([6], np.int8),
                card=np.array([-1], np.int64),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class _Names:
    """String columns of every merchant-like entity, campaign merchants appended after the online ones."""

    online_ids: pl.Series
    online_names: pl.Series
    online_mccs: pl.Series
    online_country: pl.Series


def _names(config: SimulationConfig, pop: Population) -> _Names:
    k = config.drift.merchants if config.drift.start_day is not None else 0
    campaign_ids = "CM" + pl.Series(np.arange(k)).cast(pl.String).str.zfill(4)
    return _Names(
        online_ids=pl.concat([pop.online_ids, campaign_ids]),
        online_names=pl.concat([pop.online_names, "Digital goods " + campaign_ids]),
        online_mccs=pl.concat([pop.online_mccs, pl.Series(["5818"] * k, dtype=pl.String)]),
        online_country=pl.concat([pop.online_country, pl.Series(["DE"] * k, dtype=pl.String)]),
    )


def _take(values: pl.Series, index: NDArray[np.int64]) -> pl.Series:
    """``values[index]``, null where ``index`` < 0."""
    gathered = values.gather(np.maximum(index, 0))
    return pl.select(pl.when(pl.lit(pl.Series(index >= 0))).then(gathered).otherwise(None)).to_series()


def _choose(condition: NDArray[np.bool_], when_true: pl.Series, when_false: pl.Series) -> pl.Series:
    """Element-wise ``when_true`` where ``condition`` holds, else ``when_false``."""
    return pl.select(pl.when(pl.lit(pl.Series(condition))).then(when_true).otherwise(when_false)).to_series()


def _frame(config: SimulationConfig, pop: Population, names: _Names, rows: _Rows, cards: _Cards, day_start: datetime,
           first_txn: int) -> pl.DataFrame:  # fmt: skip
    order = np.lexsort((np.arange(len(rows.seconds)), rows.seconds))
    r = {name: getattr(rows, name)[order] for name in _Rows.__dataclass_fields__}
    n = len(order)
    present = r["kind"] == _CARD_PRESENT
    terminal, online = r["terminal"], r["online"]
    merchant = np.where(present, pop.terminal_merchant[np.maximum(terminal, 0)], -1)
    latlon = pop.terminal_latlon[np.maximum(terminal, 0)]
    grid_country = pl.Series(np.array(GRID_COUNTRIES)[pop.terminal_country[np.maximum(terminal, 0)]])
    device = r["device"]
    device_ids = pl.Series(
        np.where(device >= 0, device // 2, -device).astype(np.int64)
    ).cast(pl.String).str.zfill(7)  # fmt: skip
    device_ids = pl.select(
        pl.when(pl.lit(pl.Series(device >= 0)))
        .then("D" + device_ids + "-" + pl.lit(pl.Series(device % 2).cast(pl.String)))
        .when(pl.lit(pl.Series(device < -1)))
        .then("X" + device_ids)
        .otherwise(None)
    ).to_series()
    micros = int(day_start.timestamp()) * 1_000_000 + (r["seconds"] * 1_000_000).astype(np.int64)
    return pl.DataFrame(
        {
            "txn_id": "TX" + pl.Series(np.arange(first_txn, first_txn + n)).cast(pl.String).str.zfill(10),
            "event_time": pl.Series(micros).cast(pl.Datetime("us", "UTC")),
            "card_token": cards.tokens.gather(r["card"]),
            "card_bin": cards.bins.gather(r["card"]),
            "card_last4": cards.last4.gather(r["card"]),
            "amount": r["amount"],
            "currency": pl.Series([config.currency]).gather(np.zeros(n, np.int64)),
            "terminal_id": _take(pop.terminal_ids, terminal),
            "merchant_id": _choose(present, _take(pop.merchant_ids, merchant), _take(names.online_ids, online)),
            "merchant_name": _choose(present, _take(pop.merchant_names, merchant), _take(names.online_names, online)),
            "mcc": _choose(present, _take(pop.merchant_mccs, merchant), _take(names.online_mccs, online)),
            "customer_id": pop.customer_ids.gather(r["customer"]),
            "device_id": device_ids,
            "channel": pl.Series(np.where(present, "card_present", "ecommerce")),
            "country": _choose(present, grid_country, _take(names.online_country, online)),
            "lat": pl.Series(np.where(present, np.round(latlon[:, 0], 5), np.nan)).fill_nan(None),
            "lon": pl.Series(np.where(present, np.round(latlon[:, 1], 5), np.nan)).fill_nan(None),
            "is_fraud": pl.Series(r["scenario"] > 0),
            "fraud_scenario": _take(_SCENARIO_NAMES, np.where(r["scenario"] > 0, r["scenario"], -1)),
        }
    )


def _labels(config: SimulationConfig, transactions: pl.DataFrame, rng: np.random.Generator) -> pl.DataFrame:
    cfg = config.labels
    fraud = transactions.get_column("is_fraud").to_numpy()
    n = len(fraud)
    reported = fraud & (rng.random(n) >= cfg.unreported_share)
    analyst = rng.random(n) < cfg.analyst_share
    if cfg.fixed_days is not None:
        delay_s = np.full(n, cfg.fixed_days * _DAY_S)
        analyst[:] = False
    else:
        analyst_s = np.clip(rng.exponential(cfg.analyst_mean_hours * 3_600, n), 600, 7 * _DAY_S)
        chargeback_days = rng.lognormal(np.log(cfg.chargeback_median_days), cfg.chargeback_sigma, n)
        chargeback_s = np.clip(chargeback_days, 1, cfg.chargeback_max_days) * _DAY_S
        delay_s = np.where(analyst, analyst_s, chargeback_s)
    false_chargeback = ~fraud & (rng.random(n) < cfg.false_chargeback_share)
    overturned = false_chargeback & (rng.random(n) < cfg.overturn_share)
    overturn_s = rng.exponential(cfg.overturn_mean_days * _DAY_S, n)
    if cfg.fixed_days is None:
        delay_s = np.where(false_chargeback, chargeback_s, delay_s)

    base = transactions.select("txn_id", "card_token", "event_time", "terminal_id", "merchant_id")
    first_mask = reported | false_chargeback
    first = base.filter(pl.Series(first_mask)).with_columns(
        known_at=pl.col("event_time") + pl.Series((delay_s[first_mask] * 1e6).astype(np.int64)).cast(pl.Duration("us")),
        is_fraud=pl.lit(True),
        source=pl.Series(np.where(analyst[first_mask] & ~false_chargeback[first_mask], "analyst", "chargeback")),
        label_version=pl.lit(1, dtype=pl.Int32),
    )
    second = base.filter(pl.Series(overturned)).with_columns(
        known_at=pl.col("event_time")
        + pl.Series(((delay_s[overturned] + overturn_s[overturned]) * 1e6).astype(np.int64)).cast(pl.Duration("us")),
        is_fraud=pl.lit(False),
        source=pl.lit("analyst"),
        label_version=pl.lit(2, dtype=pl.Int32),
    )
    return pl.concat([first, second]).select(LABEL_COLUMNS).sort("known_at", "txn_id", "label_version")


@dataclass
class _Cards:
    """Every card so far, by number: the population's (number = customer), then the reissued ones in order."""

    tokens: pl.Series
    bins: pl.Series
    last4: pl.Series
    number: dict[str, int]

    @classmethod
    def of(cls, pop: Population) -> _Cards:
        tokens = pop.card_tokens
        return cls(tokens, pop.card_bins, pop.card_last4, dict(zip(tokens.to_list(), range(len(tokens)), strict=True)))

    def add(self, card: Reissued) -> int:
        number = len(self.tokens)
        self.tokens = pl.concat([self.tokens, pl.Series([card.token])])
        self.bins = pl.concat([self.bins, pl.Series([card.bin])])
        self.last4 = pl.concat([self.last4, pl.Series([card.last4])])
        self.number[card.token] = number
        return number


def _reissue(config: SimulationConfig, day: int, state: _State, pop: Population, cards: _Cards, key: bytes) -> None:
    """Give a new card to each customer whose card in use was blocked before ``day`` (its fraud known), ending the
    card's compromise (scenario 3 follows the customer's card)."""
    for card, known in sorted(state.known.items()):
        if known >= day or card in state.blocked:
            continue
        state.blocked[card] = known
        customer = card if card < pop.customers else pop.reissued[card - pop.customers].customer
        if state.card_of[customer] != card:
            continue  # an earlier card of the customer's: replaced already
        generation = sum(1 for r in pop.reissued if r.customer == customer) + 1
        ref = reissue_card(config.seed, customer, generation, key)
        issued = Reissued(customer, day, ref.token, ref.bin, ref.last4, str(cards.tokens[card]))
        pop.reissued.append(issued)
        state.card_of[customer] = cards.add(issued)
        state.cards_until.pop(customer, None)


def _retries(config: SimulationConfig, day: int, state: _State, pop: Population,
             rng: np.random.Generator) -> _Rows:  # fmt: skip
    """Fraudsters trying blocked cards again: a few tiny online payments (card testing) on some of the cards
    blocked in the last ``retry_days``."""
    again = config.reissue
    rows = _empty()
    for card, known in sorted(state.blocked.items()):
        if day - known > again.retry_days or rng.random() >= again.retry_per_day:
            continue
        tests = int(rng.integers(1, again.retry_tests + 1))
        seconds = np.sort(np.floor(rng.uniform(0, _DAY_S, tests)))
        amounts = np.round(rng.uniform(*config.scenarios.card_testing.tiny_amount, tests), 2)
        where = rng.choice(pop.testing_pool, size=tests)
        customer = card if card < pop.customers else pop.reissued[card - pop.customers].customer
        tried = _online_fraud(customer, seconds, amounts, where, _fraud_device(state), 8)
        tried.card[:] = card
        rows.extend(tried)
    return rows


def _blocks(labels: pl.DataFrame, cards: _Cards, start: datetime, state: _State) -> None:
    """Note the day each card's first fraud label becomes known (the day it is blocked)."""
    frauds = labels.filter(pl.col("is_fraud")).group_by("card_token").agg(pl.col("known_at").min())
    for token, known_at in frauds.iter_rows():
        card, day = cards.number[token], (known_at - start) // timedelta(days=1)
        if card not in state.known or day < state.known[card]:
            state.known[card] = day


def simulate(config: SimulationConfig, key: bytes) -> tuple[Population, Iterator[Day]]:
    """The population of ``config`` (cards tokenized with ``key``) and an iterator over its days. With
    ``config.reissue``, the population's ``reissued`` cards grow as the days are drawn."""
    population = build_population(config, np.random.default_rng([config.seed, 0]), key)
    return population, _days(config, population, key)


def _days(config: SimulationConfig, pop: Population, key: bytes) -> Iterator[Day]:
    state = _State(card_of=np.arange(pop.customers, dtype=np.int64))
    cards = _Cards.of(pop)
    names = _names(config, pop)
    start = datetime(config.start_date.year, config.start_date.month, config.start_date.day, tzinfo=UTC)
    campaign = np.arange(config.online_merchants, config.online_merchants + config.drift.merchants, dtype=np.int64)
    for day in range(config.days):
        rng = np.random.default_rng([config.seed, 1, day])
        if config.reissue.enabled:
            _reissue(config, day, state, pop, cards, key)
        rows = _genuine(pop, rng)
        _handbook_scenarios(config, day, rows, state, pop, rng)
        genuine = _Rows(**{name: getattr(rows, name).copy() for name in _Rows.__dataclass_fields__})
        testing = config.scenarios.card_testing
        if testing.enabled:
            rows.extend(
                _bursts(pop, rng, state, _count(rng, testing.per_day), pop.testing_pool,
                        (testing.min_tests, testing.max_tests), testing.tiny_amount, testing.large_amount, 4)
            )  # fmt: skip
        rows.extend(_account_takeover(config, pop, rng, state))
        rows.extend(_impossible_travel(config, pop, rng, genuine))
        if config.drift.start_day is not None and day >= config.drift.start_day:
            rows.extend(
                _bursts(pop, rng, state, _count(rng, config.drift.cards_per_day), campaign,
                        (testing.min_tests, testing.max_tests), testing.tiny_amount, testing.large_amount, 7)
            )  # fmt: skip
        if config.reissue.enabled:  # its own generator: the other draws stay those of a run without reissue
            rows.extend(_retries(config, day, state, pop, np.random.default_rng([config.seed, 4, day])))
        rows.card = np.where(rows.card >= 0, rows.card, state.card_of[rows.customer])
        day_start = start + timedelta(days=day)
        transactions = _frame(config, pop, names, rows, cards, day_start, state.next_txn)
        state.next_txn += transactions.height
        labels = _labels(config, transactions, rng)
        if config.reissue.enabled:
            _blocks(labels, cards, start, state)
        yield Day(day, day_start, transactions, labels)
