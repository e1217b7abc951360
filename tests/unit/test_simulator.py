"""The transaction simulator: determinism, cards without PANs, valid contracts, each fraud scenario's signature,
label delays, the drift campaign, the files it writes and the ``fraudpipe simulate`` command.

Runs are small (hundreds of customers, weeks of days): each simulation test takes under a second, each command test
about two (a fresh interpreter). The full-size comparison with the published simulator is in
``tests/model/test_handbook_preset.py``. The last tests pin bugs found while writing them.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from fraudpipe.contracts import Label, Transaction
from fraudpipe.pan import contains_pan, is_pan, luhn_valid
from fraudpipe.simulator import config as sim_config
from fraudpipe.simulator.config import SimulationConfig
from fraudpipe.simulator.generate import TRANSACTION_COLUMNS, haversine_km, simulate
from fraudpipe.simulator.output import OutputExistsError, customers_frame, write_simulation
from fraudpipe.simulator.population import FOREIGN_COUNTRIES, GRID_COUNTRIES, TEST_BINS, Population, _pans

KEY = b"simulator-test-tokenization-key!"
TOKEN = re.compile(r"^tok_[0-9a-f]{32}$")
SCENARIO_NAMES = {
    "amount_threshold": "amount_threshold",
    "compromised_terminals": "compromised_terminal",
    "compromised_cards": "compromised_card",
    "card_testing": "card_testing",
    "account_takeover": "account_takeover",
    "impossible_travel": "impossible_travel",
}
"""Config field of each scenario -> its ``fraud_scenario`` value in the output."""
CONTRACT_DROPS = ("is_fraud", "fraud_scenario")


class Run:
    """A finished simulation held in memory: population, every transaction, every label."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        population, days = simulate(config, KEY)
        self.population: Population = population
        self.days = list(days)
        self.transactions = pl.concat([day.transactions for day in self.days])
        self.labels = pl.concat([day.labels for day in self.days])
        self.customers = customers_frame(population)

    def scenario(self, name: str) -> pl.DataFrame:
        return self.transactions.filter(pl.col("fraud_scenario") == name)


def _small(**overrides: Any) -> SimulationConfig:
    return sim_config.default(**{"customers": 300, "terminals": 600, "days": 20, "seed": 11, **overrides})


def _with_day(transactions: pl.DataFrame, config: SimulationConfig) -> pl.DataFrame:
    """``transactions`` plus ``day``: days since the run's start date (0-based)."""
    return transactions.with_columns(day=(pl.col("event_time").dt.date() - pl.lit(config.start_date)).dt.total_days())


@pytest.fixture(scope="module")
def busy() -> Run:
    """The default preset with every scenario's rate turned up, so each leaves enough frauds to measure."""
    return Run(
        sim_config.default(
            customers=800,
            terminals=2_000,
            days=40,
            seed=7,
            scenarios={
                "compromised_terminals": {"per_day": 2.0},
                "compromised_cards": {"per_day": 5.0},
                "card_testing": {"per_day": 4.0},
                "account_takeover": {"per_day": 4.0},
                "impossible_travel": {"per_day": 4.0},
            },
        )
    )


@pytest.fixture(scope="module")
def small() -> Run:
    return Run(_small())


# --- determinism --------------------------------------------------------------------------------------------


def test_same_config_and_seed_give_identical_output(small: Run) -> None:
    again = Run(small.config)
    assert again.transactions.equals(small.transactions)
    assert again.labels.equals(small.labels)
    assert again.customers.equals(small.customers)


def test_another_seed_gives_other_output(small: Run) -> None:
    other = Run(_small(seed=12))
    assert not other.transactions.equals(small.transactions)
    assert not other.labels.equals(small.labels)
    assert not other.customers.equals(small.customers)


def test_the_key_changes_the_tokens_and_nothing_else(small: Run) -> None:
    population, days = simulate(small.config, b"another-tokenization-key-32bytes")
    transactions = pl.concat([day.transactions for day in days])
    assert set(population.card_tokens).isdisjoint(small.population.card_tokens)
    assert transactions.drop("card_token").equals(small.transactions.drop("card_token"))


