"""Projections: consumers that build the read models, and the query API that reads them.

A consumed batch is decoded (undecodable records go to the dead-letter topic) and applied together
with its event ids, so a redelivered or duplicated event changes nothing: in lanes by partition,
each in a transaction of its own, one decoded while Postgres applies another (docs/adr/0010).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import asyncpg
from fastapi import Depends, FastAPI
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage

from schemas.envelope import Envelope
from services import metrics
from services.database import create_pool
from services.http import install_error_handlers, require_api_key
from services.messaging import (
    EventPublisher,
    broker_factory,
    decode_records,
    ensure_topics,
    in_lanes,
    subscribe_batches,
    until_done,
)
from services.projections.api import router
from services.projections.live_schema import LiveReadModelPool, enter_live_schema
from services.projections.read_models import apply_batch
from services.projections.rescoring_api import router as rescoring_router
from services.projections.retention import keep_retention
from services.settings import Settings

log = logging.getLogger(__name__)


# Errors about an event's data rather than about Postgres being there: the batch is applied
# event by event, and the events refused go to the dead-letter topic (anything else is retried).
REFUSALS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError,
            asyncpg.ProgramLimitExceededError)


def projected_topics(settings: Settings) -> list[str]:
    """The topics the read models are built from (live here, from offset zero by a rebuild)."""
    return [settings.topics.catalog, settings.topics.traces, settings.topics.scores]


def register(broker: KafkaBroker, settings: Settings, state: dict) -> None:
    async def on_events(msg: KafkaMessage) -> None:
        # Each lane applied in a transaction of its own while the next is decoded.
        with metrics.consumed_batch("projections", msg.raw_message, msg.consumer):
            await in_lanes(msg.raw_message, settings.apply_lanes,
                           lambda lane: decode_records(lane, state["publisher"]), apply_lane)

    async def apply_lane(records: Sequence, envelopes: list[Envelope]) -> None:
        # Postgres unreachable: the decoded lane is retried with backoff (services/messaging.py).
        await until_done(lambda: apply(records, envelopes), "applying a batch", settings.retry)

    async def apply(records: Sequence, envelopes: list[Envelope]) -> None:
        try:
            async with state["consumer_pool"].acquire() as conn, conn.transaction():
                # Into whichever schema is live (a rebuild may have switched it), docs/adr/0006.
                await enter_live_schema(conn, settings.read_model_schema)
                await apply_batch(conn, envelopes)
        except REFUSALS as e:
            log.warning("a batch Postgres refuses (%s); applying its events one by one", e)
            await apply_one_by_one(records, envelopes)

    async def apply_one_by_one(records: Sequence, envelopes: list[Envelope]) -> None:
        """A valid event that Postgres cannot store (a NUL in a string, say) must not stall its
        partition: the others are applied, it goes to the dead-letter topic with the reason."""
        by_id = {env.id: env for env in envelopes}
        refused = []
        async with state["consumer_pool"].acquire() as conn, conn.transaction():
            await enter_live_schema(conn, settings.read_model_schema)
            for record in records:
                env = by_id.get(dict(record.headers or ()).get("ce_id", b"").decode())
                if env is None:
                    continue  # undecodable: already dead-lettered
                try:
                    async with conn.transaction():  # a savepoint per event
                        await apply_batch(conn, [env])
                except REFUSALS as e:
                    refused.append((record, f"refused by the read model: {e}"))
        if refused:
            await state["publisher"].dead_letter(refused)

    subscribe_batches(broker, settings, projected_topics(settings), settings.projections_group,
                      on_events)


def application_factory(settings: Settings, *, consume: bool = True) -> FastAPI:
    """The query API; with `consume`, the projection consumers run in the same process."""
    state: dict = {}
    broker = broker_factory(settings) if consume else None
    if broker is not None:
        register(broker, settings, state)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        live = LiveReadModelPool(settings.dsn, settings.read_model_schema, max_size=10,
                                 on_switch=lambda pool: setattr(app.state, "pool", pool))
        app.state.pool = await live.start()
        app.state.live_read_model = live
        publisher = state["publisher"] = EventPublisher(settings, "projections")
        try:
            if broker is not None:
                # A batch's lanes at once; the schema is chosen per lane.
                state["consumer_pool"] = await create_pool(
                    settings.dsn, settings.read_model_schema,
                    max_size=settings.consumers * settings.apply_lanes + 2)
                await ensure_topics(settings)
                await publisher.start()
                await broker.start()
                if settings.retention.outside_runs is not None:
                    state["sweeper"] = asyncio.create_task(
                        keep_retention(settings, state["consumer_pool"]), name="retention")
            yield
        finally:
            if "sweeper" in state:
                state["sweeper"].cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await state["sweeper"]
            if broker is not None:
                await broker.stop()
                await publisher.stop()
                if "consumer_pool" in state:
                    await state["consumer_pool"].close()
            await live.stop()

    app = FastAPI(title="evalstream query API", version="1", lifespan=lifespan)
    app.state.settings = settings
    install_error_handlers(app)
    metrics.instrument(app)
    app.include_router(router, dependencies=[Depends(require_api_key)])
    app.include_router(rescoring_router, dependencies=[Depends(require_api_key)])

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok"}

    return app
