"""Unit tests of the LLM judge's pure parts: prompt building, reply parsing, spec validation,
its registry entry, and what it does when no endpoint is configured."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.common import EvaluatorSpec
from schemas.traces import ScoringCase
from services.evaluator import llm_judge as judge_module
from services.evaluator.evaluators import REGISTRY, Score, SpecError, validate_spec
from services.evaluator.llm_judge import (
    NOT_CONFIGURED,
    LLMJudge,
    LLMJudgeOptions,
    build_messages,
    parse_verdict,
)
from services.settings import LLMJudgeSettings, Settings


def case(output: Any = "Paris", expected: Any = "Paris", input: Any = "Capital of France?"
         ) -> ScoringCase:
    return ScoringCase(trace_id="t", input=input, output=output, expected_output=expected)


def options(**kw: Any) -> LLMJudgeOptions:
    return LLMJudgeOptions(criteria=kw.pop("criteria", "Is the answer correct?"), **kw)


def user_payload(messages: list[dict[str, str]]) -> dict[str, Any]:
    assert [m["role"] for m in messages] == ["system", "user"]
    return json.loads(messages[1]["content"])


# --- build_messages ----------------------------------------------------------------------------


def test_build_messages_carries_criteria_input_output_and_expected_as_json() -> None:
    messages = build_messages(case(output={"answer": "Paris"}, input={"q": "Capital?"}),
                              options(criteria="Is it the capital of France?"))
    assert user_payload(messages) == {
        "criteria": "Is it the capital of France?", "input": {"q": "Capital?"},
        "output": {"answer": "Paris"}, "expected_output": "Paris"}
    system = messages[0]["content"]
    assert "JSON only" in system
    assert '{"score": true or false, "reason": "<one sentence>"}' in system


def test_build_messages_asks_for_a_number_on_the_numeric_scale() -> None:
    boolean = build_messages(case(), options())
    numeric = build_messages(case(), options(scale="numeric"))
    assert '{"score": <a number from 0 to 1>, "reason": "<one sentence>"}' in numeric[0]["content"]
    assert "true or false" not in numeric[0]["content"]
    assert boolean[0] != numeric[0] and boolean[1] == numeric[1]


@pytest.mark.parametrize("expected", [None, "", "  \n"], ids=repr)
def test_build_messages_leaves_out_a_missing_expected_output(expected: Any) -> None:
    assert "expected_output" not in user_payload(build_messages(case(expected=expected),
                                                                options()))


def test_build_messages_keeps_falsy_json_expected_outputs() -> None:
    assert user_payload(build_messages(case(expected=0), options()))["expected_output"] == 0
    assert user_payload(build_messages(case(expected=False), options()))["expected_output"] is False


def test_build_messages_leaves_out_the_expected_output_when_told_to() -> None:
    payload = user_payload(build_messages(case(), options(use_expected=False)))
    assert payload == {"criteria": "Is the answer correct?", "input": "Capital of France?",
                       "output": "Paris"}


def test_a_prompt_of_the_spec_puts_each_field_where_it_says_as_json() -> None:
    prompt = ("Question: $input\nAnswer given: $output\nReference: $expected_output\n"
              "Judge by: $criteria. Costs $$0.")
    messages = build_messages(case(output={"city": "Paris"}), options(prompt=prompt))
    assert messages[1]["content"] == (
        'Question: "Capital of France?"\nAnswer given: {"city": "Paris"}\n'
        'Reference: "Paris"\nJudge by: "Is the answer correct?". Costs $0.')
    assert messages[0] == build_messages(case(), options())[0]  # the reply format, as always
    # Left out (no expected output, or use_expected false), a field reads as null.
    bare = build_messages(case(expected=None), options(prompt="$output vs $expected_output"))
    assert bare[1]["content"] == '"Paris" vs null'


def test_build_messages_is_deterministic_and_keeps_unicode() -> None:
    a = build_messages(case(output="Zürich ✓"), options())
    assert a == build_messages(case(output="Zürich ✓"), options())
    assert "Zürich ✓" in a[1]["content"]


# --- parse_verdict -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [('{"score": true, "reason": "Correct."}', 1.0),
     ('{"score": false, "reason": "Wrong city."}', 0.0),
     ('{"score": "TRUE", "reason": "x"}', 1.0),
     ('{"score": 0, "reason": "x"}', 0.0),
     ('{"score": 1, "reason": "x"}', 1.0)],
)
def test_parse_verdict_boolean(text: str, value: float) -> None:
    score = parse_verdict(text, "boolean")
    assert score.value == value
    assert score.data_type == "boolean"


def test_parse_verdict_keeps_the_reason_as_comment() -> None:
    assert parse_verdict('{"score": false, "reason": "Says Munich, not Berlin."}',
                         "boolean") == Score(0.0, "boolean", comment="Says Munich, not Berlin.")


@pytest.mark.parametrize("raw", [0, 0.0, 0.25, 1, 1.0])
def test_parse_verdict_numeric(raw: float) -> None:
    score = parse_verdict(json.dumps({"score": raw, "reason": "ok"}), "numeric")
    assert score == Score(float(raw), "numeric", comment="ok")


@pytest.mark.parametrize(
    "text",
    ['```json\n{"score": 0.75, "reason": "Mostly."}\n```',
     '```\n{"score": 0.75, "reason": "Mostly."}\n```',
     '  ```JSON {"score": 0.75, "reason": "Mostly."}```  ',
     '\n{"score": 0.75, "reason": "Mostly."}\n'],
    ids=["json-fence", "bare-fence", "one-line-fence", "whitespace"],
)
def test_parse_verdict_accepts_fenced_json(text: str) -> None:
    assert parse_verdict(text, "numeric") == Score(0.75, "numeric", comment="Mostly.")


def test_parse_verdict_truncates_the_reason_to_1000_characters() -> None:
    score = parse_verdict(json.dumps({"score": True, "reason": "x" * 5000}), "boolean")
    assert score.comment == "x" * 1000


def test_parse_verdict_without_a_reason_has_no_comment() -> None:
    assert parse_verdict('{"score": true}', "boolean") == Score(1.0, "boolean")


@pytest.mark.parametrize(
    ("text", "scale", "message"),
    [("The answer is correct.", "boolean", "not JSON"),
     ("", "boolean", "empty"),
     ("```json\n```", "boolean", "empty"),
     ('{"score": true', "boolean", "not JSON"),
     ("[true]", "boolean", "not a JSON object"),
     ('{"verdict": true, "reason": "x"}', "boolean", 'no "score"'),
     ('{"score": "yes"}', "boolean", "not a boolean"),
     ('{"score": 0.5}', "boolean", "not a boolean"),
     ('{"score": null}', "boolean", "not a boolean"),
     ('{"score": 1.5, "reason": "x"}', "numeric", "out of range 0..1"),
     ('{"score": -0.1}', "numeric", "out of range 0..1"),
     ('{"score": NaN}', "numeric", "out of range 0..1"),
     ('{"score": Infinity}', "numeric", "out of range 0..1"),
     ('{"score": "0.8"}', "numeric", "not a number"),
     ('{"score": true}', "numeric", "not a number"),
     ('{"score": null}', "numeric", "not a number")],
)
def test_parse_verdict_rejects_what_it_cannot_read(text: str, scale: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_verdict(text, scale)


def test_parse_verdict_error_quotes_the_reply() -> None:
    with pytest.raises(ValueError) as info:
        parse_verdict("I cannot judge this.", "boolean")
    assert "I cannot judge this." in str(info.value)


# --- spec validation and the registry ----------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [EvaluatorSpec(type="llm_judge", criteria="Is the answer factually correct?"),
     EvaluatorSpec(type="llm_judge", name="correct", criteria="Correct?", model="gpt-4o",
                   scale="numeric", use_expected=False)],
    ids=repr,
)
def test_validate_spec_accepts_llm_judge_specs(spec: EvaluatorSpec) -> None:
    validate_spec(spec)


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [({}, "criteria", "Field required"),
     ({"criteria": ""}, "criteria", "at least 1 character"),
     ({"criteria": "   "}, "criteria", "must not be blank"),
     ({"criteria": 3}, "criteria", "valid string"),
     ({"criteria": "ok?", "scale": "stars"}, "scale", "'boolean' or 'numeric'"),
     ({"criteria": "ok?", "model": ""}, "model", "at least 1 character"),
     ({"criteria": "ok?", "temperature": 0.2}, "temperature", "unknown option"),
     ({"criteria": "ok?", "prompt": "Rate $answer"}, "prompt", "unknown field(s) ['answer']"),
     ({"criteria": "ok?", "prompt": "Costs $5: $output"}, "prompt", "write $$ for a literal $"),
     ({"criteria": "ok?", "prompt": "Is $input answered?"}, "prompt", "the $output")],
    ids=repr,
)
def test_validate_spec_rejects_wrong_llm_judge_specs(options: dict, field: str,
                                                     message: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(EvaluatorSpec(type="llm_judge", **options))
    assert info.value.field == field
    assert message in info.value.message


def test_llm_judge_is_registered_as_a_batched_llm_judge_evaluator() -> None:
    evaluator = REGISTRY["llm_judge"]
    assert (evaluator.type, evaluator.version, evaluator.source, evaluator.batched) == (
        "llm_judge", "1", "llm_judge", True)
    assert evaluator.options is LLMJudgeOptions
    assert not any(e.batched for key, e in REGISTRY.items() if key != "llm_judge")


def test_llm_judge_refuses_to_be_called_synchronously() -> None:
    fn = REGISTRY["llm_judge"].fn
    with pytest.raises(RuntimeError, match="judge_many"):
        fn(case(), EvaluatorSpec(type="llm_judge", criteria="Correct?"))
    with pytest.raises(SpecError):  # a wrong spec says so first
        fn(case(), EvaluatorSpec(type="llm_judge"))


# --- settings and the unconfigured judge -------------------------------------------------------


def test_settings_read_the_llm_judge_group_from_the_environment(monkeypatch) -> None:
    for name, value in {"BASE_URL": "http://judge:9000/v1", "API_KEY": "sk-1", "MODEL": "m1",
                        "CONCURRENCY": "4", "TIMEOUT_S": "2.5", "MAX_ATTEMPTS": "5"}.items():
        monkeypatch.setenv(f"EVALSTREAM_LLM_JUDGE__{name}", value)
    config = Settings().llm_judge
    assert (config.base_url, config.api_key.get_secret_value(), config.model, config.concurrency,
            config.timeout_s, config.max_attempts) == ("http://judge:9000/v1", "sk-1", "m1", 4,
                                                       2.5, 5)
    assert "sk-1" not in repr(config)  # the key stays out of logs


def test_llm_judge_settings_defaults() -> None:
    config = LLMJudgeSettings()
    assert (config.base_url, config.api_key, config.model, config.concurrency, config.timeout_s,
            config.max_attempts, config.max_batch, config.batch_deadline_s) == (
        None, None, "gpt-4o-mini", 32, 30.0, 3, 256, 120.0)


async def test_unconfigured_judge_fails_every_pair_with_a_clear_reason() -> None:
    spec = EvaluatorSpec(type="llm_judge", criteria="Correct?")
    judge = LLMJudge(LLMJudgeSettings())
    try:
        assert not judge.configured
        results = await judge.judge_many([(case(), spec), (case("Lyon"), spec)])
    finally:
        await judge.aclose()
    assert len(results) == 2
    for result in results:
        assert isinstance(result, RuntimeError)
        assert str(result) == NOT_CONFIGURED
        assert "EVALSTREAM_LLM_JUDGE__BASE_URL" in str(result)


async def test_judge_many_of_nothing_is_nothing() -> None:
    async with LLMJudge(LLMJudgeSettings(base_url="http://127.0.0.1:9/v1")) as judge:
        assert await judge.judge_many([]) == []


async def test_a_wrong_spec_fails_only_its_own_pair(monkeypatch) -> None:
    asked: list[str] = []

    async def complete(self, model: str, messages: list[dict[str, str]]
                       ) -> tuple[str, str | None, tuple[int | None, int | None]]:
        asked.append(model)
        # a reply naming no model, and saying nothing of its tokens
        return '{"score": true, "reason": "fine"}', None, (None, None)

    monkeypatch.setattr(judge_module.LLMJudge, "_complete", complete)
    async with LLMJudge(LLMJudgeSettings(base_url="http://127.0.0.1:9/v1", model="m0")) as judge:
        results = await judge.judge_many([
            (case(), EvaluatorSpec(type="llm_judge")),
            (case(), EvaluatorSpec(type="llm_judge", criteria="ok?", model="m2")),
            (case(), EvaluatorSpec(type="llm_judge", criteria="ok?"))])
    assert isinstance(results[0], SpecError) and results[0].field == "criteria"
    # The spec's model, else the settings' default; a reply naming none: the model asked.
    assert results[1] == Score(1.0, "boolean", comment="fine", model="m2")
    assert results[2] == Score(1.0, "boolean", comment="fine", model="m0")
    assert sorted(asked) == ["m0", "m2"]


@pytest.mark.parametrize(("judge", "records"), [({}, 2000),
                                                ({"base_url": "http://judge/v1"}, 256)])
def test_the_evaluator_takes_smaller_batches_when_a_judge_is_configured(monkeypatch, judge,
                                                                        records) -> None:
    import os

    from services.evaluator.app import application_factory

    for name in [n for n in os.environ if n.startswith("EVALSTREAM_")]:
        monkeypatch.delenv(name)

    app = application_factory(Settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1", llm_judge=judge))
    assert [s.max_records for s in app.broker.subscribers] == [records]
