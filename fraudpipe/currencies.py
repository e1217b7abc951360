"""ISO 4217 alphabetic codes of circulating currencies a card payment can be denominated in, their minor units,
and the default cap of one payment in each.

Fund codes (BOV, CHE, CHW, CLF, COU, MXV, USN, UYI, UYW), precious metals, SDR and the test/"no currency" codes
(XAG, XAU, XBA-XBD, XDR, XPD, XPT, XSU, XTS, XUA, XXX) are left out on purpose: no card network settles in them.
Codes withdrawn in the last few years but still seen in historical files (ANG, CUC, HRK, SLL, ZWL) are kept so a
replay of older data validates.
"""

from __future__ import annotations

import math
from functools import cache

import iso4217

__all__ = ["CURRENCIES", "DEFAULT_CAPS", "DEFAULT_LIMIT_EUR", "EUR_RATES", "amount_caps", "minor_units"]

CURRENCIES: frozenset[str] = frozenset(
    [
        "AED",
        "AFN",
        "ALL",
        "AMD",
        "ANG",
        "AOA",
        "ARS",
        "AUD",
        "AWG",
        "AZN",
        "BAM",
        "BBD",
        "BDT",
        "BGN",
        "BHD",
        "BIF",
        "BMD",
        "BND",
        "BOB",
        "BRL",
        "BSD",
        "BTN",
        "BWP",
        "BYN",
        "BZD",
        "CAD",
        "CDF",
        "CHF",
        "CLP",
        "CNY",
        "COP",
        "CRC",
        "CUC",
        "CUP",
        "CVE",
        "CZK",
        "DJF",
        "DKK",
        "DOP",
        "DZD",
        "EGP",
        "ERN",
        "ETB",
        "EUR",
        "FJD",
        "FKP",
        "GBP",
        "GEL",
        "GHS",
        "GIP",
        "GMD",
        "GNF",
        "GTQ",
        "GYD",
        "HKD",
        "HNL",
        "HRK",
        "HTG",
        "HUF",
        "IDR",
        "ILS",
        "INR",
        "IQD",
        "IRR",
        "ISK",
        "JMD",
        "JOD",
        "JPY",
        "KES",
        "KGS",
        "KHR",
        "KMF",
        "KPW",
        "KRW",
        "KWD",
        "KYD",
        "KZT",
        "LAK",
        "LBP",
        "LKR",
        "LRD",
        "LSL",
        "LYD",
        "MAD",
        "MDL",
        "MGA",
        "MKD",
        "MMK",
        "MNT",
        "MOP",
        "MRU",
        "MUR",
        "MVR",
        "MWK",
        "MXN",
        "MYR",
        "MZN",
        "NAD",
        "NGN",
        "NIO",
        "NOK",
        "NPR",
        "NZD",
        "OMR",
        "PAB",
        "PEN",
        "PGK",
        "PHP",
        "PKR",
        "PLN",
        "PYG",
        "QAR",
        "RON",
        "RSD",
        "RUB",
        "RWF",
        "SAR",
        "SBD",
        "SCR",
        "SDG",
        "SEK",
        "SGD",
        "SHP",
        "SLE",
        "SLL",
        "SOS",
        "SRD",
        "SSP",
        "STN",
        "SVC",
        "SYP",
        "SZL",
        "THB",
        "TJS",
        "TMT",
        "TND",
        "TOP",
        "TRY",
        "TTD",
        "TWD",
        "TZS",
        "UAH",
        "UGX",
        "USD",
        "UYU",
        "UZS",
        "VED",
        "VES",
        "VND",
        "VUV",
        "WST",
        "XAF",
        "XCD",
        "XCG",
        "XOF",
        "XPF",
        "YER",
        "ZAR",
        "ZMW",
        "ZWG",
        "ZWL",
    ]
)


_WITHDRAWN_MINOR_UNITS = {"ANG": 2, "BGN": 2, "CUC": 2, "HRK": 2, "SLL": 2, "ZWL": 2}
"""Minor units of the kept withdrawn codes, which the current ISO 4217 list no longer holds."""


@cache
def minor_units(currency: str) -> int:
    """Decimal places of ``currency``'s minor unit (ISO 4217 exponent): EUR 2, JPY 0, VND 0, BHD 3.

    Raises:
        KeyError: not one of :data:`CURRENCIES`.
    """
    if currency not in CURRENCIES:
        raise KeyError(currency)
    if currency in _WITHDRAWN_MINOR_UNITS:
        return _WITHDRAWN_MINOR_UNITS[currency]
    exponent = iso4217.Currency(currency).exponent
    return 0 if exponent is None else int(exponent)


