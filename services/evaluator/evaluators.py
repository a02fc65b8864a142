"""The programmatic evaluators: pure functions from a scoring case and its spec to a score.

`REGISTRY` is the one place an evaluator type is known; a new evaluator is one function plus
one entry there. Evaluators marked `batched` (the LLM judge) call out to a model: the service
scores them asynchronously, many cases at once (services/evaluator/llm_judge.py), not via `fn`.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from string import Template
from typing import Annotated, Any, Literal, TypeVar

import re2
from jsonschema import Draft202012Validator, validators
from jsonschema import ValidationError as SchemaViolation
from jsonschema.exceptions import SchemaError, best_match
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)
from rapidfuzz import fuzz

from schemas.common import EvaluatorSpec, canonical_json
from schemas.traces import ScoringCase


@dataclass(frozen=True, slots=True)
class Score:
    value: float
    data_type: Literal["numeric", "boolean", "categorical"]
    string_value: str | None = None
    comment: str | None = None
    # The model that gave the score (the LLM judge's, as the endpoint named it): the score's
    # evaluator version is then "<evaluator version>+<model>", so scores of two models differ.
    model: str | None = None
    # Tokens the model used for this score, as its endpoint reported them: what judging costs.
    input_tokens: int | None = None
    output_tokens: int | None = None


# None means "no score for this case" (e.g. nothing to compare against), not a zero.
EvaluatorFn = Callable[[ScoringCase, EvaluatorSpec], Score | None]


@dataclass(frozen=True, slots=True)
class Evaluator:
    type: str
    version: str  # bump when the semantics change, so old and new scores can be told apart
    fn: EvaluatorFn
    options: type[BaseModel]  # the spec's own options; validate_spec checks them against it
    source: Literal["programmatic", "llm_judge"] = "programmatic"
    # True: scored asynchronously, a batch's cases at once: by its own component (the LLM judge:
    # services/evaluator/llm_judge.py, LLMJudge.judge_many), or by `call` (an async plugin's:
    # services/evaluator/plugins.py, call_many); `fn` then only refuses.
    batched: bool = False
    call: Callable[[ScoringCase, EvaluatorSpec], Awaitable[Score | None]] | None = None
    # True: a plugin's plain function, which may be slow or never return: score_cases calls a
    # batch's calls of it in a thread of its own, off the event loop, up to a deadline
    # (services/evaluator/plugins.py, call_in_thread); `fn` is the call.
    threaded: bool = False


class SpecError(ValueError):
    """A spec names an unknown evaluator or has wrong options; `field` is relative to the spec."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class Options(BaseModel):
    # A misspelt option would otherwise be ignored silently and the evaluator would fall back
    # to its default behaviour.
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Every evaluator's: where its scores pass (services/evaluator/scoring.py carries it on
    # each score; the read models compare with it).
    pass_threshold: float | None = Field(
        None, ge=0, le=1, description="A score at or above it passes; default 0.5.")


OptionsT = TypeVar("OptionsT", bound=Options)


class ExactMatchOptions(Options):
    pass


class ContainsOptions(Options):
    keywords: list[Annotated[str, StringConstraints(min_length=1)]] | None = None


class JsonStructureOptions(Options):
    required_keys: list[str] | None = None


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str, ignore_case: bool) -> re2._Regexp:
    """The compiled pattern (RE2: linear time whatever the pattern and the output, so no spec can
    stall an evaluator), compiled once per process."""
    options = re2.Options()
    options.log_errors = False  # a wrong pattern is the spec's 422, not a line on stderr
    return re2.compile(f"(?i){pattern}" if ignore_case else pattern, options)


def _re2_reason(error: re2.error) -> str:
    """Why RE2 refused a pattern, as text."""
    reason = error.args[0] if error.args else error
    return reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)


