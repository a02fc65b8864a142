"""All configuration of evalstream, read from the environment (pydantic-settings).

Broker and database URLs use their conventional names (`KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`);
everything else is `EVALSTREAM_*`, nested with `__` (e.g. `EVALSTREAM_TOPICS__TRACES`).
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import cached_property
from typing import Annotated

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ConfigurationError(RuntimeError):
    """A setting that names something unusable (an evaluator plugin that does not load); the
    message says which and why."""


class NotConfigured(RuntimeError):
    """A setting the operation needs has no value (the message names it)."""


class Topics(BaseModel):
    model_config = ConfigDict(extra="forbid")

    catalog: str = "evalstream.catalog"
    traces: str = "evalstream.traces"
    score_requests: str = "evalstream.score-requests"
    scores: str = "evalstream.scores"
    dead_letter: str = "evalstream.dead-letter"

    def all(self) -> list[str]:
        return [self.catalog, self.traces, self.score_requests, self.scores, self.dead_letter]


class LLMJudgeSettings(BaseModel):
    """The LLM-as-judge evaluator's model endpoint (`EVALSTREAM_LLM_JUDGE__*`): any server that
    speaks OpenAI's `POST {base_url}/chat/completions`."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(
        None, description="e.g. https://api.openai.com/v1; unset = llm_judge scores fail with "
                          "a reason saying so.")
    api_key: SecretStr | None = Field(None, description="Sent as `Authorization: Bearer <key>`.")
    model: str = Field("gpt-4o-mini", min_length=1,
                       description="Judge model when a spec names none.")
    concurrency: int = Field(32, ge=1, description="Most judge calls in flight per process.")
    max_batch: int = Field(
        256, ge=1, description="With a judge configured, the evaluator takes at most this many "
                               "records at once, so that a batch's judge calls end well within "
                               "`batch_deadline_s` (256 calls at 32 in flight and ~1 s each: "
                               "~8 s).")
    timeout_s: float = Field(30.0, gt=0, description="Timeout of one HTTP call.")
    max_attempts: int = Field(3, ge=1, description="Attempts per call (429, 5xx, network errors "
                                                   "are retried).")
    backoff_s: float = Field(0.5, ge=0, description="Wait before the first retry; doubles "
                                                    "each time.")
    backoff_max_s: float = Field(8.0, ge=0, description="Longest wait between retries.")
    batch_deadline_s: float = Field(
        120.0, gt=0, description="Longest the evaluator waits for a batch's judge calls; those "
                                 "still unanswered become evaluation failures (rescore them "
                                 "later). Keeps a batch well inside the consumer's 300 s poll "
                                 "interval, past which the group would take its partitions "
                                 "away and deliver the batch again.")


