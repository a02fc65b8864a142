"""The dead-letter topic: which records consumers gave up on, and why (`evalstream dead-letters`),
and sending them back where they came from once the cause is fixed (`evalstream dead-letters
redrive`).

A consumer dead-letters a record it cannot take (undecodable, of a type it does not know, refused
by the read model) unchanged, with `dlq_*` headers saying where it was and why
(services/messaging.py: EventPublisher.dead_letter). A redrive publishes each such record again,
unchanged but for those headers, to the topic it was consumed from, once for each service that
gave up on it, with a `redriven_for` header naming that service: the other service's consumers
skip it (a trace the projections refused is not scored again, which for an LLM judge would be
another paid call). A record that still cannot be taken is dead-lettered again, and a later
redrive finds it again. (Rebuilds and replays read a redriven copy like any record: it has its
original's event id, which they apply once.)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from schemas.envelope import REDRIVEN_FOR
from services.log_reader import LogReader
from services.messaging import EventPublisher
from services.settings import Settings

# Headers a dead-lettering consumer adds; a redrive takes them off again.
DLQ_HEADER_PREFIX = "dlq_"
# Where a redriven record was in the dead-letter topic ("<topic>[<partition>]@<offset>").
REDRIVEN_FROM = "redriven_from"


@dataclass
class DeadLetter:
    topic: str  # where the record was consumed from
    partition: int
    offset: int
    consumer: str  # the service that gave up on it
    reason: str
    ce_type: str | None
    ce_id: str | None
    dead_lettered_at: str  # when it reached the dead-letter topic (the record's timestamp)
    redriven_from: str | None  # an earlier dead letter of it, when a redrive sent it back

    @classmethod
    def of(cls, record) -> DeadLetter:
        h = {k: (v or b"").decode(errors="replace") for k, v in record.headers or ()}
        return cls(topic=h.get("dlq_topic", "?"), partition=int(h.get("dlq_partition", -1)),
                   offset=int(h.get("dlq_offset", -1)), consumer=h.get("dlq_consumer", "?"),
                   reason=h.get("dlq_reason", "?"), ce_type=h.get("ce_type"),
                   ce_id=h.get("ce_id"),
                   dead_lettered_at=datetime.fromtimestamp(record.timestamp / 1000,
                                                           UTC).isoformat(),
                   redriven_from=h.get(REDRIVEN_FROM))


async def dead_letters(settings: Settings) -> list[DeadLetter]:
    """Every record of the dead-letter topic so far, oldest first per partition, with why it is
    there (the `dlq_*` headers the consumers added)."""
    out: list[DeadLetter] = []
    async with LogReader(settings, [settings.topics.dead_letter],
                         client_id="evalstream-dead-letters") as reader:
        async for batch in reader.batches(await reader.end_offsets()):
            out.extend(DeadLetter.of(record) for record in batch)
    return out


def redrive_group(settings: Settings) -> str:
    """Where redrives keep their place in the dead-letter topic (a group no consumer joins)."""
    return f"{settings.topics.dead_letter}.redriven"


@dataclass
class RedriveReport:
    dry_run: bool
    read: int = 0  # dead letters read: those since the last redrive
    redriven: dict[str, int] = field(default_factory=dict)  # records sent back, per topic
    # dead letters of a record already sent back for the same service in this redrive
    duplicates: int = 0
    unroutable: int = 0  # no (or an unknown) topic to send back to: left where they are
    origins: list[tuple[str, int, int]] = field(default_factory=list)  # (topic, partition, offset)

    def as_dict(self) -> dict:
        return {"dry_run": self.dry_run, "read": self.read, "redriven": self.redriven,
                "duplicates": self.duplicates, "unroutable": self.unroutable,
                "origins": [list(o) for o in self.origins]}


async def redrive(settings: Settings, *, dry_run: bool = False) -> RedriveReport:
    """Send every dead letter since the last redrive back to the topic it was consumed from, for
    the service that gave up on it (a record both services gave up on is in the dead-letter
    topic twice, and goes back twice, once for each), then remember how far this redrive read.
    With `dry_run`, say what would be sent and send nothing.

    Records are published with acks=all before the place is committed: a redrive interrupted
    in between sends some records again next time, which consumers skip by their event id."""
    report = RedriveReport(dry_run=dry_run)
    routable = set(settings.topics.all()) - {settings.topics.dead_letter}
    seen: set[tuple[str, int, int, str]] = set()  # (origin, service) sent back
    origins: set[tuple[str, int, int]] = set()
    publisher = EventPublisher(settings, "redrive")
    async with LogReader(settings, [settings.topics.dead_letter], client_id="evalstream-redrive",
                         group_id=redrive_group(settings)) as reader:
        until = await reader.end_offsets()
        reader.seek(await reader.committed())
        if not dry_run:
            await publisher.start()
        try:
            async for batch in reader.batches(until):
                out: dict[str, list] = {}
                for record in batch:
                    report.read += 1
                    letter = DeadLetter.of(record)
                    origin = (letter.topic, letter.partition, letter.offset)
                    if letter.topic not in routable:
                        report.unroutable += 1
                        continue
                    if (*origin, letter.consumer) in seen:
                        report.duplicates += 1
                        continue
                    if origin not in origins:
                        origins.add(origin)
                        report.origins.append(origin)
                    seen.add((*origin, letter.consumer))
                    headers = [(k, v) for k, v in record.headers or ()
                               if not k.startswith(DLQ_HEADER_PREFIX)
                               and k not in (REDRIVEN_FROM, REDRIVEN_FOR)]
                    headers.append((REDRIVEN_FROM, f"{record.topic}[{record.partition}]@"
                                                   f"{record.offset}".encode()))
                    if letter.consumer != "?":  # a letter naming no service: back to all
                        headers.append((REDRIVEN_FOR, letter.consumer.encode()))
                    out.setdefault(letter.topic, []).append((record.key, record.value, headers))
                for topic, records in out.items():
                    if not dry_run:
                        await publisher.publish_raw(topic, records)
                    report.redriven[topic] = report.redriven.get(topic, 0) + len(records)
            if not dry_run:
                await reader.commit(until)
        finally:
            if not dry_run:
                await publisher.stop()
    return report


def kinds(letters: list[DeadLetter]) -> Counter:
    """How many dead letters of each kind per consumer (the reason up to its first colon names
    the kind: "invalid TraceCompleted: …")."""
    return Counter((d.consumer, d.reason.split(":", 1)[0]) for d in letters)
