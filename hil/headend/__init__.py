"""The head-end simulator: MQTT workers (shared subscription, mTLS), the idempotent SQLite store,
and the seed 002 readings API (aiohttp). ``hil headend`` runs all of it."""

from hil.headend.db import HeadEndDb, HeadEndDbError, HeadEndStats, Ingested
from hil.headend.store import HeadEndError, InvalidMessage, ReadingStore
from hil.headend.subscriber import HeadEnd

__all__ = [
    "HeadEnd",
    "HeadEndDb",
    "HeadEndDbError",
    "HeadEndError",
    "HeadEndStats",
    "Ingested",
    "InvalidMessage",
    "ReadingStore",
]