def test_days_are_consecutive_and_transaction_ids_unique(small: Run) -> None:
    assert [day.index for day in small.days] == list(range(small.config.days))
    assert [day.date.date() for day in small.days] == [
        small.config.start_date + timedelta(days=i) for i in range(small.config.days)
    ]
    assert small.transactions.columns == list(TRANSACTION_COLUMNS)
    assert small.transactions.get_column("txn_id").is_unique().all()
    assert small.transactions.get_column("event_time").is_sorted()
    for day in small.days:
        assert (day.transactions.get_column("event_time").dt.date() == day.date.date()).all()
        assert day.labels.get_column("txn_id").is_in(day.transactions.get_column("txn_id").implode()).all()


# --- cards --------------------------------------------------------------------------------------------------


def test_pans_are_distinct_luhn_valid_test_card_numbers() -> None:
    pans = _pans(np.random.default_rng(5), 20_000)
    assert len(pans) == 20_000
    assert len(set(pans)) == len(pans)
    assert all(len(pan) == 16 and luhn_valid(pan) for pan in pans)
    assert {pan[:6] for pan in pans} == set(TEST_BINS)


def test_card_tokens_are_tokens_with_bin_and_last_four(small: Run) -> None:
    tokens = small.population.card_tokens
    assert tokens.len() == small.config.customers
    assert tokens.is_unique().all()
    assert all(TOKEN.match(token) for token in tokens)
    assert set(small.population.card_bins) <= set(TEST_BINS)
    assert all(re.fullmatch(r"\d{4}", last4) for last4 in small.population.card_last4)


def test_no_output_column_holds_a_pan(busy: Run) -> None:
    """Every string value is checked as the contracts do: no value is a PAN, no text contains one.

    Card tokens are only checked with ``is_pan`` (plus their exact shape): a hex digest has digit runs, and about one
    token in a thousand holds a 13-19 digit run that passes Luhn by chance (this run has one), which ``contains_pan``
    reports although no card number is there.
    """
    for frame in (busy.transactions, busy.labels, busy.customers):
        for name, dtype in frame.schema.items():
            if dtype != pl.String:
                continue
            for value in frame.get_column(name).drop_nulls().unique():
                assert not is_pan(value), f"{name} holds a PAN"
                if name == "card_token":
                    assert TOKEN.match(value), value
                else:
                    assert not contains_pan(value), f"{name} contains a PAN"


# --- contracts ----------------------------------------------------------------------------------------------


def _validate_transactions(frame: pl.DataFrame) -> int:
    count = 0
    for row in frame.drop(CONTRACT_DROPS).iter_rows(named=True):
        Transaction(**row)
        count += 1
    return count


def test_every_transaction_of_a_run_is_a_valid_contract(small: Run) -> None:
    assert _validate_transactions(small.transactions) == small.transactions.height > 5_000


def test_every_injected_fraud_is_a_valid_contract(busy: Run) -> None:
    """Scenarios 4-6 build their rows from scratch: all of them, not a sample."""
    frauds = busy.transactions.filter(pl.col("is_fraud"))
    assert _validate_transactions(frauds) == frauds.height > 2_000


def test_every_label_is_a_valid_contract(busy: Run) -> None:
    for row in busy.labels.iter_rows(named=True):
        Label(**row)
    assert busy.labels.height > 1_000


# --- scenario 1: amount threshold ---------------------------------------------------------------------------


def test_amount_threshold_makes_every_large_genuine_payment_fraud(busy: Run) -> None:
    threshold = busy.config.scenarios.amount_threshold.threshold
    scenario_1 = busy.scenario("amount_threshold")
    assert scenario_1.height > 10
    assert (scenario_1.get_column("amount") > threshold).all()
    genuine = busy.transactions.filter(~pl.col("is_fraud"))
    assert genuine.get_column("amount").max() <= threshold


# --- scenario 2: compromised terminals ----------------------------------------------------------------------


