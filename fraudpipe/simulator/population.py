"""Who pays where: customers and their cards, terminals and their merchants, online merchants. Pure numpy.

Geography follows the handbook: customers and terminals sit uniformly on a 100 x 100 grid, and a customer pays
card-present only at terminals within ``radius`` of home. The grid is laid over a ~1,000 km square of central
Europe (one unit ~ 10 km: ``lat = 45 + 0.09 y``, ``lon = 2 + 0.13 x``) cut into 3 x 3 countries, so payments have a
real latitude, longitude and country.

Cards are Luhn-valid 16-digit PANs from issuers' public *test* BIN ranges. The PAN exists only inside
:func:`build_population` long enough to be tokenized: the population keeps the token, BIN and last four.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from fraudpipe.pan import CardRef, tokenize_pan
from fraudpipe.simulator.config import SimulationConfig

__all__ = [
    "AGE_BANDS",
    "FOREIGN_COUNTRIES",
    "GRID_COUNTRIES",
    "Population",
    "Reissued",
    "build_population",
    "grid_to_latlon",
    "reissue_card",
]

GRID_COUNTRIES = ("FR", "IT", "SI", "CH", "AT", "HU", "BE", "DE", "PL")  # row-major from the south-west cell
FOREIGN_COUNTRIES = ("US", "BR", "NG", "RU", "CN", "VN", "MX", "ID")
AGE_BANDS = ("18-25", "26-40", "41-60", "61+")
_AGE_WEIGHTS = (0.15, 0.35, 0.33, 0.17)
TEST_BINS = ("411111", "424242", "400005", "555555", "510510", "222300")
# Physical merchant categories: (MCC, name, weight).
_PHYSICAL_MCCS = (
    ("5411", "Grocery", 0.30),
    ("5812", "Restaurant", 0.20),
    ("5541", "Fuel", 0.12),
    ("5912", "Pharmacy", 0.08),
    ("5311", "Department store", 0.10),
    ("5651", "Clothing", 0.10),
    ("4111", "Transit", 0.05),
    ("5732", "Electronics", 0.05),
)
_ONLINE_MCCS = (
    ("5999", "Online shop"),
    ("5818", "Digital goods"),
    ("4816", "Online services"),
    ("5732", "Electronics"),
)
ONLINE_FAVOURITES = 5
"""Online merchants a customer uses; card testers use merchants outside everyone's favourites."""
_TESTING_POOL_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class Reissued:
    """A card issued to ``customer`` on ``day`` (0-based) in place of the blocked card ``replaces`` (a token)."""

    customer: int
    day: int
    token: str
    bin: str
    last4: str
    replaces: str


def reissue_card(seed: int, customer: int, generation: int, key: bytes) -> CardRef:
    """The customer's ``generation``-th replacement card (a PAN of its own, never kept: tokenized with ``key``)."""
    (pan,) = _pans(np.random.default_rng([seed, 3, customer, generation]), 1)
    return tokenize_pan(pan, key)


@dataclass(frozen=True, slots=True)
class Population:
    """Arrays indexed by customer (= card), terminal, merchant or online merchant number."""

    customer_xy: NDArray[np.float64]  # (customers, 2) grid units
    mean_amount: NDArray[np.float64]
    std_amount: NDArray[np.float64]
    tx_per_day: NDArray[np.float64]
    ecommerce_share: NDArray[np.float64]
    home_country: NDArray[np.int8]  # index into GRID_COUNTRIES
    age_band: NDArray[np.int8]  # index into AGE_BANDS
    devices: NDArray[np.int8]  # 1 or 2 devices per customer
    available_offsets: NDArray[np.int64]  # CSR over available_terminals, length customers + 1
    available_terminals: NDArray[np.int64]
    favourites: NDArray[np.int64]  # (customers, ONLINE_FAVOURITES) online merchant numbers
    customer_ids: pl.Series
    card_tokens: pl.Series
    card_bins: pl.Series
    card_last4: pl.Series
    terminal_xy: NDArray[np.float64]
    terminal_latlon: NDArray[np.float64]  # (terminals, 2) degrees
    terminal_country: NDArray[np.int8]
    terminal_merchant: NDArray[np.int64]
    terminal_ids: pl.Series
    merchant_ids: pl.Series  # physical merchants
    merchant_names: pl.Series
    merchant_mccs: pl.Series
    online_ids: pl.Series
    online_names: pl.Series
    online_mccs: pl.Series
    online_country: pl.Series  # ISO alpha-2
    online_is_foreign: NDArray[np.bool_]
    testing_pool: NDArray[np.int64]  # online merchants no customer has among favourites
    reissued: list[Reissued] = field(default_factory=list)
    """Cards issued to replace blocked ones, in order: card number ``customers + i`` is ``reissued[i]``."""

    @property
    def customers(self) -> int:
        return len(self.mean_amount)

    @property
    def terminals(self) -> int:
        return len(self.terminal_xy)


def grid_to_latlon(xy: NDArray[np.float64]) -> NDArray[np.float64]:
    """(n, 2) grid positions to (n, 2) latitude / longitude in degrees."""
    return np.column_stack([45.0 + 0.09 * xy[:, 1], 2.0 + 0.13 * xy[:, 0]])


def grid_country(xy: NDArray[np.float64]) -> NDArray[np.int8]:
    """Index into GRID_COUNTRIES of each (n, 2) grid position."""
    col = np.minimum((xy[:, 0] / (100 / 3)).astype(np.int64), 2)
    row = np.minimum((xy[:, 1] / (100 / 3)).astype(np.int64), 2)
    return (row * 3 + col).astype(np.int8)


