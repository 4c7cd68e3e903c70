"""Runs in flight (layer 3): a run's event log that many readers follow (`channel`), the one
driver that runs an event source into it and ends it however it ends (`driver`), runs by id
(`registry`), the resume grace of an abandoned run (`grace`), and, with several workers, the
shared log in Redis (`redis`, `redis_log`). Imports only layers 0-2."""

from __future__ import annotations

from tokenrelay.runs.channel import RunChannel
from tokenrelay.runs.driver import RunDriver
from tokenrelay.runs.registry import RunRegistry

__all__ = ["RunChannel", "RunDriver", "RunRegistry"]