def test_a_compromised_terminal_takes_every_card_present_payment_that_day(busy: Run) -> None:
    transactions = _with_day(busy.transactions, busy.config)
    scenario_2 = transactions.filter(pl.col("fraud_scenario") == "compromised_terminal")
    assert scenario_2.height > 200
    assert (scenario_2.get_column("channel") == "card_present").all()
    assert scenario_2.get_column("terminal_id").null_count() == 0
    compromised_days = scenario_2.select("terminal_id", "day").unique()
    same_day = transactions.filter(pl.col("channel") == "card_present").join(
        compromised_days, on=["terminal_id", "day"]
    )
    assert same_day.get_column("is_fraud").all()
    # Scenario 3 (a leaked card) and 6 (impossible travel) may claim a payment at a compromised terminal.
    assert set(same_day.get_column("fraud_scenario")) <= {
        "compromised_terminal",
        "compromised_card",
        "impossible_travel",
    }


def test_a_compromise_lasts_its_days_and_then_ends(busy: Run) -> None:
    """A run = a terminal's scenario-2 frauds not interrupted by a genuine card-present payment there.

    A 28-day compromise gives runs spanning at most 27 days (first to last fraud day). A terminal picked again while
    compromised stays compromised for longer, so a few longer runs are allowed; a window one day too long would
    give many runs of 28 days, one too short none of 27, no carry-over only runs of 0.
    """
    window = busy.config.scenarios.compromised_terminals.days
    transactions = _with_day(busy.transactions, busy.config)
    terminals = transactions.filter(pl.col("fraud_scenario") == "compromised_terminal").get_column("terminal_id")
    at_compromised = transactions.filter(
        (pl.col("channel") == "card_present") & pl.col("terminal_id").is_in(terminals.unique().implode())
    ).sort("txn_id")
    spans: list[int] = []
    for _, payments in at_compromised.group_by("terminal_id"):
        run: list[int] = []
        for day, scenario, fraud in payments.select("day", "fraud_scenario", "is_fraud").iter_rows():
            if scenario == "compromised_terminal":
                run.append(day)
            elif not fraud and run:
                spans.append(run[-1] - run[0])
                run = []
        if run:
            spans.append(run[-1] - run[0])
    assert len(spans) > 40
    assert max(spans) < 2 * window
    assert sum(span >= window for span in spans) <= 0.05 * len(spans)
    assert sum(span == window - 1 for span in spans) >= 0.05 * len(spans)


# --- scenario 3: compromised cards --------------------------------------------------------------------------


def test_a_leaked_card_pays_a_share_of_its_payments_at_five_times_the_amount(busy: Run) -> None:
    cards = busy.config.scenarios.compromised_cards
    scenario_3 = busy.scenario("compromised_card").join(
        busy.customers.select("card_token", "mean_amount"), on="card_token"
    )
    assert scenario_3.height > 300
    # A genuine amount is Normal(mean, mean / 2) (negatives redrawn in [0, 2 mean]): its mean is about the card's.
    factor = scenario_3.get_column("amount").sum() / scenario_3.get_column("mean_amount").sum()
    assert cards.amount_factor * 0.9 < factor < cards.amount_factor * 1.1

    leaked = scenario_3.get_column("card_token").unique().implode()
    genuine_same_cards = busy.transactions.filter(~pl.col("is_fraud") & pl.col("card_token").is_in(leaked))
    ratio = scenario_3.get_column("amount").median() / genuine_same_cards.get_column("amount").median()
    assert 3.5 < ratio < 7

    # Only a share: on days a card pays fraud, it also makes genuine payments.
    transactions = _with_day(busy.transactions, busy.config)
    fraud_days = _with_day(scenario_3, busy.config).select("card_token", "day").unique()
    that_day = transactions.join(fraud_days, on=["card_token", "day"]).filter(
        pl.col("fraud_scenario").is_null() | (pl.col("fraud_scenario") == "compromised_card")
    )
    share = that_day.get_column("is_fraud").mean()
    assert share is not None
    assert cards.share < share < 0.8  # conditioned on at least one fraud that day, above the configured third


# --- scenario 4: card testing -------------------------------------------------------------------------------


