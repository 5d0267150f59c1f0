"""Which offsets of one polled batch are done, so that only a finished prefix is ever committed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kafka import TopicPartition


class PolledBatch:
    """Which offsets of a polled batch are still open, to know what may be committed."""

    def __init__(self, records: Mapping[TopicPartition, Sequence[Any]]):
        self.open: dict[TopicPartition, set[int]] = {tp: {r.offset for r in rs} for tp, rs in records.items()}
        self.next: dict[TopicPartition, int] = {
            tp: max(r.offset for r in rs) + 1 for tp, rs in records.items()
        }
        self.first: dict[TopicPartition, int] = {tp: min(r.offset for r in rs) for tp, rs in records.items()}

    def done(self, topic: str, partition: int, offset: int) -> None:
        self.open[TopicPartition(topic, partition)].discard(offset)

    def commit_offset(self, tp: TopicPartition) -> int:
        """The next offset to read: everything below it is done (the first open one, or the end)."""
        return min(self.open[tp]) if self.open[tp] else self.next[tp]