# Units of each currency per euro, rounded *up* to two significant figures from late-2025 market rates (official
# rates where no market one is published, market ones where the two differ widely: ARS, IRR, LBP, MMK, SDG, SSP,
# SYP, VES, YER). Their only use is an input sanity cap: a payment bigger than a common limit in EUR. They are not
# exchange rates: nothing is converted with them, and a wrong one only moves a cap
# (``scoring.amount_caps_by_currency`` overrides any of them).
EUR_RATES: dict[str, float] = {
    "AED": 4.4, "AFN": 80, "ALL": 100, "AMD": 460, "ANG": 2.1, "AOA": 1100, "ARS": 1700, "AUD": 1.8, "AWG": 2.1,
    "AZN": 2.0, "BAM": 2.0, "BBD": 2.4, "BDT": 150, "BGN": 2.0, "BHD": 0.45, "BIF": 3500, "BMD": 1.2, "BND": 1.6,
    "BOB": 8.1, "BRL": 6.4, "BSD": 1.2, "BTN": 105, "BWP": 16, "BYN": 4.0, "BZD": 2.4, "CAD": 1.7, "CDF": 3400,
    "CHF": 0.95, "CLP": 1100, "CNY": 8.4, "COP": 4700, "CRC": 600, "CUC": 1.2, "CUP": 29, "CVE": 111, "CZK": 25,
    "DJF": 210, "DKK": 7.5, "DOP": 75, "DZD": 155, "EGP": 57, "ERN": 18, "ETB": 180, "EUR": 1, "FJD": 2.7,
    "FKP": 0.9, "GBP": 0.9, "GEL": 3.2, "GHS": 15, "GIP": 0.9, "GMD": 85, "GNF": 10_000, "GTQ": 9.0, "GYD": 250,
    "HKD": 9.1, "HNL": 31, "HRK": 7.6, "HTG": 155, "HUF": 400, "IDR": 20_000, "ILS": 4.0, "INR": 105, "IQD": 1600,
    "IRR": 1_300_000, "ISK": 150, "JMD": 190, "JOD": 0.85, "JPY": 185, "KES": 155, "KGS": 105, "KHR": 4800,
    "KMF": 495, "KPW": 1100, "KRW": 1750, "KWD": 0.36, "KYD": 1.0, "KZT": 620, "LAK": 26_000, "LBP": 110_000,
    "LKR": 360, "LRD": 220, "LSL": 21, "LYD": 6.4, "MAD": 11, "MDL": 20, "MGA": 5300, "MKD": 62, "MMK": 5000,
    "MNT": 4200, "MOP": 9.4, "MRU": 47, "MUR": 54, "MVR": 18, "MWK": 2100, "MXN": 22, "MYR": 5.0, "MZN": 75,
    "NAD": 21, "NGN": 1800, "NIO": 43, "NOK": 12, "NPR": 165, "NZD": 2.1, "OMR": 0.45, "PAB": 1.2, "PEN": 4.1,
    "PGK": 5.0, "PHP": 70, "PKR": 330, "PLN": 4.3, "PYG": 8800, "QAR": 4.3, "RON": 5.1, "RSD": 118, "RUB": 100,
    "RWF": 1700, "SAR": 4.4, "SBD": 10, "SCR": 17, "SDG": 2600, "SEK": 11, "SGD": 1.6, "SHP": 0.9, "SLE": 27,
    "SLL": 27_000, "SOS": 670, "SRD": 46, "SSP": 7000, "STN": 25, "SVC": 11, "SYP": 16_000, "SZL": 21, "THB": 38,
    "TJS": 11, "TMT": 4.1, "TND": 3.5, "TOP": 2.8, "TRY": 50, "TTD": 7.9, "TWD": 37, "TZS": 3000, "UAH": 49,
    "UGX": 4300, "USD": 1.2, "UYU": 47, "UZS": 15_000, "VED": 600, "VES": 600, "VND": 31_000, "VUV": 145,
    "WST": 3.3, "XAF": 660, "XCD": 3.2, "XCG": 2.1, "XOF": 660, "XPF": 120, "YER": 2000, "ZAR": 21, "ZMW": 30,
    "ZWG": 33, "ZWL": 50_000,
}  # fmt: skip


def amount_caps(limit_eur: float, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """The largest accepted payment in each currency (major units): ``limit_eur`` in that currency at
    :data:`EUR_RATES`, rounded up to a whole major unit, then ``overrides`` (currency -> cap) on top."""
    caps = {code: float(math.ceil(limit_eur * rate)) for code, rate in EUR_RATES.items()}
    return caps | dict(overrides or {})


DEFAULT_LIMIT_EUR = 1_000_000.0
"""The default cap of one card payment, in EUR; larger values are input errors, not big spenders."""
DEFAULT_CAPS: dict[str, float] = amount_caps(DEFAULT_LIMIT_EUR)
""":func:`amount_caps` of :data:`DEFAULT_LIMIT_EUR`: what a contract checks when no caps are given."""
