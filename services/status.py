"""`evalstream status`: is scoring keeping up? For each consumer group, how far its committed
offsets are behind the end of the topics it reads (its lag), and how many records the
dead-letter topic holds (which ones, and why: services/dead_letters.py). Read from Kafka alone,
as any operator's tool would."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from aiokafka.admin import AIOKafkaAdminClient

from services.dead_letters import redrive_group
from services.log_reader import LogReader
from services.settings import Settings


@dataclass
class TopicLag:
    topic: str
    end: int = 0  # records the topic holds (summed over its partitions' end offsets)
    committed: int = 0  # of those, how many the group has committed past
    lag: int = 0  # end - committed, partition by partition (a partition never read: all of it)


@dataclass
class GroupStatus:
    group: str
    service: str
    topics: list[TopicLag] = field(default_factory=list)

    @property
    def lag(self) -> int:
        return sum(t.lag for t in self.topics)


@dataclass
class PipelineStatus:
    groups: list[GroupStatus]
    dead_letters: int  # records the dead-letter topic holds
    dead_letters_pending: int  # of those, how many came since the last redrive

    def as_dict(self) -> dict:
        return {"groups": [asdict(g) | {"lag": g.lag} for g in self.groups],
                "dead_letters": self.dead_letters,
                "dead_letters_pending": self.dead_letters_pending}


def consumer_groups(settings: Settings) -> list[tuple[str, str, list[str]]]:
    """(group, service, topics it reads) of every consumer group evalstream runs."""
    from services.projections.app import projected_topics

    return [(settings.evaluator_group, "evaluator",
             [settings.topics.traces, settings.topics.score_requests]),
            (settings.projections_group, "projections", projected_topics(settings))]


async def pipeline_status(settings: Settings) -> PipelineStatus:
    groups = consumer_groups(settings)
    topics = sorted({t for _, _, ts in groups for t in ts} | {settings.topics.dead_letter})
    reader = LogReader(settings, topics, client_id="evalstream-status")
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap,
                                client_id="evalstream-status")
    await reader.start()
    await admin.start()
    try:
        ends, begins = await reader.end_offsets(), await reader.beginning_offsets()

        async def positions(group: str, partitions: list) -> dict:
            """Where `group` committed, partition by partition (never: the log's beginning)."""
            committed = await admin.list_consumer_group_offsets(group, partitions=partitions)
            return {tp: meta.offset if (meta := committed.get(tp)) is not None
                    and meta.offset >= 0 else begins[tp] for tp in partitions}

        out = []
        for group, service, group_topics in groups:
            status = GroupStatus(group=group, service=service)
            at = await positions(group, [tp for tp in ends if tp.topic in group_topics])
            for topic in group_topics:
                lag = TopicLag(topic=topic)
                for tp in (tp for tp in at if tp.topic == topic):
                    lag.end += ends[tp]
                    lag.committed += at[tp]
                    lag.lag += max(ends[tp] - at[tp], 0)
                status.topics.append(lag)
            out.append(status)
        letters = [tp for tp in ends if tp.topic == settings.topics.dead_letter]
        redriven = await positions(redrive_group(settings), letters)
        return PipelineStatus(
            groups=out, dead_letters=sum(ends[tp] - begins[tp] for tp in letters),
            dead_letters_pending=sum(max(ends[tp] - max(redriven[tp], begins[tp]), 0)
                                     for tp in letters))
    finally:
        await admin.close()
        await reader.stop()