class RegexOptions(Options):
    pattern: str = Field(min_length=1, max_length=2000,
                         description="RE2 syntax (as Python's re, without backreferences and "
                                     "lookaround), searched for in the output as text.")
    ignore_case: bool = False
    full_match: bool = Field(False, description="The whole output (trimmed) must match.")
    negate: bool = Field(False, description="1 when the pattern is NOT found: for what an "
                                            "output must never say.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            _regex(v, False)
        except re2.error as e:
            raise ValueError(f"is not a valid RE2 pattern: {_re2_reason(e)}") from None
        return v


class NumericOptions(Options):
    tolerance: float = Field(0.0, ge=0, description="Largest absolute difference that matches.")
    relative_tolerance: float = Field(
        0.0, ge=0, description="Largest difference as a share of the expected number "
                               "(0.01 = 1%); the larger of the two tolerances applies.")
    extract: Literal["last", "first", "only"] = Field(
        "last", description="Which number of a text output counts: the last (a worked answer "
                            "ends with it), the first, or the only one (several: no match).")


class SimilarityOptions(Options):
    ignore_case: bool = True
    partial: bool = Field(False, description="Compare the expected output with the part of the "
                                             "output that resembles it most.")


def _re2_pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _regex(pattern, False).search(instance):
        yield SchemaViolation(f"{instance!r} does not match {pattern!r}")


def _re2_pattern_properties(validator, patterns, instance, schema):
    if validator.is_type(instance, "object"):
        for pattern, subschema in patterns.items():
            compiled = _regex(pattern, False)
            for key, value in instance.items():
                if compiled.search(key):
                    yield from validator.descend(value, subschema, path=key,
                                                 schema_path=pattern)


def _re2_additional_properties(validator, additional, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    known = schema.get("properties", {})
    patterns = [_regex(p, False) for p in schema.get("patternProperties", {})]
    extras = sorted(key for key in instance
                    if key not in known and not any(p.search(key) for p in patterns))
    if validator.is_type(additional, "object"):
        for key in extras:
            yield from validator.descend(instance[key], additional, path=key)
    elif additional is False and extras:
        yield SchemaViolation(f"additional properties are not allowed "
                              f"({', '.join(map(repr, extras))} unexpected)")


# JSON Schema 2020-12 (or the draft a schema's `$schema` names) with every regular expression
# matched by RE2, as the `regex` evaluator does: jsonschema's own keywords use Python's
# backtracking `re`, with which one pattern could stall a partition.
_RE2_KEYWORDS = {"pattern": _re2_pattern, "patternProperties": _re2_pattern_properties,
                 "additionalProperties": _re2_additional_properties}
_REFUSED_KEYWORDS = ("unevaluatedProperties",)  # matches patternProperties with Python's `re`


def _objects(schema: Any) -> Iterator[dict]:
    """Every JSON object in a schema, the schema itself first."""
    if isinstance(schema, dict):
        yield schema
        for value in schema.values():
            yield from _objects(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _objects(value)


@functools.lru_cache(maxsize=256)
def _schema_validator(schema_json: str):
    """The validator of a schema (given as canonical JSON), built once per process."""
    schema = json.loads(schema_json)
    base = validators.validator_for(schema, default=Draft202012Validator)
    base.check_schema(schema)
    for pattern in _patterns(schema):
        _regex(pattern, False)  # raises re2.error
    return validators.extend(base, _RE2_KEYWORDS)(schema)


def _patterns(schema: Any) -> Iterator[str]:
    """Every regular expression of a schema: `pattern` values and `patternProperties` keys."""
    for obj in _objects(schema):
        if isinstance(obj.get("pattern"), str):
            yield obj["pattern"]
        if isinstance(obj.get("patternProperties"), dict):
            yield from obj["patternProperties"]


class JsonSchemaOptions(Options):
    schema_: dict[str, Any] = Field(
        alias="schema", description="The JSON Schema the output must satisfy (draft 2020-12 "
                                    "unless its `$schema` names another; `format` is not "
                                    "checked; regular expressions are RE2).")

    @field_validator("schema_")
    @classmethod
    def _valid_schema(cls, v: dict[str, Any]) -> dict[str, Any]:
        text = canonical_json(v).decode()
        if len(text) > 20_000:
            raise ValueError("is longer than 20,000 characters of JSON (every trace carries it)")
        refused = next((k for obj in _objects(v) for k in _REFUSED_KEYWORDS if k in obj), None)
        if refused is not None:
            raise ValueError(f"uses {refused!r}, which is not supported; use additionalProperties")
        try:
            _schema_validator(text)
        except SchemaError as e:
            where = "/".join(str(p) for p in e.path)
            raise ValueError(f"is not a valid JSON Schema: {e.message}"
                             + (f" (at {where})" if where else "")) from None
        except re2.error as e:
            raise ValueError(f"has a pattern RE2 refuses: {_re2_reason(e)}") from None
        return v


class LLMJudgeOptions(Options):
    """Options of `llm_judge`. Defined here rather than in llm_judge.py so that validating specs
    needs neither the HTTP client nor the retry library; llm_judge.py re-exports it."""

    criteria: str = Field(min_length=1, description="What the judge checks, e.g. "
                                                    "\"Is the answer factually correct?\"")
    model: str | None = Field(None, min_length=1,
                              description="Judge model; default EVALSTREAM_LLM_JUDGE__MODEL.")
    scale: Literal["boolean", "numeric"] = Field(
        "boolean", description="boolean: pass/fail (1/0); numeric: a number from 0 to 1.")
    use_expected: bool = Field(
        True, description="Show the judge the expected output when the case has one.")
    prompt: str | None = Field(
        None, min_length=1, max_length=20_000,
        description="Your own question to the judge, with `$criteria`, `$input`, `$output` and "
                    "`$expected_output` (each as JSON) where they belong; default: those four "
                    "as one JSON object. The reply format is always asked for apart.")

    @field_validator("criteria")
    @classmethod
    def _criteria_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("criteria must not be blank")
        return v

    @field_validator("prompt")
    @classmethod
    def _prompt_names_known_fields(cls, v: str | None) -> str | None:
        if v is not None:
            template = Template(v)
            if not template.is_valid():
                raise ValueError("is not a valid template: write $$ for a literal $")
            unknown = sorted(set(template.get_identifiers()) - PROMPT_FIELDS)
            if unknown:
                raise ValueError(f"names unknown field(s) {unknown}; known: "
                                 f"{sorted(PROMPT_FIELDS)}")
            if "output" not in template.get_identifiers():
                raise ValueError("must show the judge the $output")
        return v


PROMPT_FIELDS = frozenset({"criteria", "input", "output", "expected_output"})


def parse_options(model: type[OptionsT], spec: EvaluatorSpec) -> OptionsT:
    """The spec's options as `model`, or SpecError naming the first wrong field."""
    # Parsed on every call (about a microsecond) rather than cached: EvaluatorSpec's hash
    # ignores its extra fields, so a cache keyed on the spec would put every spec of one type
    # in the same hash bucket and degrade to linear lookups.
    try:
        return model.model_validate(spec.model_extra or {})
    except ValidationError as e:
        error = e.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "options"
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(f.alias or name for name, f in model.model_fields.items()) or "none"
            message = f"unknown option for evaluator {spec.type!r} (allowed: {allowed})"
        elif error["type"] == "value_error" and "error" in error.get("ctx", {}):
            message = str(error["ctx"]["error"])  # the validator's words, without "Value error, "
        else:
            message = error["msg"]
        raise SpecError(field, message) from None


def validate_spec(spec: EvaluatorSpec) -> None:
    """Raise SpecError(field, message) when the type is unknown or the options are wrong.

    field is a dotted path relative to the spec, e.g. "type" or "keywords.0".
    """
    evaluator = REGISTRY.get(spec.type)
    if evaluator is None:
        close = difflib.get_close_matches(spec.type, REGISTRY, n=1)
        raise SpecError("type", f"unknown evaluator type {spec.type!r}"
                                + (f" (did you mean {close[0]!r}?)" if close else "")
                                + f"; known: {', '.join(sorted(REGISTRY))}")
    parse_options(evaluator.options, spec)


def _is_blank(value: Any) -> bool:
    """None, a whitespace-only string, or an empty object or array (Ruby's `blank?`)."""
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, dict | list):
        return not value
    return False


def _as_text(value: Any) -> str:
    """A value as the text an evaluator compares: strings as is, None empty, the rest as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, default=str)


def _same_json(a: Any, b: Any) -> bool:
    """Deep equality of JSON values: `true` is not `1` (a Python bool is an int), 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(_same_json(v, b[k]) for k, v in a.items()))
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(map(_same_json, a, b))
    return a == b


_UNPARSABLE = object()


def _parse_json_text(value: Any) -> Any:
    """A string output parsed as JSON (or `_UNPARSABLE`); any other output as it is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return _UNPARSABLE


def exact_match(case: ScoringCase, spec: EvaluatorSpec) -> Score | None:
    """1.0 when the output equals the expected output: trimmed text, or JSON by deep equality."""
    parse_options(ExactMatchOptions, spec)
    expected = case.expected_output
    if _is_blank(expected):
        return None
    if isinstance(expected, str):
        matched = _as_text(case.output).strip() == expected.strip()
    else:
        output = _parse_json_text(case.output)
        matched = output is not _UNPARSABLE and _same_json(output, expected)
    return Score(1.0 if matched else 0.0, "boolean")


def _keywords_from_expected(expected: Any) -> list[str]:
    if _is_blank(expected):
        return []
    if isinstance(expected, dict):
        expected = expected.get("keywords")
    if isinstance(expected, list):
        return [_as_text(item) for item in expected]
    if isinstance(expected, str) and expected.strip():
        return [expected]
    return []


def contains(case: ScoringCase, spec: EvaluatorSpec) -> Score | None:
    """Share of keywords (option, else from the expected output) in the output, ignoring case."""
    options = parse_options(ContainsOptions, spec)
    # An explicit `keywords` option wins even when empty, as in the reference implementation.
    keywords = (options.keywords if options.keywords is not None
                else _keywords_from_expected(case.expected_output))
    if not keywords:
        return None
    output = _as_text(case.output)
    if not output.strip():
        return Score(0.0, "numeric")
    folded = output.casefold()
    matched = sum(1 for keyword in keywords if keyword.casefold() in folded)
    return Score(matched / len(keywords), "numeric")


def json_structure(case: ScoringCase, spec: EvaluatorSpec) -> Score | None:
    """Share of required keys (option, else the expected object's keys) in the output object."""
    options = parse_options(JsonStructureOptions, spec)
    required = options.required_keys
    if required is None:
        expected = case.expected_output
        required = [str(key) for key in expected] if isinstance(expected, dict) else []
    if not required:
        return None
    output = _parse_json_text(case.output)
    if not isinstance(output, dict):
        return Score(0.0, "numeric")
    present = sum(1 for key in required if key in output)
    return Score(present / len(required), "numeric")


def regex(case: ScoringCase, spec: EvaluatorSpec) -> Score | None:
    """1.0 when the pattern is found in the output as text (the whole of it with
    `full_match`); with `negate`, when it is not (a failure's comment then quotes what was
    found)."""
    options = parse_options(RegexOptions, spec)
    compiled = _regex(options.pattern, options.ignore_case)
    output = _as_text(case.output)
    found = (compiled.fullmatch(output.strip()) if options.full_match
             else compiled.search(output))
    if not options.negate:
        return Score(1.0 if found else 0.0, "boolean")
    if found:
        return Score(0.0, "boolean", comment=f"found {found.group(0)[:200]!r}")
    return Score(1.0, "boolean")


_FENCE = re2.compile(r"(?s)^\s*```[A-Za-z0-9_-]*[ \t]*\n(.*)\n\s*```\s*$", re2.Options())


def _json_of_output(output: Any) -> Any:
    """The output as JSON: a string is parsed (inside a ``` code fence, as models often answer),
    and stays a string when it is not JSON."""
    if not isinstance(output, str):
        return output
    fenced = _FENCE.match(output)
    parsed = _parse_json_text(fenced.group(1) if fenced else output)
    return output if parsed is _UNPARSABLE else parsed


def json_schema(case: ScoringCase, spec: EvaluatorSpec) -> Score | None:
    """1.0 when the output (a string parsed as JSON) satisfies the schema; otherwise 0.0, with
    the most relevant violation as the comment."""
    options = parse_options(JsonSchemaOptions, spec)
    validator = _schema_validator(canonical_json(options.schema_).decode())
    error = best_match(validator.iter_errors(_json_of_output(case.output)))
    if error is None:
        return Score(1.0, "boolean")
    return Score(0.0, "boolean", comment=f"{error.json_path}: {error.message}"[:500])


# A number as written in text: optional sign, digits with or without thousands separators, an
# optional fraction and exponent. RE2: linear whatever the output.
_NUMBER = re2.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+",
                      re2.Options())


def _as_number(value: Any, extract: str = "only") -> float | str | None:
    """A JSON number as is; a text's number by `extract` (None: none; a str: why not)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    found = [m.group(0) for m in _NUMBER.finditer(value)]
    if not found:
        return None
    if extract == "only" and len(found) > 1:
        return f"{len(found)} numbers in the output"
    text = found[0] if extract == "first" else found[-1]
    number = float(text.replace(",", ""))
    return number if math.isfinite(number) else None


def numeric(case: ScoringCase, spec: EvaluatorSpec) -> Score | None:
    """1.0 when the output's number equals the expected number within the tolerances: a JSON
    number, or the number in a text (`extract`: its last, first or only one)."""
    options = parse_options(NumericOptions, spec)
    expected = _as_number(case.expected_output)
    if not isinstance(expected, float):
        return None  # nothing to compare with
    output = _as_number(case.output, options.extract)
    if not isinstance(output, float):
        return Score(0.0, "boolean", comment=output or "no number in the output")
    allowed = max(options.tolerance, options.relative_tolerance * abs(expected))
    difference = abs(output - expected)
    # Within the tolerance, up to float rounding (41.9 against 42 ± 0.1 differs by 0.1000…014).
    if difference <= allowed or math.isclose(difference, allowed, rel_tol=1e-9, abs_tol=1e-12):
        return Score(1.0, "boolean")
    return Score(0.0, "boolean", comment=f"{output:g} is not {expected:g}"
                                         + (f" ± {allowed:g}" if allowed else ""))


def similarity(case: ScoringCase, spec: EvaluatorSpec) -> Score | None:
    """How close the output is to the expected output as text, from 0 to 1: 1 - the share of
    characters to insert or delete to turn one into the other (rapidfuzz's normalized Indel
    similarity), trimmed, ignoring case unless `ignore_case` is false; with `partial`, against
    the part of the output most like the expected output."""
    options = parse_options(SimilarityOptions, spec)
    if _is_blank(case.expected_output):
        return None
    output, expected = _as_text(case.output).strip(), _as_text(case.expected_output).strip()
    if options.ignore_case:
        output, expected = output.casefold(), expected.casefold()
    measure = fuzz.partial_ratio if options.partial else fuzz.ratio
    return Score(round(measure(output, expected) / 100, 6), "numeric")


def llm_judge(case: ScoringCase, spec: EvaluatorSpec) -> Score | None:
    """Refuses: the LLM judge calls a model over HTTP, so the service scores it asynchronously
    and in batches with services.evaluator.llm_judge.LLMJudge.judge_many."""
    parse_options(LLMJudgeOptions, spec)  # a wrong spec says so first
    raise RuntimeError("llm_judge cannot be evaluated synchronously: it is scored in batches by "
                       "services.evaluator.llm_judge.LLMJudge.judge_many")


REGISTRY: dict[str, Evaluator] = {
    evaluator.type: evaluator
    for evaluator in (
        Evaluator("exact_match", "1", exact_match, ExactMatchOptions),
        Evaluator("contains", "1", contains, ContainsOptions),
        Evaluator("json_structure", "1", json_structure, JsonStructureOptions),
        Evaluator("regex", "1", regex, RegexOptions),
        Evaluator("similarity", "1", similarity, SimilarityOptions),
        Evaluator("json_schema", "1", json_schema, JsonSchemaOptions),
        Evaluator("numeric", "1", numeric, NumericOptions),
        Evaluator("llm_judge", "1", llm_judge, LLMJudgeOptions, source="llm_judge",
                  batched=True),
    )
}
