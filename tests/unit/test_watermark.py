"""The commit watermark: in order, behind acknowledged outputs and durable log rows, never for a released
partition, and tickets from before a revoke do not speak for a partition assigned again."""

from __future__ import annotations

from streams.watermark import Watermark

T = "transactions.v1"


class _Log:
    def __init__(self) -> None:
        self.durable = 0

    def flush(self) -> int:
        return self.durable


def _done(ticket: object) -> None:
    ticket.delivered()  # type: ignore[attr-defined]
    ticket.finish()  # type: ignore[attr-defined]


def test_positions_advance_in_order_behind_every_condition() -> None:
    mark = Watermark()
    log = _Log()
    first = mark.open({(T, 0): 9, (T, 1): 4})
    second = mark.open({(T, 0): 19})
    first.logged(log, 1)
    _done(second)
    assert mark.advance() == {}, "the second batch is done, but the first holds it back"
    first.finish()
    first.delivered()
    assert mark.advance() == {}, "outputs acknowledged, log rows not durable yet"
    log.durable = 1
    assert mark.advance() == {(T, 0): 20, (T, 1): 5}
    assert mark.pending() == 0
    assert mark.positions() == {(T, 0): 20, (T, 1): 5}
    assert mark.advance() == {}, "only what moved"


def test_unfinished_or_unacknowledged_batches_are_never_committed() -> None:
    mark = Watermark()
    only_finished = mark.open({(T, 0): 3})
    only_finished.finish()
    only_delivered = mark.open({(T, 1): 3})
    only_delivered.delivered()
    assert mark.advance() == {}
    assert mark.pending() == 2


def test_a_released_partition_is_not_committed_and_old_tickets_do_not_speak_for_it() -> None:
    mark = Watermark()
    before = mark.open({(T, 0): 9, (T, 1): 9})
    mark.release([(T, 0)])
    _done(before)
    assert mark.advance() == {(T, 1): 10}, "partition 0 was revoked: its position belongs to its new owner"
    stale = mark.open({(T, 2): 50})
    mark.acquire([(T, 2)])  # revoked and assigned again while the ticket was open
    fresh = mark.open({(T, 2): 7})
    _done(stale)
    _done(fresh)
    assert mark.advance() == {(T, 2): 8}, "the position comes from batches read after the new assignment"


def test_writers_lists_each_log_the_open_tickets_wait_for_once() -> None:
    mark = Watermark()
    log, other = _Log(), _Log()
    for sequence in (1, 2):
        mark.open({(T, 0): sequence}).logged(log, sequence)
    mark.open({(T, 1): 1}).logged(other, 1)
    assert {id(w) for w in mark.writers()} == {id(log), id(other)}
