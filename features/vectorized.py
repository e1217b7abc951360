"""The fast offline builder: the same features as :func:`features.offline.build_features`, computed column-wise.

For a history replayed in event-time order (what a backfill or a training set is), the online rules simplify:
every payment lands in its entity's newest bucket, so a window is a plain range of buckets and its total a
difference of cumulative sums (one ``searchsorted`` per window); label-derived counts sum the label deltas known by
the payment's time whose payment day is in the window. Only the recent-items rules (64 items per kind, oldest
evicted) are replayed row by row, and only for the few cards that ever exceed 64 distinct items of a kind.

It requires unique transaction ids (a redelivered row would be a duplicate event, not history). A test holds it
equal to the sequential reference on simulated histories.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl
from numpy.typing import NDArray

from features.definitions import FEATURE_NAMES
from features.formulas import FRAUD_WINDOWS, PLACE_WINDOWS, RECENT_ITEMS, SQUARE_CAP_CENTS
from features.plan import item_id
from features.windows import KEPT, LABEL_DELAY_DAYS, RESOLUTIONS, WINDOWS

__all__ = ["build_features_fast"]

_DAY_US = RESOLUTIONS["d"] * 1_000_000
_SHIFT = 40  # entity code << 40 | bucket: buckets stay below 2^40 at every resolution until long after 2100


def _codes(column: pl.Series) -> NDArray[np.int64]:
    """Dense integer code per value (nulls: -1)."""
    codes = column.cast(pl.String).cast(pl.Categorical).to_physical().cast(pl.Int64).fill_null(-1)
    return codes.to_numpy()


def _window_totals(entity: NDArray[np.int64], bucket: NDArray[np.int64], values: list[NDArray[np.int64]],
                   length: int) -> list[NDArray[np.int64]]:  # fmt: skip
    """For each row (rows in event order), the sums of ``values`` over the same entity's rows up to and including it
    whose bucket is within ``length`` buckets of its own. Rows of entity -1 get 0."""
    n = len(entity)
    order = np.lexsort((np.arange(n), entity))
    key = (entity[order] << _SHIFT) | bucket[order]
    first = np.searchsorted(key, (entity[order] << _SHIFT) | (bucket[order] - length + 1), side="left")
    out = []
    for value in values:
        cumulative = np.concatenate([[0], np.cumsum(value[order])])
        totals = np.empty(n, dtype=np.int64)
        totals[order] = cumulative[np.arange(1, n + 1)] - cumulative[first]
        totals[entity < 0] = 0
        out.append(totals)
    return out


def _range_counts(entity: NDArray[np.int64], day: NDArray[np.int64], last: NDArray[np.int64],
                  length: int) -> NDArray[np.int64]:  # fmt: skip
    """For each row: how many rows of its entity fall on days ``last - length + 1 .. last`` (all earlier than the
    row's own day, hence already applied in a time-ordered history). Rows of entity -1 get 0."""
    order = np.lexsort((np.arange(len(entity)), day, entity))
    key = (entity[order] << _SHIFT) | day[order]
    high = np.searchsorted(key, (entity << _SHIFT) | last, side="right")
    low = np.searchsorted(key, (entity << _SHIFT) | (last - length + 1), side="left")
    return np.where(entity >= 0, high - low, 0)


def _label_deltas(labels: pl.DataFrame, label_delay: timedelta) -> pl.DataFrame:
    """One row per label that moves a counter: entity ids, payment day, known time (µs), delta (+1 / -1)."""
    schema = {"card": pl.String, "terminal": pl.String, "merchant": pl.String, "day": pl.Int64, "known": pl.Int64,
              "delta": pl.Int64}  # fmt: skip
    if labels.height == 0:
        return pl.DataFrame(schema=schema)
    ordered = labels.with_columns(
        known=(pl.col("known_at") + label_delay).dt.epoch("us"),
        day=pl.col("event_time").dt.epoch("us") // _DAY_US,
        fraud=pl.col("is_fraud").cast(pl.Int64),
    ).sort("known", maintain_order=True)
    rows = []
    last: dict[str, tuple[int, int]] = {}
    for txn, version, fraud, card, terminal, merchant, day, known in ordered.select(
        "txn_id", "label_version", "fraud", "card_token", "terminal_id", "merchant_id", "day", "known"
    ).iter_rows():
        seen_version, seen_fraud = last.get(txn, (0, 0))
        if version <= seen_version:
            continue
        last[txn] = (version, fraud)
        if fraud != seen_fraud:
            rows.append((card, terminal, merchant, day, known, fraud - seen_fraud))
    return pl.DataFrame(rows, schema=schema, orient="row")


def _fraud_counts(entity: pl.Series, times: NDArray[np.int64], days: NDArray[np.int64], deltas: pl.DataFrame,
                  column: str, lengths: tuple[int, ...]) -> list[NDArray[np.int64]]:  # fmt: skip
    """Per row: sum of label deltas of its entity known by its time, payment day within each window length."""
    out = [np.zeros(len(times), dtype=np.int64) for _ in lengths]
    if deltas.height == 0:
        return out
    by_entity = deltas.filter(pl.col(column).is_not_null()).partition_by(column, as_dict=True)
    rows = pl.DataFrame({"e": entity}).with_row_index("i").filter(pl.col("e").is_not_null())
    for (name,), group in rows.partition_by("e", as_dict=True).items():
        labels = by_entity.get((name,))
        if labels is None:
            continue
        index = group.get_column("i").to_numpy()
        known, day, delta = (labels.get_column(c).to_numpy() for c in ("known", "day", "delta"))
        for start in range(0, len(index), 2_048):
            chunk = index[start : start + 2_048]
            visible = known[None, :] < times[chunk, None]
            for slot, length in enumerate(lengths):
                inside = (
                    visible & (day[None, :] >= days[chunk, None] - length + 1) & (day[None, :] <= days[chunk, None])
                )
                out[slot][chunk] = (inside * delta[None, :]).sum(axis=1)
    return out


def _recent(frame: pl.DataFrame, times: NDArray[np.int64]) -> dict[str, NDArray[np.float64]]:
    """Distinct terminals / merchants / countries in 24h and device / terminal seen-before flags (NaN: missing)."""
    n = frame.height
    out: dict[str, NDArray[np.float64]] = {}
    # Unique, order-preserving time index per card: ties in time keep arrival order, as the stream applies them.
    ranked = (
        frame.select("card_token", "terminal_id", "merchant_id", "country", "device_id")
        .with_columns(_time=pl.Series(times), _i=pl.int_range(n))
        .with_columns(_t=pl.col("_time") * 1_000 + pl.int_range(pl.len()).over("_time"))
    )
    for kind, column in (("terminal", "terminal_id"), ("merchant", "merchant_id"), ("country", "country")):
        counts = (
            ranked.sort("_t")
            .rolling(index_column="_t", period=f"{_DAY_US * 1_000}i", closed="right", group_by="card_token")
            .agg(pl.col("_i").last(), pl.col(column).drop_nulls().n_unique().alias("n"))
            .sort("_i")
            .get_column("n")
            .to_numpy()
            .astype(np.float64)
        )
        present = frame.get_column(column).is_not_null().to_numpy()
        out[kind] = np.where(present, np.minimum(counts, RECENT_ITEMS), np.nan)
    for kind, column in (("device", "device_id"), ("terminal", "terminal_id")):
        previous = ranked.with_columns(seen=pl.col("_i").shift(1).over("card_token", column).is_not_null())
        seen = previous.get_column("seen").to_numpy().astype(np.float64)
        present = frame.get_column(column).is_not_null().to_numpy()
        out[f"{kind}_seen"] = np.where(present, seen, np.nan)
    _evictions(frame, times, out)
    return out


def _evictions(frame: pl.DataFrame, times: NDArray[np.int64], out: dict[str, NDArray[np.float64]]) -> None:
    """Replay the 64-item rule row by row for the cards that exceed it (their seen flags may differ)."""
    for kind, column in (("device", "device_id"), ("terminal", "terminal_id")):
        heavy = (
            frame.group_by("card_token").agg(pl.col(column).drop_nulls().n_unique().alias("n"))
            .filter(pl.col("n") > RECENT_ITEMS).get_column("card_token")
        )  # fmt: skip
        if heavy.len() == 0:
            continue
        rows = frame.with_row_index("_i").filter(pl.col("card_token").is_in(heavy.implode()))
        members: dict[str, dict[str, int]] = {}
        for index, card, item in rows.select("_i", "card_token", column).iter_rows():
            if item is None:
                continue
            t = int(times[index])
            items = members.setdefault(card, {})
            out[f"{kind}_seen"][index] = float(item in items)
            if item not in items or t > items[item]:
                items[item] = t
            if len(items) > RECENT_ITEMS:
                del items[min(items, key=lambda name: (items[name], item_id(name)))]


def build_features_fast(
    transactions: pl.DataFrame, labels: pl.DataFrame | None = None, *, label_delay: timedelta = timedelta(0)
) -> pl.DataFrame:
    """``txn_id`` and every feature (FEATURE_NAMES order, Float64, null = missing) for each row, in input order."""
    if transactions.get_column("txn_id").n_unique() != transactions.height:
        raise ValueError("transaction ids must be unique in a history")
    frame = transactions.with_row_index("_row").sort("event_time", "_row", maintain_order=True)
    n = frame.height
    times = frame.get_column("event_time").dt.epoch("us").to_numpy()
    amount = frame.get_column("amount").to_numpy()
    cents = (np.floor(np.abs(amount) * 100 + 0.5) * np.sign(amount)).astype(np.int64)
    capped = np.minimum(np.abs(cents), SQUARE_CAP_CENTS)
    squares = capped * capped
    ones = np.ones(n, dtype=np.int64)
    card = _codes(frame.get_column("card_token"))
    columns: dict[str, NDArray[np.float64]] = {}

    moment = frame.get_column("event_time")
    hours = moment.dt.hour().to_numpy().astype(np.float64)
    channel = frame.get_column("channel")
    columns["amount"] = amount.astype(np.float64)
    columns["hour_of_day"] = hours
    columns["is_weekend"] = (moment.dt.weekday().to_numpy() >= 6).astype(np.float64)
    columns["is_night"] = (hours <= 6).astype(np.float64)
    columns["is_ecommerce"] = np.where(
        channel.is_null().to_numpy(), np.nan, channel.is_in(["ecommerce", "moto"]).to_numpy().astype(np.float64)
    )
    totals = {}
    for name in ("1h", "24h", "7d", "30d"):
        window = WINDOWS[name]
        bucket = times // (RESOLUTIONS[window.resolution] * 1_000_000)
        count, summed, squared = _window_totals(card, bucket, [ones, cents, squares], window.buckets)
        totals[name] = (count, summed, squared)
        safe = np.maximum(count, 1)
        variance = count.astype(object) * squared.astype(object) - summed.astype(object) ** 2  # exact integers
        std = np.sqrt(np.maximum(variance.astype(np.float64), 0)) / safe / 100
        columns[f"card_count_{name}"] = count.astype(np.float64)
        columns[f"card_sum_{name}"] = summed / 100
        columns[f"card_mean_{name}"] = np.where(count > 0, summed / safe / 100, np.nan)
        columns[f"card_std_{name}"] = np.where(count >= 2, std, np.nan)
    count, summed, squared = totals["30d"]
    prev_n, prev_sum, prev_sq = count - 1, summed - cents, squared - squares
    mean = prev_sum / np.maximum(prev_n, 1)
    spread = np.sqrt(np.maximum((prev_n.astype(object) * prev_sq.astype(object) - prev_sum.astype(object) ** 2)
                                .astype(np.float64), 0)) / np.maximum(prev_n, 1)  # fmt: skip
    columns["card_amount_ratio_30d"] = np.where(
        (prev_n >= 1) & (mean > 0), amount * 100 / np.where(mean > 0, mean, 1), np.nan
    )
    columns["card_amount_zscore_30d"] = np.where(
        (prev_n >= 2) & (spread > 0), (amount * 100 - mean) / np.where(spread > 0, spread, 1), np.nan
    )
    ordered = frame.with_columns(_t=pl.Series(times))
    previous = ordered.select(pl.col("_t").shift(1).over("card_token")).to_series().to_numpy()
    columns["card_seconds_since_last"] = np.where(np.isnan(previous.astype(np.float64)), np.nan,
                                                  np.maximum(0.0, (times - np.nan_to_num(previous)) / 1e6))  # fmt: skip
    columns |= _geo(ordered, times)
    recent = _recent(frame, times)
    columns["card_distinct_terminals_24h"] = recent["terminal"]
    columns["card_distinct_merchants_24h"] = recent["merchant"]
    columns["card_distinct_countries_24h"] = recent["country"]
    columns["card_new_device"] = np.where(np.isnan(recent["device_seen"]), np.nan, 1 - recent["device_seen"])
    columns["card_new_terminal"] = np.where(np.isnan(recent["terminal_seen"]), np.nan, 1 - recent["terminal_seen"])

    days = times // _DAY_US
    deltas = _label_deltas(labels if labels is not None else pl.DataFrame(), label_delay)
    columns["card_fraud_count_30d"] = _fraud_counts(
        frame.get_column("card_token"), times, days, deltas, "card", (KEPT["d"],)
    )[0].astype(np.float64)
    for kind, column in (("terminal", "terminal_id"), ("merchant", "merchant_id")):
        ids = frame.get_column(column)
        code = _codes(ids)
        counts = [_window_totals(code, days, [ones], WINDOWS[name].buckets)[0] for name in PLACE_WINDOWS]
        # Rates look at the window ending LABEL_DELAY_DAYS before the payment's day (payments old enough).
        last = days - LABEL_DELAY_DAYS
        lengths = tuple(WINDOWS[name].buckets for name in FRAUD_WINDOWS)
        frauds = _fraud_counts(ids, times, last, deltas, kind, lengths)
        labelled = [_range_counts(code, days, last, length) for length in lengths]
        present = code >= 0
        for name, value in zip(PLACE_WINDOWS, counts, strict=True):
            columns[f"{kind}_count_{name}"] = np.where(present, value, np.nan)
        for name, value, total in zip(FRAUD_WINDOWS, frauds, labelled, strict=True):
            rate = np.where(total > 0, value / np.maximum(total, 1), 0.0)
            columns[f"{kind}_fraud_rate_{name}"] = np.where(present, rate, np.nan)
    matrix = pl.DataFrame({name: columns[name] for name in FEATURE_NAMES}).fill_nan(None)
    result = pl.concat([frame.select("_row", "txn_id"), matrix], how="horizontal")
    return result.sort("_row").drop("_row")


def _geo(ordered: pl.DataFrame, times: NDArray[np.int64]) -> dict[str, NDArray[np.float64]]:
    """km/h from the card's previous card-present payment with geo (NaN when not computable)."""
    present = (pl.col("channel") == "card_present") & pl.col("lat").is_not_null() & pl.col("lon").is_not_null()
    previous = ordered.select(
        *(pl.when(present).then(pl.col(c)).otherwise(None).shift(1).forward_fill().over("card_token").alias(f"p_{c}")
          for c in ("_t", "lat", "lon")),
        present.fill_null(False).alias("here"),
    )  # fmt: skip
    p_t, p_lat, p_lon = (previous.get_column(c).to_numpy().astype(np.float64) for c in ("p__t", "p_lat", "p_lon"))
    here = previous.get_column("here").to_numpy()
    lat, lon = (ordered.get_column(c).to_numpy().astype(np.float64) for c in ("lat", "lon"))
    r1, r2 = np.radians(p_lat), np.radians(lat)
    a = np.sin((r2 - r1) / 2) ** 2 + np.cos(r1) * np.cos(r2) * np.sin(np.radians(lon - p_lon) / 2) ** 2
    distance = 2 * 6_371.0 * np.arcsin(np.sqrt(np.minimum(1.0, a)))
    hours = np.maximum(np.abs(times - p_t) / 1e6, 60.0) / 3_600
    return {"card_geo_speed_kmh": np.where(here & ~np.isnan(p_t), distance / hours, np.nan)}
