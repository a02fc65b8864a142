"""The evaluator service: a stateless FastStream consumer group over traces and score requests.

Each batch is decoded (undecodable records go to the dead-letter topic), scored, and its score
events published with acks=all (retried with backoff while the broker is unreachable) before the
batch's offsets are committed: at-least-once, and the deterministic event ids make a redelivered
batch harmless downstream.
"""

from __future__ import annotations

import logging

from faststream import FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from services import metrics
from services.evaluator import plugins
from services.evaluator.llm_judge import LLMJudge
from services.evaluator.scoring import score_cases
from services.messaging import (
    EventPublisher,
    broker_factory,
    decode_records,
    ensure_topics,
    subscribe_batches,
    until_done,
)
from services.settings import Settings

log = logging.getLogger(__name__)


def register(broker: KafkaBroker, settings: Settings, publisher: EventPublisher,
             judge: LLMJudge) -> None:
    async def on_scoring_cases(msg: KafkaMessage) -> None:
        with metrics.consumed_batch("evaluator", msg.raw_message, msg.consumer):
            envelopes = await decode_records(msg.raw_message, publisher)
            scored = await score_cases(envelopes, judge, settings.async_evaluators)
            # The broker unreachable: the scored batch (and its judge verdicts) is kept and its
            # publication retried with backoff (services/messaging.py).
            await until_done(lambda: publisher.publish(settings.topics.scores, scored),
                             "publishing a batch's scores", settings.retry)
            metrics.scored_cases(scored)

    # A judge's (or an async plugin's) calls take the batch's time: with one configured, batches
    # are smaller, so that they end well within the deadline even when every case asks for it.
    limits = ([settings.llm_judge.max_batch] if judge.configured else []) + (
        [settings.async_evaluators.max_batch] if plugins.any_async() else [])
    subscribe_batches(broker, settings, [settings.topics.traces, settings.topics.score_requests],
                      settings.evaluator_group, on_scoring_cases,
                      max_records=min([settings.batch_max_records, *limits]) if limits else None)


def application_factory(settings: Settings) -> FastStream:
    plugins.load(settings.evaluator_plugins)
    broker = broker_factory(settings)
    publisher = EventPublisher(settings, "evaluator")
    judge = LLMJudge(settings.llm_judge)
    register(broker, settings, publisher, judge)
    app = FastStream(broker, logger=log)

    @app.on_startup
    async def _start() -> None:
        metrics.serve(settings.host, settings.metrics_port)
        await ensure_topics(settings)
        await publisher.start()

    @app.after_shutdown
    async def _stop() -> None:
        await publisher.stop()
        await judge.aclose()

    return app
