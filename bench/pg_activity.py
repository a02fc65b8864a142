"""Where Postgres time goes, without extensions: pg_stat_activity sampled every 10 ms, counting per
statement how often a backend was running it (and on what it waited), and how often a backend sat
idle inside a transaction (the client's own time between statements)."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter

import asyncpg

_SPACE = re.compile(r"\s+")

QUERY = """
SELECT state, coalesce(wait_event_type || ':' || wait_event, 'CPU') AS waiting,
       left(query, 300) AS query, backend_type
FROM pg_stat_activity
WHERE pid <> pg_backend_pid() AND (datname = current_database() OR datname IS NULL)
"""


def _statement(query: str) -> str:
    text = _SPACE.sub(" ", query).strip()
    return text[:90] + ("…" if len(text) > 90 else "")


class ActivitySampler:
    """Run with `async with`; `summary()` gives the share of samples per activity."""

    def __init__(self, dsn: str, interval: float = 0.01):
        self.dsn, self.interval = dsn, interval
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.samples = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while True:
                self.samples += 1
                for row in await conn.fetch(QUERY):
                    if row["backend_type"] != "client backend":
                        # Background workers wait in their main loop (Activity:*Main) when idle.
                        if row["backend_type"] and not row["waiting"].startswith("Activity:"):
                            self.counts[(row["backend_type"], "active", row["waiting"])] += 1
                        continue
                    if row["state"] in ("active", "idle in transaction"):
                        self.counts[(_statement(row["query"]), row["state"],
                                     row["waiting"] if row["state"] == "active" else "")] += 1
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    async def __aenter__(self) -> ActivitySampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def summary(self, limit: int = 15) -> dict:
        """Busy backends per sample, by activity: 1.0 means one backend busy all the time."""
        if not self.samples:
            return {"samples": 0, "activities": []}
        return {"samples": self.samples, "activities": [
            {"statement": statement, "state": state, "waiting": waiting,
             "backends": round(n / self.samples, 3)}
            for (statement, state, waiting), n in self.counts.most_common(limit)]}
