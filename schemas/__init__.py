"""evalstream's event contracts: frozen pydantic models, one module per contract area."""

from schemas.catalog import (
    DatasetBaselineSet,
    DatasetCreated,
    DatasetDeleted,
    DatasetItem,
    DatasetItemsDeleted,
    DatasetItemsUpserted,
    EvaluatorsConfigured,
    RunDeleted,
    RunStarted,
    ScoringRuleDeleted,
    ScoringRuleSet,
)
from schemas.common import DEFAULT_EVALUATORS, EvaluatorSpec, run_item_key, score_id
from schemas.scores import (
    CaseFailure,
    CaseScore,
    CaseScored,
    EvaluationFailed,
    ScoreRecorded,
    ScoreRetracted,
)
from schemas.traces import ScoreRequested, ScoringCase, TraceCompleted, Usage

__all__ = [
    "DEFAULT_EVALUATORS", "CaseFailure", "CaseScore", "CaseScored", "DatasetBaselineSet",
    "DatasetCreated",
    "DatasetDeleted",
    "DatasetItem", "DatasetItemsDeleted", "DatasetItemsUpserted",
    "EvaluationFailed", "EvaluatorSpec", "EvaluatorsConfigured", "RunDeleted", "RunStarted",
    "ScoreRecorded", "ScoreRetracted",
    "ScoreRequested", "ScoringCase", "ScoringRuleDeleted", "ScoringRuleSet", "TraceCompleted",
    "Usage", "run_item_key", "score_id",
]