def test_card_testing_is_a_burst_of_tiny_payments_at_new_merchants_then_a_large_one(busy: Run) -> None:
    testing = busy.config.scenarios.card_testing
    scenario_4 = busy.scenario("card_testing").sort("txn_id")
    genuine = busy.transactions.filter(~pl.col("is_fraud"))
    bursts = scenario_4.partition_by("device_id", as_dict=False)  # one fraudster device per burst
    assert len(bursts) > 100
    longest_s = testing.max_tests * 90 + 600
    for burst in bursts:
        assert burst.get_column("card_token").n_unique() == 1
        assert (burst.get_column("channel") == "ecommerce").all()
        tests, final = burst.head(-1), burst.tail(1)
        assert testing.min_tests <= tests.height <= testing.max_tests
        assert tests.get_column("amount").is_between(*testing.tiny_amount).all()
        assert final.get_column("amount").is_between(*testing.large_amount).all()
        times = burst.get_column("event_time")
        assert (times.max() - times.min()).total_seconds() <= longest_s
        used_before = genuine.filter(
            (pl.col("card_token") == burst.item(0, "card_token")) & (pl.col("event_time") < times.min())
        ).get_column("merchant_id")
        assert set(burst.get_column("merchant_id")).isdisjoint(used_before)


# --- scenario 5: account takeover ---------------------------------------------------------------------------


def test_account_takeover_is_a_new_device_abroad_for_a_high_amount(busy: Run) -> None:
    takeover = busy.config.scenarios.account_takeover
    scenario_5 = busy.scenario("account_takeover").join(
        busy.customers.select("card_token", "home_country"), on="card_token"
    )
    assert scenario_5.height > 150
    assert (scenario_5.get_column("channel") == "ecommerce").all()
    assert (scenario_5.get_column("amount") >= takeover.min_amount).all()
    assert (scenario_5.get_column("country") != scenario_5.get_column("home_country")).all()
    assert set(scenario_5.get_column("country")) <= set(FOREIGN_COUNTRIES)
    assert set(scenario_5.get_column("home_country")) <= set(GRID_COUNTRIES)
    for takeover_rows in scenario_5.partition_by("device_id", as_dict=False):  # one fraudster device per takeover
        assert 1 <= takeover_rows.height <= takeover.max_payments
        card, device = takeover_rows.item(0, "card_token"), takeover_rows.item(0, "device_id")
        earlier = busy.transactions.filter(
            (pl.col("card_token") == card) & (pl.col("event_time") < takeover_rows.get_column("event_time").min())
        )
        assert device not in set(earlier.get_column("device_id").drop_nulls())
    assert scenario_5.get_column("device_id").null_count() == 0


# --- scenario 6: impossible travel --------------------------------------------------------------------------


def test_impossible_travel_follows_the_previous_card_present_payment_too_fast(busy: Run) -> None:
    travel = busy.config.scenarios.impossible_travel
    previous = (
        busy.transactions.filter(pl.col("channel") == "card_present")
        .sort("txn_id")  # transaction ids follow event time
        .with_columns(
            pl.col(name).shift(1).over("card_token").alias(f"previous_{name}") for name in ("event_time", "lat", "lon")
        )
        .filter(pl.col("fraud_scenario") == "impossible_travel")
    )
    assert previous.height > 60
    assert previous.get_column("previous_event_time").null_count() == 0
    km = haversine_km(
        previous.get_column("previous_lat").to_numpy(),
        previous.get_column("previous_lon").to_numpy(),
        previous.get_column("lat").to_numpy(),
        previous.get_column("lon").to_numpy(),
    )
    hours = (previous.get_column("event_time") - previous.get_column("previous_event_time")).dt.total_seconds() / 3_600
    assert (km >= travel.min_distance_km - 1).all()  # lat / lon are rounded to 5 decimals (~1 m)
    assert (hours.to_numpy() * 60 <= travel.gap_minutes[1]).all()
    assert (km / hours.to_numpy() > 900).all()


# --- switching scenarios off; the handbook preset ---------------------------------------------------------


