"""`fraudpipe features backfill` and `features show` against real Redis."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import redis

from fraudpipe.settings import Settings
from tests.integration.conftest import run_cli


def test_backfill_is_rerunnable_and_show_is_pii_free(settings: Settings, tmp_path: Path) -> None:
    sim = tmp_path / "sim"
    made = run_cli(settings, "simulate", "--out", str(sim), "--days", "4", "--customers", "60", "--terminals", "120",
                   cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0, made.stderr
    total = int(pl.scan_parquet(sim / "transactions" / "**" / "*.parquet").select(pl.len()).collect().item())
    try:
        first = run_cli(settings, "features", "backfill", str(sim), cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert f"{total:,} transactions ({total:,} newly applied)" in first.stdout
        # Labels known after the last payment are the stream's to bring, not the backfill's: no look-ahead.
        labels = pl.read_parquet(sim / "labels" / "**" / "*.parquet")
        last = pl.scan_parquet(sim / "transactions" / "**" / "*.parquet").select(pl.col("event_time").max()).collect()
        known = labels.filter(pl.col("known_at") <= last.item()).height
        assert 0 < known < labels.height
        assert f"{known:,} labels applied" in first.stdout
        assert f"{labels.height - known:,} labels known after the history ends" in first.stdout
        again = run_cli(settings, "features", "backfill", str(sim), cwd=tmp_path)
        assert f"{total:,} transactions (0 newly applied), 0 labels applied" in again.stdout

        token = pl.read_parquet(sim / "customers.parquet").get_column("card_token")[0]
        shown = run_cli(settings, "features", "show", "--card", token, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "latest payment: 2018-04-0" in shown.stdout
        assert "lat" not in shown.stdout.replace("latest", "")
        frauds = labels.filter((pl.col("known_at") <= last.item()) & pl.col("is_fraud"))
        assert ("blocked" in shown.stdout) == (token in frauds.get_column("card_token").to_list())
        blocked = frauds.row(0, named=True)
        shown = run_cli(settings, "features", "show", "--card", blocked["card_token"], cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "blocked: every payment is declined (card_blocked)" in shown.stdout
        assert blocked["txn_id"] in shown.stdout
        missing = run_cli(settings, "features", "show", "--card", "tok_nobody", cwd=tmp_path)
        assert missing.returncode == 1
        assert missing.stderr.strip() == "error: no online state for card tok_nobody"
    finally:
        with redis.Redis.from_url(settings.redis.url) as client:
            for key in client.scan_iter(match=f"{settings.redis.key_prefix}*", count=1000):
                client.delete(key)
