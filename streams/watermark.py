"""Which consumed offsets may be committed: the in-order watermark of batches whose outputs are durable.

The scoring consumer (:mod:`streams.consumer`) opens a :class:`Ticket` for every batch it hands to the agent, in
consume order. A ticket is *done* once three things hold:

- the agent has finished with the batch (:meth:`Ticket.finish`: every output produced, every log row appended);
- the broker acknowledged every message the batch produced (:meth:`Ticket.delivered`, from the producer's
  delivery reports);
- every log row the batch appended is in a sealed file (:meth:`Ticket.logged`: ``(writer, sequence)`` pairs,
  done when ``writer.durable >= sequence``).

:meth:`Watermark.advance` pops the done tickets from the front, in order, and returns the positions to commit: for
each partition, one past the last offset of the popped batches. A ticket that is not done holds back every later
one, so a committed offset never passes a record whose outputs could still be lost: a crash redelivers from the
last commit, it never skips. Partitions revoked from this worker (:meth:`Watermark.release`) are never committed
again by it, even if a batch of theirs finishes later.

Threads: tickets are opened and watermarks advanced by the consumer's thread, finished by the event loop's,
delivered by the producer's delivery thread; each fact is one attribute written once by one thread, and
:meth:`Watermark.advance` only reads them (a lock guards the queue itself).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Durable", "Partition", "Ticket", "Watermark"]

Partition = tuple[str, int]
"""(topic, partition)."""


class Durable(Protocol):
    """A log whose appends are numbered and become durable in order (:class:`fraudpipe.groupcommit.GroupWriter`)."""

    @property
    def durable(self) -> int: ...

    def flush(self) -> int: ...


@dataclass(slots=True, eq=False)
class Ticket:
    """One batch on its way to durability; ``last`` holds the last offset of each partition in the batch."""

    last: dict[Partition, int]
    finished: bool = False
    outputs_acknowledged: bool = False
    logs: list[tuple[Durable, int]] = field(default_factory=list)

    def logged(self, writer: Durable, sequence: int) -> None:
        """The batch's rows are ``writer``'s append number ``sequence``: the ticket waits for it to be durable."""
        self.logs.append((writer, sequence))

    def delivered(self) -> None:
        """Every message the batch produced is acknowledged by the broker."""
        self.outputs_acknowledged = True

    def finish(self) -> None:
        """The agent is done with the batch: nothing more will be produced or logged for it."""
        self.finished = True

    @property
    def done(self) -> bool:
        return (self.finished and self.outputs_acknowledged
                and all(writer.durable >= sequence for writer, sequence in self.logs))  # fmt: skip


class Watermark:
    """Tickets in consume order, and the offsets their completion makes committable (module docstring)."""

    def __init__(self) -> None:
        self._open: deque[Ticket] = deque()
        self._next: dict[Partition, int] = {}
        self._released: set[Partition] = set()
        self._lock = threading.Lock()

    def open(self, last: dict[Partition, int]) -> Ticket:
        """A ticket for a batch holding, per partition, records up to offset ``last[partition]``."""
        ticket = Ticket(dict(last))
        with self._lock:
            self._open.append(ticket)
        return ticket

    def acquire(self, partitions: Iterable[Partition]) -> None:
        """``partitions`` are assigned to this worker (again): tickets opened before a revoke no longer speak for
        them — their position is what the group committed, wherever the last owner left it."""
        with self._lock:
            for partition in partitions:
                self._released.discard(partition)
                self._next.pop(partition, None)
                for ticket in self._open:
                    ticket.last.pop(partition, None)

    def advance(self) -> dict[Partition, int]:
        """Pop the done tickets from the front; the partitions whose committable position moved, with it (one past
        the last offset of their done batches)."""
        moved: dict[Partition, int] = {}
        with self._lock:
            while self._open and self._open[0].done:
                for partition, offset in self._open.popleft().last.items():
                    if partition not in self._released and offset + 1 > self._next.get(partition, -1):
                        self._next[partition] = moved[partition] = offset + 1
        return moved

    def positions(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        """Every committable position reached so far (of ``partitions`` only, if given)."""
        with self._lock:
            wanted = set(self._next) if partitions is None else set(partitions)
            return {p: o for p, o in self._next.items() if p in wanted and p not in self._released}

    def pending(self) -> int:
        """Tickets not yet popped."""
        with self._lock:
            return len(self._open)

    def writers(self) -> list[Durable]:
        """The logs the open tickets wait for (to flush them when draining)."""
        with self._lock:
            found = {id(w): w for ticket in self._open for w, _ in ticket.logs}
        return list(found.values())

    def release(self, partitions: Iterable[Partition]) -> None:
        """``partitions`` are no longer this worker's: their positions are forgotten and never committed again."""
        with self._lock:
            for partition in partitions:
                self._released.add(partition)
                self._next.pop(partition, None)