@pytest.mark.parametrize("field", list(SCENARIO_NAMES))
def test_a_scenario_switched_off_is_gone(field: str) -> None:
    run = Run(_small(scenarios={field: {"enabled": False}}, days=15))
    found = set(run.transactions.get_column("fraud_scenario").drop_nulls()) - {"blocked_card_testing"}
    assert found == set(SCENARIO_NAMES.values()) - {SCENARIO_NAMES[field]}
    if field == "amount_threshold":
        threshold = run.config.scenarios.amount_threshold.threshold
        assert run.transactions.filter(~pl.col("is_fraud") & (pl.col("amount") > threshold)).height > 0


def test_handbook_preset_has_the_first_three_scenarios_card_present_only() -> None:
    run = Run(sim_config.handbook(customers=500, terminals=1_000, days=30, seed=3))
    transactions = run.transactions
    assert set(transactions.get_column("fraud_scenario").drop_nulls()) == {
        "amount_threshold",
        "compromised_terminal",
        "compromised_card",
    }
    assert set(transactions.get_column("channel")) == {"card_present"}
    assert transactions.get_column("device_id").null_count() == transactions.height
    assert transactions.get_column("terminal_id").null_count() == 0


# --- labels -------------------------------------------------------------------------------------------------


def test_no_label_is_known_before_its_transaction(busy: Run) -> None:
    assert (busy.labels.get_column("known_at") >= busy.labels.get_column("event_time")).all()
    joined = busy.labels.join(busy.transactions.select("txn_id", "event_time", "card_token"), on="txn_id")
    assert joined.height == busy.labels.height
    assert joined.get_column("event_time").equals(joined.get_column("event_time_right"), check_names=False)
    assert joined.get_column("card_token").equals(joined.get_column("card_token_right"), check_names=False)


def test_default_delays_are_hours_for_analysts_and_days_for_chargebacks(busy: Run) -> None:
    first = busy.labels.filter(pl.col("label_version") == 1).with_columns(
        delay_h=(pl.col("known_at") - pl.col("event_time")).dt.total_seconds() / 3_600
    )
    analyst = first.filter(pl.col("source") == "analyst").get_column("delay_h")
    chargeback = first.filter(pl.col("source") == "chargeback").get_column("delay_h")
    assert analyst.len() > 200
    assert chargeback.len() > 500
    assert analyst.max() <= 7 * 24
    assert analyst.median() < 24
    assert chargeback.min() >= 24
    assert chargeback.max() <= busy.config.labels.chargeback_max_days * 24
    assert 5 * 24 < chargeback.median() < 20 * 24


def _labelled_frauds(run: Run) -> tuple[int, int]:
    """(frauds, frauds with a fraud label)."""
    frauds = run.transactions.filter(pl.col("is_fraud")).get_column("txn_id")
    labelled = run.labels.filter(pl.col("is_fraud")).get_column("txn_id")
    return frauds.len(), int(frauds.is_in(labelled.implode()).sum())


def test_every_fraud_is_labelled_when_none_goes_unreported() -> None:
    frauds, labelled = _labelled_frauds(Run(_small(labels={"unreported_share": 0.0})))
    assert frauds > 500
    assert labelled == frauds


def test_unreported_share_leaves_that_share_unlabelled() -> None:
    frauds, labelled = _labelled_frauds(Run(_small(labels={"unreported_share": 0.5})))
    assert frauds > 500
    assert abs(labelled - frauds / 2) <= 4 * math.sqrt(frauds / 4)  # binomial, four standard deviations


def test_false_chargebacks_and_their_overturns() -> None:
    share = 0.01
    run = Run(_small(labels={"false_chargeback_share": share, "overturn_share": 0.5}))
    genuine = run.transactions.filter(~pl.col("is_fraud"))
    labels = run.labels.filter(pl.col("txn_id").is_in(genuine.get_column("txn_id").implode()))
    charged = labels.filter(pl.col("label_version") == 1)
    assert charged.get_column("is_fraud").all()
    assert (charged.get_column("source") == "chargeback").all()
    n = genuine.height
    assert abs(charged.height - n * share) <= 4 * math.sqrt(n * share * (1 - share))

    overturned = labels.filter(pl.col("label_version") == 2)
    assert not overturned.get_column("is_fraud").any()
    assert (overturned.get_column("source") == "analyst").all()
    assert abs(overturned.height - charged.height / 2) <= 4 * math.sqrt(charged.height / 4)
    pairs = overturned.join(charged, on="txn_id", suffix="_charged")
    assert pairs.height == overturned.height
    assert (pairs.get_column("known_at") > pairs.get_column("known_at_charged")).all()
    # Frauds never get a version 2.
    assert run.labels.filter(pl.col("label_version") == 2).height == overturned.height


