"""ISO 4217 alphabetic codes of circulating currencies a card payment can be denominated in.

Fund codes (BOV, CHE, CHW, CLF, COU, MXV, USN, UYI, UYW), precious metals, SDR and the test/"no currency" codes
(XAG, XAU, XBA-XBD, XDR, XPD, XPT, XSU, XTS, XUA, XXX) are left out on purpose: no card network settles in them.
Codes withdrawn in the last few years but still seen in historical files (ANG, CUC, HRK, SLL, ZWL) are kept so a
replay of older data validates.
"""

from __future__ import annotations

__all__ = ["CURRENCIES"]

CURRENCIES: frozenset[str] = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD CAD CDF
    CHF CLP CNY COP CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD
    HKD HNL HRK HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD
    LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP
    PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT
    TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG ZWL
    """.split()
)
