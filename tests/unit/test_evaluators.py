"""Unit tests of the programmatic evaluators, their option validation and the registry."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

from schemas.common import EvaluatorSpec
from schemas.traces import ScoringCase
from services.evaluator.evaluators import (
    REGISTRY,
    Score,
    SpecError,
    contains,
    exact_match,
    json_schema,
    json_structure,
    numeric,
    regex,
    similarity,
    validate_spec,
)


def case(output: Any = None, expected: Any = None) -> ScoringCase:
    return ScoringCase(trace_id="t", output=output, expected_output=expected)


EXACT = EvaluatorSpec(type="exact_match")
CONTAINS = EvaluatorSpec(type="contains")
STRUCTURE = EvaluatorSpec(type="json_structure")


# --- exact_match -------------------------------------------------------------------------------


@pytest.mark.parametrize("expected", [None, "", "   \n\t", {}, []], ids=repr)
def test_exact_match_gives_no_score_when_expected_is_blank(expected: Any) -> None:
    assert exact_match(case("Paris", expected), EXACT) is None


def test_exact_match_is_a_boolean_score() -> None:
    assert exact_match(case("Paris", "Paris"), EXACT) == Score(1.0, "boolean")
    assert exact_match(case("Lyon", "Paris"), EXACT) == Score(0.0, "boolean")


def test_exact_match_trims_surrounding_whitespace_of_strings() -> None:
    assert exact_match(case("  Paris\n", "Paris "), EXACT).value == 1.0


def test_exact_match_strings_are_case_sensitive_and_not_trimmed_inside() -> None:
    assert exact_match(case("paris", "Paris"), EXACT).value == 0.0
    assert exact_match(case("Par is", "Paris"), EXACT).value == 0.0


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('{"b": [1, 2], "a": "x"}', {"a": "x", "b": [1, 2]}),  # key order does not matter
        ('  [1, {"k": null}]  ', [1, {"k": None}]),
        ("42", 42),
        ("true", True),
        ("false", False),
    ],
)
def test_exact_match_parses_string_output_when_expected_is_json(output: str, expected: Any) -> None:
    assert exact_match(case(output, expected), EXACT).value == 1.0


def test_exact_match_compares_non_string_output_with_json_expected_by_deep_equality() -> None:
    assert exact_match(case({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2}]}), EXACT).value == 1.0
    assert exact_match(case({"a": [1, {"b": 3}]}, {"a": [1, {"b": 2}]}), EXACT).value == 0.0
    assert exact_match(case({"a": 1, "extra": 2}, {"a": 1}), EXACT).value == 0.0
    assert exact_match(case([1, 2], [2, 1]), EXACT).value == 0.0


@pytest.mark.parametrize("output", ["{not json", "", "Paris", "[1, 2"])
def test_exact_match_unparsable_output_with_json_expected_scores_zero(output: str) -> None:
    assert exact_match(case(output, {"a": 1}), EXACT) == Score(0.0, "boolean")


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (1, True),
        (True, 1),
        (0, False),
        ("1", True),
        ("true", 1),
        ({"ok": 1}, {"ok": True}),
        ([1.0, 0], [True, False]),
    ],
    ids=repr,
)
def test_exact_match_booleans_are_not_numbers(output: Any, expected: Any) -> None:
    assert exact_match(case(output, expected), EXACT).value == 0.0


def test_exact_match_int_equals_float() -> None:
    assert exact_match(case("1.0", 1), EXACT).value == 1.0
    assert exact_match(case({"n": 2}, {"n": 2.0}), EXACT).value == 1.0


def test_exact_match_json_expected_distinguishes_string_from_number() -> None:
    assert exact_match(case('"42"', 42), EXACT).value == 0.0


@pytest.mark.parametrize(
    ("output", "expected", "value"),
    [
        ({"a": 1}, '{"a": 1}', 1.0),  # dict output as JSON text
        ([1, "é"], ' [1, "é"] ', 1.0),  # non-ASCII kept, expected trimmed
        (42, "42", 1.0),
        (True, "true", 1.0),
        (None, "null", 0.0),  # no output is empty text, not "null"
    ],
    ids=repr,
)
def test_exact_match_string_expected_compares_output_as_text(
    output: Any, expected: str, value: float
) -> None:
    assert exact_match(case(output, expected), EXACT).value == value


# --- contains ----------------------------------------------------------------------------------


def test_contains_uses_the_keywords_option() -> None:
    spec = EvaluatorSpec(type="contains", keywords=["paris", "france"])
    assert contains(case("Paris is in France", "ignored"), spec) == Score(1.0, "numeric")


def test_contains_keywords_option_overrides_expected() -> None:
    spec = EvaluatorSpec(type="contains", keywords=["lyon"])
    assert contains(case("Paris", "Paris"), spec).value == 0.0


@pytest.mark.parametrize(
    ("expected", "value"),
    [
        ({"keywords": ["paris", "louvre"]}, 0.5),  # object: its "keywords" entry
        (["paris", "louvre", "seine"], pytest.approx(1 / 3)),  # array: itself
        ([2026, "paris"], 1.0),  # array items compared as text
        ("Paris", 1.0),  # string: the whole string is the one keyword
    ],
    ids=["object", "array", "array-of-non-strings", "string"],
)
def test_contains_takes_keywords_from_each_expected_shape(expected: Any, value: Any) -> None:
    assert contains(case("Paris, 2026", expected), CONTAINS).value == value


@pytest.mark.parametrize(
    "expected",
    [None, "", "  ", [], {}, {"other": ["paris"]}, {"keywords": []}, 42, True],
    ids=repr,
)
def test_contains_gives_no_score_without_keywords(expected: Any) -> None:
    assert contains(case("Paris", expected), CONTAINS) is None


def test_contains_gives_no_score_with_empty_keywords_option() -> None:
    spec = EvaluatorSpec(type="contains", keywords=[])
    assert contains(case("Paris", "Paris"), spec) is None


@pytest.mark.parametrize("output", [None, "", "   \n"], ids=repr)
def test_contains_empty_output_scores_zero(output: Any) -> None:
    assert contains(case(output, "Paris"), CONTAINS) == Score(0.0, "numeric")


def test_contains_is_case_insensitive() -> None:
    spec = EvaluatorSpec(type="contains", keywords=["PARIS", "straße"])
    assert contains(case("paris STRASSE", None), spec).value == 1.0


def test_contains_partial_ratio() -> None:
    spec = EvaluatorSpec(type="contains", keywords=["a", "b", "z"])
    assert contains(case("a b c", None), spec).value == pytest.approx(2 / 3)


def test_contains_reads_object_and_array_output_as_json_text() -> None:
    spec = EvaluatorSpec(type="contains", keywords=['"city": "parís"', "true"])
    assert contains(case({"city": "París", "ok": True}, None), spec).value == 1.0
    assert contains(case(["x", True], None), spec).value == 0.5


# --- json_structure ----------------------------------------------------------------------------


def test_json_structure_required_keys_from_expected_object() -> None:
    result = json_structure(case({"a": 1, "b": 2, "c": 3}, {"a": 0, "b": 0}), STRUCTURE)
    assert result == Score(1.0, "numeric")


def test_json_structure_partial_ratio() -> None:
    result = json_structure(case({"a": 1, "x": None}, {"a": 0, "b": 0, "c": 0}), STRUCTURE)
    assert result.value == pytest.approx(1 / 3)


def test_json_structure_only_top_level_keys_count() -> None:
    result = json_structure(case({"outer": {"a": 1}}, {"a": 0}), STRUCTURE)
    assert result.value == 0.0


def test_json_structure_parses_string_output() -> None:
    result = json_structure(case('{"a": 1, "b": 2}', {"a": 0, "b": 0, "c": 0}), STRUCTURE)
    assert result.value == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "output", [None, "not json", "[1, 2]", '"a"', "42", ["a"], 42, True], ids=repr
)
def test_json_structure_non_object_output_scores_zero(output: Any) -> None:
    assert json_structure(case(output, {"a": 0}), STRUCTURE) == Score(0.0, "numeric")


def test_json_structure_required_keys_option_overrides_expected() -> None:
    spec = EvaluatorSpec(type="json_structure", required_keys=["answer", "sources"])
    result = json_structure(case({"answer": "x", "a": 1}, {"a": 0}), spec)
    assert result.value == 0.5


@pytest.mark.parametrize("expected", [None, {}, ["a"], "a", 1], ids=repr)
def test_json_structure_gives_no_score_without_required_keys(expected: Any) -> None:
    assert json_structure(case({"a": 1}, expected), STRUCTURE) is None


def test_json_structure_gives_no_score_with_empty_required_keys_option() -> None:
    spec = EvaluatorSpec(type="json_structure", required_keys=[])
    assert json_structure(case({"a": 1}, {"a": 0}), spec) is None


# --- regex -------------------------------------------------------------------------------------


def _regex(output: Any, pattern: str, **options: Any) -> float:
    score = regex(case(output), EvaluatorSpec(type="regex", pattern=pattern, **options))
    assert score is not None and score.data_type == "boolean"
    return score.value


def test_regex_searches_the_output_as_text() -> None:
    assert _regex("The capital is Paris.", r"\bParis\b") == 1.0
    assert _regex("The capital is Parisian.", r"\bParis\b") == 0.0
    assert _regex({"answer": "Paris"}, r'"answer":\s*"Paris"') == 1.0  # JSON as text
    assert _regex(None, r"^$") == 1.0  # no output is the empty text


def test_regex_options() -> None:
    assert _regex("PARIS", "paris") == 0.0
    assert _regex("PARIS", "paris", ignore_case=True) == 1.0
    assert _regex("  42 \n", r"\d+", full_match=True) == 1.0  # trimmed
    assert _regex("answer: 42", r"\d+", full_match=True) == 0.0


def test_regex_negated_passes_when_the_pattern_is_absent() -> None:
    assert _regex("Paris is the capital.", r"(?i)as an ai", negate=True) == 1.0
    score = regex(case("As an AI, I think Paris."),
                  EvaluatorSpec(type="regex", pattern="as an ai", ignore_case=True, negate=True))
    assert score == Score(0.0, "boolean", comment="found 'As an AI'")


def test_regex_is_linear_where_backtracking_would_not_end() -> None:
    # (a+)+$ on "aaaa…b" takes Python's re minutes; RE2 answers at once.
    assert _regex("a" * 50_000 + "b", r"(a+)+$") == 0.0


@pytest.mark.parametrize(("pattern", "message"), [
    (r"(a)\1", "invalid escape sequence"), (r"(?<=a)b", "invalid perl operator"),
    ("(", "missing )"), ("", "at least 1 character")], ids=repr)
def test_regex_spec_with_a_pattern_re2_refuses_names_it(pattern: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(EvaluatorSpec(type="regex", pattern=pattern))
    assert info.value.field == "pattern" and message in info.value.message


# --- similarity --------------------------------------------------------------------------------


def test_similarity_is_one_minus_the_share_of_edits() -> None:
    spec = EvaluatorSpec(type="similarity")
    assert similarity(case(" Paris ", "paris"), spec) == Score(1.0, "numeric")
    # "kitten" / "sitting": 13 characters, 8 of them in common (Indel distance 5): 8/13
    assert similarity(case("kitten", "sitting"), spec).value == pytest.approx(8 / 13, abs=1e-6)
    assert similarity(case("", "Paris"), spec).value == 0.0
    assert similarity(case("Paris", None), spec) is None  # nothing to compare with
    assert similarity(case({"a": 1}, {"a": 1}), spec).value == 1.0  # JSON as text


def test_similarity_options() -> None:
    assert similarity(case("PARIS", "paris"),
                      EvaluatorSpec(type="similarity", ignore_case=False)).value == 0.0
    long = case("The capital of France is Paris.", "Paris")
    assert similarity(long, EvaluatorSpec(type="similarity")).value < 0.5
    assert similarity(long, EvaluatorSpec(type="similarity", partial=True)).value == 1.0


# --- json_schema -------------------------------------------------------------------------------

ANSWER_SCHEMA = {"type": "object", "required": ["answer", "confidence"],
                 "properties": {"answer": {"type": "string", "minLength": 1},
                                "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
                 "additionalProperties": False}


def _schema(output: Any, schema: dict = ANSWER_SCHEMA) -> Score:
    score = json_schema(case(output), EvaluatorSpec(type="json_schema", schema=schema))
    assert score is not None and score.data_type == "boolean"
    return score


def test_json_schema_passes_an_output_that_satisfies_it() -> None:
    assert _schema({"answer": "Paris", "confidence": 0.9}) == Score(1.0, "boolean")
    # A string output is parsed as JSON, also inside a code fence as models write it.
    assert _schema('{"answer": "Paris", "confidence": 1}').value == 1.0
    assert _schema('```json\n{"answer": "Paris", "confidence": 1}\n```').value == 1.0
    assert _schema('```\n{\n  "answer": "Paris",\n  "confidence": 1\n}\n```\n').value == 1.0


@pytest.mark.parametrize(("output", "comment"), [
    ({"answer": "Paris"}, "$: 'confidence' is a required property"),
    ({"answer": "Paris", "confidence": 2}, "$.confidence: 2 is greater than the maximum of 1"),
    ({"answer": "", "confidence": 1}, "$.answer: '' should be non-empty"),
    ({"answer": "Paris", "confidence": 1, "why": "?"}, "$: additional properties are not "
                                                        "allowed ('why' unexpected)"),
    ("Paris", "$: 'Paris' is not of type 'object'"),  # not JSON: validated as the string
    (None, "$: None is not of type 'object'"),
], ids=repr)
def test_json_schema_fails_with_the_violation_as_comment(output: Any, comment: str) -> None:
    assert _schema(output) == Score(0.0, "boolean", comment=comment)


def test_json_schema_matches_patterns_with_re2_in_linear_time() -> None:
    # (a+)+$ on "aaaa…b" takes Python's re (which jsonschema itself uses) minutes.
    slow = {"type": "string", "pattern": "(a+)+$"}
    assert _schema("a" * 50_000 + "b", slow).value == 0.0
    by_key = {"type": "object", "patternProperties": {"^x-(a+)+$": {"type": "integer"}},
              "additionalProperties": False}
    assert _schema({"x-aaa": 1}, by_key).value == 1.0
    assert _schema({"x-aaa": "1"}, by_key).comment == "$['x-aaa']: '1' is not of type 'integer'"
    assert _schema({"x-" + "a" * 50_000 + "b": 1}, by_key).value == 0.0


def test_json_schema_follows_the_draft_its_schema_names() -> None:
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "number",
              "maximum": 1, "exclusiveMaximum": True}  # a boolean here only in draft 4
    assert _schema(1, draft4).value == 0.0
    assert _schema(0.5, draft4).value == 1.0


@pytest.mark.parametrize(("schema", "message"), [
    ({"type": "objekt"}, "is not a valid JSON Schema: 'objekt' is not valid under any of the "
                         "given schemas (at type)"),
    ({"type": "string", "pattern": "(a)\\1"}, "has a pattern RE2 refuses"),
    ({"unevaluatedProperties": False}, "uses 'unevaluatedProperties', which is not supported"),
    ({"enum": ["x" * 20_000]}, "longer than 20,000 characters"),
], ids=repr)
def test_json_schema_spec_with_a_wrong_schema_names_it(schema: dict, message: str) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(EvaluatorSpec(type="json_schema", schema=schema))
    assert info.value.field == "schema" and message in info.value.message


def test_json_schema_resolves_references_within_the_schema_and_fetches_nothing() -> None:
    local = {"$defs": {"city": {"type": "string"}}, "properties": {"x": {"$ref": "#/$defs/city"}}}
    assert _schema({"x": 1}, local).comment == "$.x: 1 is not of type 'string'"
    remote = {"$ref": "http://127.0.0.1:9/schema.json"}  # nothing listens there
    with pytest.raises(Exception, match="Unresolvable: http://127.0.0.1:9/schema.json"):
        _schema({}, remote)  # the case's evaluator failure, with this reason


def test_json_schema_spec_without_a_schema_names_it() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(EvaluatorSpec(type="json_schema"))
    assert (info.value.field, info.value.message) == ("schema", "Field required")
    with pytest.raises(SpecError) as info:
        validate_spec(EvaluatorSpec(type="json_schema", schema={}, strict=True))
    assert info.value.field == "strict" and "allowed: pass_threshold, schema" in info.value.message


# --- numeric -----------------------------------------------------------------------------------


def _numeric(output: Any, expected: Any, **options: Any) -> Score | None:
    return numeric(case(output, expected), EvaluatorSpec(type="numeric", **options))


@pytest.mark.parametrize(("output", "expected", "options"), [
    ("The answer is 42.", 42, {}), (42, "42", {}), ("1,234.5 in all", "1234.5", {}),
    ("3 apples, then 4", 4, {}), ("3 apples, then 4", 3, {"extract": "first"}),
    (41.9, 42, {"tolerance": 0.1}), (41, 42, {"relative_tolerance": 0.05}),
    ("-.5", -0.5, {}), ("1e3", 1000.0, {}), (0.30000000000000004, 0.3, {}),
], ids=repr)
def test_numeric_matches(output: Any, expected: Any, options: dict) -> None:
    assert _numeric(output, expected, **options) == Score(1.0, "boolean")


@pytest.mark.parametrize(("output", "expected", "options", "comment"), [
    (41, 42, {}, "41 is not 42"),
    ("about 40", 42, {"tolerance": 1}, "40 is not 42 ± 1"),
    ("3 then 4", 4, {"extract": "only"}, "2 numbers in the output"),
    ("no idea", 1, {}, "no number in the output"),
    (True, 1, {}, "no number in the output"),  # a boolean is not a number
], ids=repr)
def test_numeric_mismatches_say_why(output: Any, expected: Any, options: dict,
                                    comment: str) -> None:
    assert _numeric(output, expected, **options) == Score(0.0, "boolean", comment=comment)


@pytest.mark.parametrize("expected", [None, "ten", "3 or 4", {"answer": 3}], ids=repr)
def test_numeric_gives_no_score_without_one_expected_number(expected: Any) -> None:
    assert _numeric("3", expected) is None


def test_numeric_is_linear_on_long_outputs() -> None:
    assert _numeric("1" * 100_000 + "x", 1).value == 0.0


# --- validate_spec -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        EvaluatorSpec(type="exact_match"),
        EvaluatorSpec(type="exact_match", name="strict"),
        EvaluatorSpec(type="contains"),
        EvaluatorSpec(type="contains", keywords=["paris"]),
        EvaluatorSpec(type="json_structure", required_keys=["answer"]),
    ],
    ids=repr,
)
def test_validate_spec_accepts_valid_specs(spec: EvaluatorSpec) -> None:
    validate_spec(spec)


def test_validate_spec_rejects_unknown_type() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(EvaluatorSpec(type="levenshtein"))
    assert info.value.field == "type"
    assert "levenshtein" in info.value.message


@pytest.mark.parametrize(
    ("keywords", "field"),
    [("paris", "keywords"), ({"a": 1}, "keywords"), (["paris", 3], "keywords.1"),
     ([""], "keywords.0"), ([None], "keywords.0")],
    ids=repr,
)
def test_validate_spec_rejects_keywords_that_are_not_non_empty_strings(
    keywords: Any, field: str
) -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(EvaluatorSpec(type="contains", keywords=keywords))
    assert info.value.field == field


def test_validate_spec_rejects_required_keys_that_are_not_strings() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(EvaluatorSpec(type="json_structure", required_keys="answer"))
    assert info.value.field == "required_keys"


def test_validate_spec_names_an_unknown_option() -> None:
    with pytest.raises(SpecError) as info:
        validate_spec(EvaluatorSpec(type="exact_match", keywords=["paris"]))
    assert info.value.field == "keywords"
    assert "exact_match" in info.value.message
    assert "keywords" in str(info.value)


def test_evaluators_reject_invalid_options_they_are_given() -> None:
    with pytest.raises(SpecError):
        contains(case("Paris", "Paris"), EvaluatorSpec(type="contains", keywords="paris"))


# --- registry ----------------------------------------------------------------------------------


def test_registry_holds_the_built_in_evaluators() -> None:
    assert set(REGISTRY) >= {"exact_match", "contains", "json_structure", "regex", "similarity",
                             "json_schema", "numeric", "llm_judge"}


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_registry_entry_is_complete(key: str) -> None:
    evaluator = REGISTRY[key]
    assert evaluator.type == key
    assert evaluator.version
    assert callable(evaluator.fn)
    assert issubclass(evaluator.options, BaseModel)
    assert evaluator.source in ("programmatic", "llm_judge")
    # Every evaluator works with its required options only (the judge needs its criteria).
    required = {"llm_judge": {"criteria": "Is it right?"}, "regex": {"pattern": "x"},
                "json_schema": {"schema": {}}}.get(key, {})
    validate_spec(EvaluatorSpec(type=key, **required))