def test_handbook_labels_every_fraud_exactly_seven_days_later_and_nothing_else() -> None:
    run = Run(sim_config.handbook(customers=500, terminals=1_000, days=30, seed=3))
    frauds = run.transactions.filter(pl.col("is_fraud"))
    assert frauds.height > 100
    assert sorted(run.labels.get_column("txn_id")) == sorted(frauds.get_column("txn_id"))
    delays = run.labels.get_column("known_at") - run.labels.get_column("event_time")
    assert (delays == timedelta(days=7)).all()
    assert run.labels.get_column("is_fraud").all()
    assert (run.labels.get_column("label_version") == 1).all()


# --- drift --------------------------------------------------------------------------------------------------


def test_the_drift_campaign_starts_on_its_day_at_merchants_never_seen_before() -> None:
    start_day = 12
    run = Run(_small(drift={"start_day": start_day, "cards_per_day": 5.0}))
    transactions = _with_day(run.transactions, run.config)
    campaign = transactions.filter(pl.col("fraud_scenario") == "campaign_card_testing")
    assert campaign.get_column("day").min() == start_day
    assert set(campaign.get_column("day")) == set(range(start_day, run.config.days))
    assert campaign.get_column("merchant_id").str.starts_with("CM").all()
    at_campaign_merchants = transactions.filter(pl.col("merchant_id").str.starts_with("CM"))
    assert at_campaign_merchants.get_column("day").min() == start_day
    assert (at_campaign_merchants.get_column("fraud_scenario") == "campaign_card_testing").all()
    assert campaign.get_column("merchant_id").n_unique() == run.config.drift.merchants


def test_no_drift_campaign_unless_asked(busy: Run) -> None:
    assert "campaign_card_testing" not in set(busy.transactions.get_column("fraud_scenario").drop_nulls())
    assert not busy.transactions.get_column("merchant_id").str.starts_with("CM").any()


# --- output -------------------------------------------------------------------------------------------------


def _write(run: Run, out: Path, **options: Any) -> dict[str, Any]:
    return write_simulation(out, run.config, run.population, iter(run.days), **options)


def test_write_simulation_writes_every_file_and_reads_back_equal(small: Run, tmp_path: Path) -> None:
    summary = _write(small, tmp_path, output_format="both")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest == summary
    transactions, labels = small.transactions, small.labels
    assert manifest["transactions"] == transactions.height
    assert manifest["frauds"] == int(transactions.get_column("is_fraud").sum())
    assert manifest["labels"] == labels.height
    assert manifest["days"] == small.config.days
    assert manifest["customers"] == small.config.customers
    assert manifest["frauds_by_scenario"] == dict(Counter(transactions.get_column("fraud_scenario").drop_nulls()))
    assert SimulationConfig.model_validate(manifest["config"]) == small.config

    stamps = [(small.config.start_date + timedelta(days=i)).isoformat() for i in range(small.config.days)]
    for name in ("transactions", "labels"):
        assert sorted(p.name for p in (tmp_path / name).iterdir()) == [f"day={stamp}" for stamp in stamps]
    read_transactions = pl.concat(
        [pl.read_parquet(tmp_path / "transactions" / f"day={stamp}" / "part-0.parquet") for stamp in stamps]
    )
    read_labels = pl.concat(
        [pl.read_parquet(tmp_path / "labels" / f"day={stamp}" / "part-0.parquet") for stamp in stamps]
    )
    assert read_transactions.equals(transactions)
    assert read_labels.equals(labels)
    assert pl.read_parquet(tmp_path / "customers.parquet").equals(small.customers)

    lines = (tmp_path / "transactions.jsonl").read_text().splitlines()
    assert len(lines) == transactions.height
    assert json.loads(lines[0])["txn_id"] == transactions.item(0, "txn_id")
    assert len((tmp_path / "labels.jsonl").read_text().splitlines()) == labels.height
    assert not list(tmp_path.rglob(".*.tmp"))


