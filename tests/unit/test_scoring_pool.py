"""The API's scoring pool on in-memory twins (store, decision memory) with a real small champion: micro-batches
without two of one id, reused ids refused, the bound on waiting requests, failures and shutdown, and publication
that does not depend on the client staying."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from features.memory import InMemoryFeatureStore
from features.snapshot import StoreReply
from fraudpipe.clock import FixedClock
from fraudpipe.contracts import Transaction
from fraudpipe.settings import ScoringSettings
from models.registry import Registry
from streams.pipeline import Batch, InMemoryDecisionMemory, Models, Pipeline
from streams.scoring_pool import PoolClosedError, PoolFullError, Scored, ScoringFailedError, ScoringPool
from tests import factories

T0 = factories.T0


@pytest.fixture(scope="module")
def champion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    factories.register_champion(root)
    return root


class GatedStore(InMemoryFeatureStore):
    """The in-memory store, held at each call until ``gate`` opens (a Redis that stalls); counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0
        self.fail = False

    def raw(self, txns: Sequence[Transaction]) -> StoreReply:
        self.calls += 1
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("a bug in the store")
        return super().raw(txns)


def _pool(root: Path, store: InMemoryFeatureStore, published: list[Batch], **limits: Any) -> ScoringPool:
    clock = FixedClock(T0)
    models = Models(Registry(root), "champion", threads=1, poll_s=60, clock=clock)
    models.start()
    pipeline = Pipeline(store, InMemoryDecisionMemory(), models, ScoringSettings(), clock)
    return ScoringPool([pipeline], published.append, clock, **{"max_pending": 64, "batch_max": 8, **limits})


def _txn(i: int, **overrides: Any) -> Transaction:
    return factories.transaction(txn_id=f"p{i}", card_token=f"tok_pool{i % 3}", event_time=T0.isoformat(),
                                 **overrides)  # fmt: skip


def test_waiting_requests_are_decided_in_micro_batches_each_with_its_own_decision(champion_dir: Path) -> None:
    store, published = GatedStore(), []
    pool = _pool(champion_dir, store, published)

    async def main() -> list[Scored]:
        store.gate.clear()  # the first batch stalls while the others queue up behind it
        first = asyncio.ensure_future(pool.score(_txn(0)))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(pool.score(_txn(i))) for i in range(1, 20)]
        await asyncio.sleep(0.05)
        store.gate.set()
        return [await first, *[await r for r in rest]]

    scored = asyncio.run(main())
    pool.close()
    assert [s.decision.txn_id for s in scored if s.decision] == [f"p{i}" for i in range(20)]
    assert [len(b.decisions()) for b in published] == [1, 8, 8, 3]  # batches of at most batch_max, oldest first
    assert pool.pending == 0


def test_one_id_twice_never_shares_a_batch_and_other_content_is_refused(champion_dir: Path) -> None:
    store, published = GatedStore(), []
    pool = _pool(champion_dir, store, published)

    async def main() -> list[Scored]:
        store.gate.clear()
        blocker = asyncio.ensure_future(pool.score(_txn(99)))
        await asyncio.sleep(0.05)
        same = [asyncio.ensure_future(pool.score(_txn(1))), asyncio.ensure_future(pool.score(_txn(1)))]
        other = asyncio.ensure_future(pool.score(_txn(1, amount=9_999.0)))
        await asyncio.sleep(0.05)
        store.gate.set()
        await blocker
        return [await same[0], await same[1], await other]

    first, again, reused = asyncio.run(main())
    pool.close()
    assert first.decision is not None and again.decision is not None
    assert (again.decision.decision, again.decision.score) == (first.decision.decision, first.decision.score)
    assert reused.decision is None  # txn_id_conflict: never another payment's decision
    assert all(len({d.txn_id for d in b.decisions()}) == len(b.decisions()) for b in published)
    assert sum(len(b.conflicts) for b in published) == 1


def test_past_max_pending_a_request_is_refused_at_once(champion_dir: Path) -> None:
    store, published = GatedStore(), []
    pool = _pool(champion_dir, store, published, max_pending=3, batch_max=1)

    async def main() -> None:
        store.gate.clear()
        held = [asyncio.ensure_future(pool.score(_txn(i))) for i in range(3)]
        await asyncio.sleep(0.05)
        assert pool.full
        with pytest.raises(PoolFullError):
            await pool.score(_txn(3))
        store.gate.set()
        await asyncio.gather(*held)
        assert not pool.full
        await pool.score(_txn(4))

    asyncio.run(main())
    pool.close()


def test_a_failing_batch_fails_its_requests_only(champion_dir: Path) -> None:
    store, published = GatedStore(), []
    pool = _pool(champion_dir, store, published)

    async def main() -> None:
        store.fail = True
        with pytest.raises(ScoringFailedError):
            await pool.score(_txn(0))
        store.fail = False
        assert (await pool.score(_txn(1))).decision is not None

    asyncio.run(main())
    pool.close()
    assert pool.pending == 0


def test_a_client_that_hangs_up_still_gets_its_payment_published(champion_dir: Path) -> None:
    store, published = GatedStore(), []
    pool = _pool(champion_dir, store, published)

    async def main() -> None:
        store.gate.clear()
        waiting = asyncio.ensure_future(pool.score(_txn(0)))
        await asyncio.sleep(0.05)
        waiting.cancel()  # the HTTP client went away mid-request
        store.gate.set()
        for _ in range(100):
            if published:
                break
            await asyncio.sleep(0.02)

    asyncio.run(main())
    pool.close()
    assert [d.txn_id for b in published for d in b.decisions()] == ["p0"]  # features applied => audit record
    assert pool.pending == 0


def test_closing_refuses_what_still_waits(champion_dir: Path) -> None:
    store, published = GatedStore(), []
    pool = _pool(champion_dir, store, published, batch_max=1)

    async def main() -> list[BaseException | Scored]:
        store.gate.clear()
        futures = [asyncio.ensure_future(pool.score(_txn(i))) for i in range(3)]
        await asyncio.sleep(0.05)
        closing = asyncio.ensure_future(asyncio.to_thread(pool.close))
        await asyncio.sleep(0.05)
        store.gate.set()
        await closing
        return await asyncio.gather(*futures, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert isinstance(outcomes[0], Scored)  # the batch in flight finishes
    assert all(isinstance(o, PoolClosedError) for o in outcomes[1:])
    with pytest.raises(PoolClosedError):
        asyncio.run(pool.score(_txn(5)))
