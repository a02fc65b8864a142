"""`evalstream collect`: a trace becomes a dataset item as POST /v1/datasets/{id}/items takes it."""

from __future__ import annotations

from services.collect import as_item
from services.ingest.commands import UpsertItems

TRACE = {"trace_id": "t-1", "input": {"q": "capital of France?"}, "output": "Paris",
         "metadata": {"env": "prod"}, "scores": [], "status": "succeeded"}


def test_a_trace_becomes_an_item_keyed_by_its_id():
    assert as_item(TRACE) == {"id": "t-1", "input": {"q": "capital of France?"},
                              "metadata": {"env": "prod", "source_trace_id": "t-1"}}
    assert as_item(TRACE, "output")["expected_output"] == "Paris"
    bare = as_item({"trace_id": "t-2", "output": None})
    assert bare == {"id": "t-2", "input": None, "metadata": {"source_trace_id": "t-2"}}
    assert "expected_output" not in as_item({"trace_id": "t-3", "output": None}, "output")
    # What the ingest API takes, field for field.
    UpsertItems.model_validate({"items": [as_item(TRACE, "output"), bare]})