def test_parquet_only_writes_no_jsonl(small: Run, tmp_path: Path) -> None:
    summary = _write(small, tmp_path)
    assert summary["formats"] == ["parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "customers.parquet",
        "labels",
        "manifest.json",
        "transactions",
    ]


def test_the_same_config_writes_byte_identical_files(small: Run, tmp_path: Path) -> None:
    """The config's promise: same config, seed included, same bytes (the manifest holds no time or path)."""
    first, second = tmp_path / "first", tmp_path / "second"
    _write(small, first, output_format="both")
    _write(Run(small.config), second, output_format="both")
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert len(files) == 4 + 2 * small.config.days
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_an_existing_simulation_is_kept_unless_overwrite(small: Run, tmp_path: Path) -> None:
    _write(small, tmp_path, output_format="both")
    before = (tmp_path / "manifest.json").read_text()
    with pytest.raises(OutputExistsError):
        _write(small, tmp_path)
    assert (tmp_path / "manifest.json").read_text() == before

    shorter = Run(small.config.model_copy(update={"days": 3}))
    summary = _write(shorter, tmp_path, overwrite=True)
    assert summary["days"] == 3
    assert len(list((tmp_path / "transactions").iterdir())) == 3
    assert not (tmp_path / "transactions.jsonl").exists()  # the previous run's files are gone, not mixed in


# --- the command --------------------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUD_")}
    return subprocess.run(
        [sys.executable, "-m", "fraudpipe", "simulate", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


CLI_ARGS = ("--out", "sim", "--days", "3", "--customers", "200", "--terminals", "400", "--seed", "1")


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """`fraudpipe simulate` run once into an empty folder: (working directory, result)."""
    cwd = tmp_path_factory.mktemp("cli")
    return cwd, _cli(*CLI_ARGS, cwd=cwd)


@pytest.fixture(scope="module")
def cli_again(cli_run: tuple[Path, subprocess.CompletedProcess[str]]) -> subprocess.CompletedProcess[str]:
    """The same command again, into the folder the first run filled."""
    return _cli(*CLI_ARGS, cwd=cli_run[0])


def test_simulate_command_writes_a_simulation(cli_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    cwd, result = cli_run
    assert result.returncode == 0, result.stderr
    out = cwd / "sim"
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["days"], manifest["customers"], manifest["terminals"]) == (3, 200, 400)
    assert manifest["config"]["seed"] == 1
    assert manifest["config"]["preset"] == "default"
    assert (out / "customers.parquet").is_file()
    assert len(list((out / "transactions").glob("day=*/part-0.parquet"))) == 3
    assert len(list((out / "labels").glob("day=*/part-0.parquet"))) == 3
    assert f"{manifest['transactions']:,} transactions" in result.stdout


def test_simulate_command_keeps_an_existing_simulation(
    cli_run: tuple[Path, subprocess.CompletedProcess[str]], cli_again: subprocess.CompletedProcess[str]
) -> None:
    cwd, first = cli_run
    assert first.returncode == 0, first.stderr
    assert cli_again.returncode == 1
    assert "error: sim is not empty (use --overwrite" in cli_again.stderr
    assert "Traceback" not in cli_again.stderr
    assert json.loads((cwd / "sim" / "manifest.json").read_text())["config"]["seed"] == 1


def test_simulate_command_overwrites_when_asked(small: Run, tmp_path: Path) -> None:
    _write(small, tmp_path / "sim", output_format="both")
    result = _cli(*CLI_ARGS, "--overwrite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = json.loads((tmp_path / "sim" / "manifest.json").read_text())
    assert (manifest["days"], manifest["config"]["seed"]) == (3, 1)
    assert len(list((tmp_path / "sim" / "transactions").iterdir())) == 3
    assert not (tmp_path / "sim" / "transactions.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--preset", "nope"), "error: --preset must be handbook or default"),
        (("--per-day", "bogus=1"), "error: --per-day expects NAME=VALUE"),
        (("--disable", "nothing"), "error: --disable expects NAME=VALUE"),
        (("--start", "yesterday"), "error: invalid simulation settings"),
    ],
)
def test_simulate_command_refuses_bad_input_in_one_line(args: tuple[str, ...], message: str, tmp_path: Path) -> None:
    result = _cli("--out", "sim", "--days", "1", "--customers", "10", "--terminals", "10", *args, cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message), result.stderr
    assert not (tmp_path / "sim").exists()


