"""Sequences, the paged KV block manager and the continuous-batching scheduler."""
from mistralrs.scheduler.block_manager import BlockManager
from mistralrs.scheduler.scheduler import ScheduledSequence, Scheduler
from mistralrs.scheduler.sequence import Sequence, SequenceStatus

__all__ = ["BlockManager", "ScheduledSequence", "Scheduler", "Sequence", "SequenceStatus"]