class AsyncEvaluatorSettings(BaseModel):
    """How the evaluator calls async plugin evaluators (`EVALSTREAM_ASYNC_EVALUATORS__*`): a
    batch's calls at once, up to `concurrency`, and no longer than `deadline_s`."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(32, ge=1, description="Most async evaluator calls in flight per "
                                                   "process.")
    max_batch: int = Field(
        256, ge=1, description="With an async evaluator loaded, the evaluator takes at most this "
                               "many records at once, so that a batch's calls end well within "
                               "`deadline_s`.")
    deadline_s: float = Field(
        120.0, gt=0, description="Longest the evaluator waits for a batch's async calls; those "
                                 "still running are cancelled and become evaluation failures "
                                 "(rescore them later).")


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """`90s`, `30m`, `24h`, `7d`, `2w`; ValueError otherwise."""
    if match := _DURATION.fullmatch(text.strip()):
        return timedelta(seconds=float(match[1]) * _SECONDS[match[2]])
    raise ValueError(f"{text!r} is not a duration (90s, 30m, 24h, 7d, 2w)")


class RetentionSettings(BaseModel):
    """How long the read models keep the traces posted outside any run (production traffic):
    `EVALSTREAM_RETENTION__*`, docs/adr/0017. Runs are never touched, and the log keeps every
    event (a rebuild applies the same cut)."""

    model_config = ConfigDict(extra="forbid")

    outside_runs: timedelta | None = Field(
        None, description="Keep traces outside runs, their scores, verdicts and failures this "
                          "long (`30d`, `12w`; unset: for ever); older ones are swept away.")
    sweep_interval_s: float = Field(3600.0, gt=0, description="How often the projections "
                                                              "service sweeps.")

    @field_validator("outside_runs", mode="before")
    @classmethod
    def _duration(cls, v: object) -> object:
        # As well as pydantic's own forms (ISO 8601 `P30D`, a number of seconds); empty: unset.
        if isinstance(v, str) and not v.strip():
            return None
        if isinstance(v, str) and not v.strip().upper().startswith("P"):
            try:
                return float(v)
            except ValueError:
                return parse_duration(v)
        return v

    @field_validator("outside_runs")
    @classmethod
    def _positive(cls, v: timedelta | None) -> timedelta | None:
        if v is not None and v <= timedelta(0):
            raise ValueError("must be longer than 0 (it is how long the traffic is kept)")
        return v


class RetrySettings(BaseModel):
    """How a consumer retries a batch whose work failed (Postgres or the broker down, say):
    `EVALSTREAM_RETRY__*`. The batch is kept and its failed step retried with exponential
    backoff; past `window_s` it is given back, to be delivered again."""

    model_config = ConfigDict(extra="forbid")

    backoff_s: float = Field(0.5, ge=0, description="Wait before the first retry; doubles each "
                                                    "time.")
    backoff_max_s: float = Field(30.0, ge=0, description="Longest wait between retries.")
    window_s: float = Field(
        120.0, gt=0, description="Longest a batch is retried before it is given back and "
                                 "delivered again; well inside the consumer's 300 s poll "
                                 "interval, past which the group would take its partitions away.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EVALSTREAM_", env_nested_delimiter="__",
                                      extra="forbid")

    kafka_bootstrap_servers: str | None = Field(
        None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS",
                                            "EVALSTREAM_KAFKA_BOOTSTRAP_SERVERS"),
        description="host:port[,host:port]; unset = `evalstream up` starts a local broker.")
    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "EVALSTREAM_DATABASE_URL"),
        description="postgresql://…; unset = `evalstream up` starts an embedded Postgres.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated bearer keys accepted by ingest.")
    evaluator_plugins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated modules or .py files of your own evaluators "
                    "(services/evaluator/plugins.py); give every service the same list.")
    topics: Topics = Topics()
    llm_judge: LLMJudgeSettings = LLMJudgeSettings()
    async_evaluators: AsyncEvaluatorSettings = AsyncEvaluatorSettings()
    retry: RetrySettings = RetrySettings()
    retention: RetentionSettings = RetentionSettings()
    topic_partitions: int = Field(8, ge=1, description="Partitions of topics evalstream creates.")
    host: str = "127.0.0.1"
    ingest_port: int = 8000
    query_port: int = 8001
    # The evaluator's GET /metrics (it has no HTTP API); unset: not served. The HTTP services
    # serve theirs on their own port.
    metrics_port: int | None = None
    catalog_schema: str = "catalog"
    read_model_schema: str = Field("read_model", description="Live read-model schema.")
    reader_password: SecretStr | None = Field(
        None, description="Given by `migrate` to the dashboard views' read-only role "
                          "(evalstream_reader), for a dashboard connecting over the network.")
    dashboard_schema: str = Field(
        "dashboard", description="Schema of the SQL views dashboards read (docs/dashboards.md).")
    evaluator_group: str = "evalstream-evaluator"
    projections_group: str = "evalstream-projections"
    consumers: int = Field(
        1, ge=1, le=16, description="Consumers per evaluator or projections process, in its "
                                    "consumer group, each with its own partitions: while one "
                                    "waits on the broker or Postgres, another works (docs/adr/"
                                    "0007). Keep 1 on the development broker, whose group "
                                    "rebalances falter with several consumers joining at once.")
    apply_lanes: int = Field(
        2, ge=1, le=8, description="Parts a projections consumer splits each batch into, by "
                                   "partition: one is decoded while the one before is applied "
                                   "to Postgres, each in a transaction of its own.")
    batch_max_records: int = Field(2000, ge=1, description="Most records a consumer takes at once.")
    batch_timeout_ms: int = Field(20, ge=1, description="Longest a consumer waits to fill a batch.")
    fetch_max_wait_ms: int = Field(
        20, ge=0, description="Longest the broker holds a fetch when it has nothing new; the "
                              "floor of POST-to-score latency on an idle system.")
    max_traces_per_request: int = 1000
    max_body_bytes: int = Field(16 * 1024 * 1024,
                                description="Largest request body ingest accepts.")
    trace_url_template: str = Field(
        "http://localhost:3000/observability?traceId={trace_id}",
        description="Link to a trace in the team's observability tool.")
    data_dir: str = Field(".evalstream", description="Where `up` keeps its embedded Postgres.")
    log_level: str = "INFO"

    @field_validator("api_keys", "evaluator_plugins", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @cached_property
    def bootstrap(self) -> str:
        if not self.kafka_bootstrap_servers:
            raise NotConfigured("KAFKA_BOOTSTRAP_SERVERS is not set")
        return self.kafka_bootstrap_servers

    @cached_property
    def dsn(self) -> str:
        if not self.database_url:
            raise NotConfigured("DATABASE_URL is not set")
        # SQLAlchemy-style driver suffixes are accepted so one URL serves both asyncpg and alembic.
        return self.database_url.replace("postgresql+asyncpg://", "postgresql://")