# --- bugs found while writing these tests, now fixed --------------------------------------------------------


def test_simulate_command_refuses_an_existing_simulation_in_one_line(
    cli_again: subprocess.CompletedProcess[str],
) -> None:
    assert cli_again.stderr.strip().splitlines() == [
        "error: sim is not empty (use --overwrite to replace a previous simulation)"
    ]


def test_simulate_command_refuses_a_negative_seed_in_one_line(tmp_path: Path) -> None:
    result = _cli("--out", "sim", "--days", "1", "--customers", "10", "--terminals", "10", "--seed", "-1", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:")


def test_simulate_command_refuses_an_output_path_that_is_a_file_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "sim").write_text("not a folder")
    result = _cli("--out", "sim", "--days", "1", "--customers", "10", "--terminals", "10", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("error:")


def test_account_takeovers_stay_within_their_day() -> None:
    run = Run(_small(scenarios={"account_takeover": {"per_day": 20.0, "max_payments": 10}}))
    for day in run.days:
        assert (day.transactions.get_column("event_time").dt.date() == day.date.date()).all(), day.index


# --- blocked cards reissued ---------------------------------------------------------------------------------------


def test_a_blocked_card_is_replaced_the_next_day_and_only_fraudsters_keep_trying_it(busy: Run) -> None:
    """A card is blocked the day its first fraud label is known; from the next day its customer's payments use a new
    card (new token, BIN and last four of a PAN of its own) and the old one sees only fraudsters' tiny attempts."""
    reissued = busy.population.reissued
    assert len(reissued) > 50
    transactions = _with_day(busy.transactions, busy.config)
    start = busy.days[0].date
    first_known = busy.labels.filter(pl.col("is_fraud")).group_by("card_token").agg(pl.col("known_at").min())
    known_day = {token: (at - start) // timedelta(days=1) for token, at in first_known.iter_rows()}
    by_token = transactions.partition_by("card_token", as_dict=True)
    customer_ids = busy.population.customer_ids
    for card in reissued:
        assert card.day == known_day[card.replaces] + 1 and TOKEN.match(card.token)
        assert card.token not in busy.population.card_tokens.to_list()
        old = by_token[(card.replaces,)].filter(pl.col("day") >= card.day)
        assert old.get_column("fraud_scenario").is_in(["blocked_card_testing"]).all(), old
        new = by_token.get((card.token,))
        if new is not None:  # the customer paid with it (the run may end first)
            assert new.get_column("day").min() >= card.day  # type: ignore[operator]
            assert set(new.get_column("customer_id").to_list()) <= {customer_ids[card.customer], None}
    retries = busy.scenario("blocked_card_testing")
    assert retries.height > 10 and retries.get_column("is_fraud").all()
    assert retries.get_column("amount").max() <= busy.config.scenarios.card_testing.tiny_amount[1]  # type: ignore[operator]
    assert set(retries.get_column("card_token").to_list()) <= {card.replaces for card in reissued}
    cards = busy.customers.filter(pl.col("replaces").is_not_null())
    assert cards.get_column("card_token").to_list() == [card.token for card in reissued]
    assert busy.customers.height == busy.population.customers + len(reissued)


def test_the_handbook_preset_never_reissues_a_card() -> None:
    run = Run(sim_config.handbook(customers=300, terminals=600, days=30, seed=3))
    assert run.population.reissued == [] and run.customers.height == 300
    assert run.transactions.get_column("card_token").n_unique() <= 300
