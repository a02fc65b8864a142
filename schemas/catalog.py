"""Contracts for the catalog: datasets, their items and evaluators, and runs over them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from schemas.common import EvaluatorSpec, Event, Id, JSONValue


class DatasetCreated(Event):
    """A dataset of test cases was created."""

    dataset_id: Id = Field(description="Id of the dataset.")
    name: str = Field(description="Human name of the dataset.")
    description: str | None = Field(None, description="What the dataset tests.")
    evaluators: tuple[EvaluatorSpec, ...] = Field(description="Evaluator specs of the dataset.")
    created_at: datetime = Field(description="When the dataset was created (UTC).")


class DatasetItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: Id = Field(description="Id of the item, given or generated.")
    input: JSONValue = Field(None, description="Input of the test case (any JSON).")
    expected_output: JSONValue = Field(None, description="Expected output (any JSON).")
    metadata: dict[str, JSONValue] | None = Field(None, description="Free-form metadata.")


class DatasetItemsUpserted(Event):
    """Items were added to a dataset or replaced in it."""

    dataset_id: Id = Field(description="Dataset the items belong to.")
    items: tuple[DatasetItem, ...] = Field(description="The items as they now are.")
    upserted_at: datetime = Field(description="When the items were written (UTC).")


class DatasetItemsDeleted(Event):
    """Items were removed from a dataset: runs started later do not count them, and traces can no
    longer name them. Runs that traced them keep those traces and scores. An item upserted again
    after `deleted_at` is back."""

    dataset_id: Id = Field(description="Dataset the items belonged to.")
    item_ids: tuple[Id, ...] = Field(min_length=1, description="Ids of the removed items.")
    deleted_at: datetime = Field(description="When they were removed (UTC).")


class EvaluatorsConfigured(Event):
    """The evaluator specs of a dataset were replaced; later runs snapshot them."""

    dataset_id: Id = Field(description="Dataset whose evaluators changed.")
    evaluators: tuple[EvaluatorSpec, ...] = Field(description="The specs now in force.")
    configured_at: datetime = Field(description="When they were configured (UTC).")


class DatasetBaselineSet(Event):
    """The run a dataset's other runs are compared with by default was chosen, or (no run) the
    choice undone; the latest one stands."""

    dataset_id: Id = Field(description="The dataset.")
    run_id: Id | None = Field(None, description="Its baseline run; none: no baseline.")
    set_at: datetime = Field(description="When it was chosen (UTC).")


class RunStarted(Event):
    """A run of the agent over a dataset started, with a snapshot of the evaluators in force."""

    run_id: Id = Field(description="Id of the run.")
    dataset_id: Id = Field(description="Dataset the run executes.")
    name: str = Field(description="Human name of the run, e.g. a model or prompt version.")
    evaluators: tuple[EvaluatorSpec, ...] = Field(
        description="Specs the run's traces are scored by.")
    metadata: dict[str, JSONValue] | None = Field(None, description="Free-form metadata.")
    total_items: int = Field(ge=0, description="Items in the dataset when the run started.")
    started_at: datetime = Field(description="When the run started (UTC).")


class RunDeleted(Event):
    """A run was deleted: its summary, items, scores and history leave the read models, and its
    later events (traces or scores still in flight) are not applied. The events themselves stay
    in the log until its retention removes them."""

    run_id: Id = Field(description="Id of the deleted run.")
    dataset_id: Id = Field(description="Dataset of the run (the catalog events' key).")
    deleted_at: datetime = Field(description="When the run was deleted (UTC).")


class DatasetDeleted(Event):
    """A dataset was deleted, with its items; each of its runs is deleted by its own RunDeleted,
    published before this event. Later events about the dataset are not applied."""

    dataset_id: Id = Field(description="Id of the deleted dataset.")
    deleted_at: datetime = Field(description="When the dataset was deleted (UTC).")


class ScoringRuleSet(Event):
    """A scoring rule was created or changed: traces outside runs (production traffic) whose
    metadata matches `where` are scored by its evaluators, a sampled share of them. The latest
    one of a name stands."""

    name: Id = Field(description="Name of the rule, unique.")
    evaluators: tuple[EvaluatorSpec, ...] = Field(
        min_length=1, description="Evaluator specs given to the traces the rule selects.")
    sample_rate: float = Field(gt=0, le=1, description="Share of the matching traces scored, "
                                                       "chosen by trace id (the same trace is "
                                                       "always in or out).")
    where: dict[str, JSONValue] = Field(
        default_factory=dict, description="Trace metadata the rule selects: key (dots go into "
                                          "nested objects) → a value, or a list of values any "
                                          "of which matches; empty: every trace outside runs.")
    enabled: bool = Field(True, description="A disabled rule selects no trace.")
    set_at: datetime = Field(description="When the rule was set (UTC).")


class ScoringRuleDeleted(Event):
    """A scoring rule was deleted: traces posted from now on are not scored by it; the scores it
    gave stay."""

    name: Id = Field(description="Name of the deleted rule.")
    deleted_at: datetime = Field(description="When it was deleted (UTC).")
