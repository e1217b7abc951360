"""The handbook preset at full size against the published simulator (Le Borgne et al., 2022; see
``/work/shared/REFERENCE.md``, "The published card-fraud simulator").

The book's run: 5,000 customers, 10,000 terminals, 183 days from 2018-04-01 -> **1,754,155 transactions, fraud rate
0.84 %, about 85 frauds a day**. Its scenarios: (1) every amount above 220 is fraud; (2) each day 2 terminals are
compromised for 28 days; (3) each day 3 customers are compromised for 14 days, a third of their payments multiplied
by 5 and fraud. The book publishes no per-scenario counts; the ranges below follow from its process.

Our run uses its own seed, so it cannot reproduce the book's counts exactly; each tolerance is what the process
itself lets a single run vary by:

- **Transactions, +-3 %.** Expected count: customers x E[tx_per_day] x days x P(time within the day) = 5,000 x 2 x
  183 x 0.969 ~ 1.774 M (a customer with no terminal within reach, who pays nothing, is vanishingly rare). The
  5,000 drawn rates (uniform(0, 4), sd 1.15) make the total's mean vary by 1.15 / (2 sqrt(5,000)) ~ 0.8 %; the
  book's 1,754,155 itself sits ~1 % below the expectation. 3 % is ~3 standard deviations of run-to-run variation
  plus the book's own draw; a wrong time-of-day cut, rate or radius moves the count by far more.
- **Fraud rate 0.75-0.95 %** (book 0.84 %) and **75-95 frauds a day** (book ~85): the three expectations below add
  up to ~0.85 %; the ranges below allow 0.70-1.03 %, but their errors are partly independent, so the total is held
  to +-0.1 point around the book (about two standard deviations of a run). Frauds a day are the same figure
  times ~9,700 transactions a day.
- **Scenario 1, 0.03-0.10 % of transactions.** P(amount > 220) for Normal(m, m / 2), averaged over m ~ uniform(5,
  100) (the payment rate does not depend on m), is 0.057 %; 94 % of it comes from the ~750 customers with m above
  85, so which customers are drawn moves it by tens of percent. Scenarios 2 and 3, applied after it, claim
  about 1 % of these payments.
- **Scenario 2, 0.45-0.60 %.** 2 terminals a day for 28 days: 56 compromised at steady state, reached after 28 of
  183 days, so ~52 on average; a terminal takes ~0.97 payments a day (~9,700 payments over 10,000 terminals): ~50 a
  day of ~9,700, 0.52 %. Which terminals (busy or quiet) are picked moves it by about a tenth.
- **Scenario 3, 0.22-0.33 %.** 3 cards a day for 14 days: 42 at steady state, ~40 on average; a card makes ~1.94
  payments a day, a third are hit: ~26 a day, 0.27 %. With ~550 cards drawn in the run, which cards (rate
  uniform(0, 4)) are picked moves it by about a tenth too.

Run time: about 10 s for the simulation itself, done once for the module.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl
import pytest

from fraudpipe.simulator import config as sim_config
from fraudpipe.simulator.generate import simulate

KEY = b"handbook-model-test-tokenization"
PUBLISHED_TRANSACTIONS = 1_754_155
PUBLISHED_FRAUD_RATE = 0.0084
PUBLISHED_FRAUDS_PER_DAY = 85


@pytest.fixture(scope="module")
def handbook_run() -> pl.DataFrame:
    """Every transaction of the full-size handbook preset, with ``day`` (0-based) added."""
    config = sim_config.handbook()
    assert (config.customers, config.terminals, config.days, config.start_date) == (
        5_000,
        10_000,
        183,
        date(2018, 4, 1),
    )
    _, days = simulate(config, KEY)
    columns = ("txn_id", "event_time", "amount", "channel", "is_fraud", "fraud_scenario")
    return pl.concat([day.transactions.select(columns).with_columns(day=pl.lit(day.index)) for day in days])


def test_transaction_count_matches_the_book(handbook_run: pl.DataFrame) -> None:
    assert abs(handbook_run.height / PUBLISHED_TRANSACTIONS - 1) <= 0.03, handbook_run.height
    first, last = handbook_run.get_column("event_time").min(), handbook_run.get_column("event_time").max()
    assert first.date() == date(2018, 4, 1)
    assert last.date() == date(2018, 4, 1) + timedelta(days=182)
    assert set(handbook_run.get_column("channel")) == {"card_present"}


def test_fraud_rate_matches_the_book(handbook_run: pl.DataFrame) -> None:
    rate = handbook_run.get_column("is_fraud").mean()
    assert rate is not None
    assert 0.0075 <= rate <= 0.0095, f"{rate:.4%} (book {PUBLISHED_FRAUD_RATE:.2%})"


def test_frauds_per_day_match_the_book(handbook_run: pl.DataFrame) -> None:
    per_day = handbook_run.group_by("day").agg(pl.col("is_fraud").sum()).get_column("is_fraud")
    assert per_day.len() == 183
    assert 75 <= per_day.mean() <= 95, f"{per_day.mean():.1f} (book ~{PUBLISHED_FRAUDS_PER_DAY})"


@pytest.mark.parametrize(
    ("scenario", "low", "high"),
    [
        ("amount_threshold", 0.0003, 0.0010),
        ("compromised_terminal", 0.0045, 0.0060),
        ("compromised_card", 0.0022, 0.0033),
    ],
)
def test_each_scenario_has_its_expected_share(
    handbook_run: pl.DataFrame, scenario: str, low: float, high: float
) -> None:
    share = (handbook_run.get_column("fraud_scenario") == scenario).sum() / handbook_run.height
    assert low <= share <= high, f"{scenario}: {share:.4%}"


def test_only_the_three_handbook_scenarios(handbook_run: pl.DataFrame) -> None:
    assert set(handbook_run.get_column("fraud_scenario").drop_nulls()) == {
        "amount_threshold",
        "compromised_terminal",
        "compromised_card",
    }