def _ids(prefix: str, count: int, width: int) -> pl.Series:
    return prefix + pl.Series(np.arange(count)).cast(pl.String).str.zfill(width)


def _luhn_check_digits(bodies: NDArray[np.int64]) -> NDArray[np.int64]:
    """Check digit for each (n, 15) matrix row of PAN digits (most significant first)."""
    doubled = bodies[:, ::-1].copy()
    doubled[:, ::2] *= 2  # from the right, every other digit starting with the rightmost body digit
    doubled[doubled > 9] -= 9
    return np.asarray((10 - doubled.sum(axis=1) % 10) % 10, dtype=np.int64)


def _pans(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct Luhn-valid 16-digit PANs from test BIN ranges."""
    bins = np.array([[int(d) for d in b] for b in TEST_BINS], dtype=np.int64)[rng.integers(0, len(TEST_BINS), count)]
    # Distinct 9-digit account numbers: an affine permutation of 0..1e9-1 (the multiplier is prime to 1e9).
    accounts = (np.arange(count, dtype=np.int64) * 387_420_489 + int(rng.integers(0, 10**9))) % 10**9
    account_digits = (accounts[:, None] // 10 ** np.arange(8, -1, -1)) % 10
    bodies = np.hstack([bins, account_digits])
    checks = _luhn_check_digits(bodies)
    digits = np.hstack([bodies, checks[:, None]]).astype(np.uint8) + ord("0")
    return [row.tobytes().decode("ascii") for row in digits]


def build_population(config: SimulationConfig, rng: np.random.Generator, key: bytes) -> Population:
    """Draw the population of ``config`` and tokenize its cards with ``key``."""
    n_c, n_t = config.customers, config.terminals
    customer_xy = rng.uniform(0, 100, (n_c, 2))
    mean_amount = rng.uniform(5, 100, n_c)
    tx_per_day = rng.uniform(0, 4, n_c)
    terminal_xy = rng.uniform(0, 100, (n_t, 2))

    neighbours = cKDTree(terminal_xy).query_ball_point(customer_xy, r=config.radius, return_sorted=True)
    counts = np.fromiter((len(n) for n in neighbours), dtype=np.int64, count=n_c)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat = np.fromiter((t for n in neighbours for t in n), dtype=np.int64, count=int(offsets[-1]))

    low, high = config.ecommerce_share
    refs = [tokenize_pan(pan, key) for pan in _pans(rng, n_c)]

    n_m = max(1, n_t // 2)
    mcc_codes, mcc_names, mcc_weights = zip(*_PHYSICAL_MCCS, strict=True)
    merchant_category = rng.choice(len(mcc_codes), size=n_m, p=np.array(mcc_weights) / sum(mcc_weights))
    merchant_ids = _ids("M", n_m, 6)

    n_o = config.online_merchants
    online_category = rng.integers(0, len(_ONLINE_MCCS), n_o)
    online_is_foreign = rng.random(n_o) < 0.25
    online_country = np.where(
        online_is_foreign,
        np.array(FOREIGN_COUNTRIES)[rng.integers(0, len(FOREIGN_COUNTRIES), n_o)],
        np.array(GRID_COUNTRIES)[rng.integers(0, len(GRID_COUNTRIES), n_o)],
    )
    pool_start = max(1, int(n_o * (1 - _TESTING_POOL_SHARE)))
    online_ids = _ids("OM", n_o, 5)
    return Population(
        customer_xy=customer_xy,
        mean_amount=mean_amount,
        std_amount=mean_amount / 2,
        tx_per_day=tx_per_day,
        ecommerce_share=rng.uniform(low, high, n_c) if high > 0 else np.zeros(n_c),
        home_country=grid_country(customer_xy),
        age_band=rng.choice(len(AGE_BANDS), size=n_c, p=_AGE_WEIGHTS).astype(np.int8),
        devices=rng.integers(1, 3, n_c).astype(np.int8),
        available_offsets=offsets,
        available_terminals=flat,
        favourites=rng.integers(0, pool_start, (n_c, ONLINE_FAVOURITES)),
        customer_ids=_ids("C", n_c, 7),
        card_tokens=pl.Series([ref.token for ref in refs]),
        card_bins=pl.Series([ref.bin for ref in refs]),
        card_last4=pl.Series([ref.last4 for ref in refs]),
        terminal_xy=terminal_xy,
        terminal_latlon=grid_to_latlon(terminal_xy),
        terminal_country=grid_country(terminal_xy),
        terminal_merchant=rng.integers(0, n_m, n_t),
        terminal_ids=_ids("T", n_t, 6),
        merchant_ids=merchant_ids,
        merchant_names=pl.Series(np.array(mcc_names)[merchant_category]) + " " + merchant_ids,
        merchant_mccs=pl.Series(np.array(mcc_codes)[merchant_category]),
        online_ids=online_ids,
        online_names=pl.Series(np.array([name for _, name in _ONLINE_MCCS])[online_category]) + " " + online_ids,
        online_mccs=pl.Series(np.array([code for code, _ in _ONLINE_MCCS])[online_category]),
        online_country=pl.Series(online_country),
        online_is_foreign=online_is_foreign,
        testing_pool=np.arange(pool_start, n_o, dtype=np.int64) if pool_start < n_o else np.array([n_o - 1]),
    )
