"""Evaluator plugins: a team's own evaluators, loaded from a module or a file, checked like the
built-in ones and scored by the same code path (services/evaluator/plugins.py)."""

from __future__ import annotations

import os
import sys
import textwrap
from datetime import UTC, datetime

import pytest

from schemas.common import EvaluatorSpec
from schemas.envelope import wrap
from schemas.traces import TraceCompleted
from services.evaluator import evaluators, plugins
from services.evaluator.evaluators import SpecError, validate_spec
from services.evaluator.llm_judge import LLMJudge
from services.evaluator.plugins import PluginError
from services.evaluator.scoring import score_case, score_cases
from services.settings import AsyncEvaluatorSettings, LLMJudgeSettings, Settings
from tests.conftest import ROOT

AT = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _registry():
    """Each test's plugins are gone after it."""
    registry, by_plugin, loaded = (dict(evaluators.REGISTRY), dict(plugins._by_plugin),
                                   set(plugins._loaded))
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if name.startswith("evalstream_plugin_"):
            del sys.modules[name]
    evaluators.REGISTRY.clear()
    evaluators.REGISTRY.update(registry)
    plugins._by_plugin.clear()
    plugins._by_plugin.update(by_plugin)
    plugins._loaded.clear()
    plugins._loaded.update(loaded)


def _plugin(tmp_path, source: str, name: str = "my_evals.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return str(path)


WORD_LIMIT = """
    from pydantic import Field
    from services.evaluator.plugins import Options, Score, evaluator

    class WordLimit(Options):
        max_words: int = Field(ge=1)

    @evaluator("word_limit", version="7", options=WordLimit)
    def word_limit(case, options):
        return len(str(case.output).split()) <= options.max_words

    @evaluator("label", version="1")
    def label(case):
        return {"a": "good", "b": None, "c": float("nan"), "d": ["x"], "e": 0.25}[case.output]
"""


def _scored(specs, output="one two three"):
    trace = TraceCompleted(trace_id="t1", run_id="r1", dataset_item_id="i1", output=output,
                           status="succeeded", completed_at=AT, evaluators=specs)
    return score_case(wrap(trace, source="t", key="r1", id="e1")).event


def test_a_plugin_file_adds_evaluators_that_score_like_built_in_ones(tmp_path):
    assert plugins.load([_plugin(tmp_path, WORD_LIMIT)]) == ["label", "word_limit"]
    validate_spec(EvaluatorSpec(type="word_limit", max_words=3))
    case = _scored((EvaluatorSpec(type="word_limit", max_words=2, name="short"),
                    EvaluatorSpec(type="word_limit", max_words=3, pass_threshold=1.0),
                    EvaluatorSpec(type="exact_match")))
    scores = {s.name: s for s in case.scores}
    assert (scores["short"].value, scores["short"].data_type) == (0.0, "boolean")
    assert scores["word_limit"].value == 1.0 and scores["word_limit"].pass_threshold == 1.0
    assert (scores["short"].evaluator, scores["short"].evaluator_version,
            scores["short"].source) == ("word_limit", "7", "programmatic")
    assert case.failures == ()  # exact_match: no expected output, no score


def test_a_plugins_options_are_checked_and_named_as_the_built_in_ones_are(tmp_path):
    plugins.load([_plugin(tmp_path, WORD_LIMIT)])
    with pytest.raises(SpecError) as e:
        validate_spec(EvaluatorSpec(type="word_limit", max_words=0))
    assert e.value.field == "max_words"
    with pytest.raises(SpecError) as e:
        validate_spec(EvaluatorSpec(type="word_limit", max_words=3, max_chars=9))
    assert e.value.field == "max_chars" and "allowed: pass_threshold, max_words" in str(e.value)
    with pytest.raises(SpecError) as e:
        validate_spec(EvaluatorSpec(type="word_limit"))
    assert e.value.field == "max_words"


@pytest.mark.parametrize(("output", "expected"), [
    ("a", ("score", 0.0, "categorical", "good")),
    ("e", ("score", 0.25, "numeric", None)),
    ("b", None),
    ("c", ("failure", "ValueError: the score's value must be a finite number, not nan")),
    ("d", ("failure", "TypeError: the evaluator returned list; expected a Score, a bool, a "
                      "number, a string (a label) or None")),
    ("z", ("failure", "KeyError: 'z'")),
])
def test_what_a_plugin_returns_becomes_a_score_or_that_cases_failure(tmp_path, output,
                                                                     expected):
    plugins.load([_plugin(tmp_path, WORD_LIMIT)])
    case = _scored((EvaluatorSpec(type="label"), EvaluatorSpec(type="word_limit", max_words=1)),
                   output=output)
    assert [s.name for s in case.scores if s.name == "word_limit"] == ["word_limit"]
    got = [("score", s.value, s.data_type, s.string_value) for s in case.scores
           if s.name == "label"] + [("failure", f.reason) for f in case.failures]
    assert got == ([expected] if expected else [])
    if expected and expected[0] == "failure":
        assert case.failures[0].evaluator_version == "1"


def test_two_plugin_files_of_the_same_name_both_load(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _plugin(tmp_path, WORD_LIMIT, name="a/evals.py")
    second = _plugin(tmp_path, """
        from services.evaluator.plugins import evaluator

        @evaluator("other", version="1")
        def other(case):
            return 1
    """, name="b/evals.py")
    assert plugins.load([first, second]) == ["label", "word_limit", "other"]


def test_a_module_on_the_path_loads_by_name_and_only_once(tmp_path, monkeypatch):
    _plugin(tmp_path, WORD_LIMIT, name="team_evals.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert plugins.load(["team_evals"]) == ["label", "word_limit"]
    assert plugins.load(["team_evals"]) == []  # the service and a command in one process
    described = {d["type"]: d for d in plugins.describe()}
    assert described["word_limit"]["plugin"] == "team_evals"
    assert described["word_limit"]["options"]["required"] == ["max_words"]
    assert (described["exact_match"]["plugin"], described["exact_match"]["version"]) == (None, "1")


def test_a_plugin_may_replace_a_built_in_evaluator_under_another_version(tmp_path):
    plugins.load([_plugin(tmp_path, """
        from services.evaluator.evaluators import ContainsOptions
        from services.evaluator.plugins import evaluator

        @evaluator("contains", version="2", options=ContainsOptions)
        def contains(case, options):
            return 0.5
    """)])
    case = _scored((EvaluatorSpec(type="contains", keywords=["one"]),))
    assert [(s.value, s.evaluator_version) for s in case.scores] == [(0.5, "2")]


@pytest.mark.parametrize(("source", "message"), [
    ("""
     from services.evaluator.plugins import evaluator
     @evaluator("contains", version="1")
     def contains(case):
         return 1
     """, "replaces the built-in one with the same version '1'"),
    ("""
     from services.evaluator.plugins import evaluator
     @evaluator("twice", version="1")
     def a(case):
         return 1
     @evaluator("twice", version="2")
     def b(case):
         return 1
     """, "evaluator 'twice' is registered twice"),
    ("""
     from pydantic import BaseModel
     from services.evaluator.plugins import evaluator
     class Opts(BaseModel):
         x: int = 1
     @evaluator("opts", version="1", options=Opts)
     def opts(case, options):
         return 1
     """, "`options` must be a subclass of services.evaluator.plugins.Options"),
    ("""
     from services.evaluator.plugins import evaluator
     @evaluator("has space", version="1")
     def f(case):
         return 1
     """, "evaluator type 'has space': 1 to 100 letters"),
    ("x = 1\n", "registers no evaluator"),
    ("import no_such_module_here\n",
     "failed to load: ModuleNotFoundError: No module named 'no_such_module_here'"),
])
def test_a_plugin_that_cannot_be_used_is_refused_with_its_reason(tmp_path, source, message):
    path = _plugin(tmp_path, source)
    with pytest.raises(PluginError) as e:
        plugins.load([path])
    assert message in str(e.value)


def test_a_plugin_named_wrongly_says_so(tmp_path):
    with pytest.raises(PluginError, match="no such file"):
        plugins.load([str(tmp_path / "missing.py")])
    with pytest.raises(PluginError, match="No module named 'not_a_module_anywhere'"):
        plugins.load(["not_a_module_anywhere"])


def test_the_setting_is_a_comma_separated_list(monkeypatch):
    monkeypatch.setenv("EVALSTREAM_EVALUATOR_PLUGINS", "team_evals, ./more.py,")
    assert Settings().evaluator_plugins == ["team_evals", "./more.py"]


ASYNC_PLUGIN = """
    import asyncio
    from services.evaluator.plugins import Options, evaluator

    in_flight = peak = 0

    class Wait(Options):
        seconds: float = 0.01

    @evaluator("remote_check", version="2", options=Wait)
    async def remote_check(case, options):
        global in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(options.seconds)
            if case.output == "raise":
                raise ConnectionError("the checker is down")
            return len(str(case.output)) / 10
        finally:
            in_flight -= 1
"""


def _envelopes(outputs, specs):
    return [wrap(TraceCompleted(trace_id=f"t{n}", run_id="r1", dataset_item_id=f"i{n}",
                                output=out, status="succeeded", completed_at=AT,
                                evaluators=specs), source="t", key="r1", id=f"e{n}")
            for n, out in enumerate(outputs)]


async def test_an_async_plugin_scores_a_batchs_cases_concurrently_within_its_bound(tmp_path):
    plugins.load([_plugin(tmp_path, ASYNC_PLUGIN, name="remote.py")])
    (module,) = [m for name, m in sys.modules.items()
                 if name.startswith("evalstream_plugin_remote_")]
    assert plugins.any_async()
    specs = (EvaluatorSpec(type="remote_check"), EvaluatorSpec(type="exact_match"))
    outputs = ["abcde", "raise", *["x" * n for n in range(10)]]
    scored = await score_cases(_envelopes(outputs, specs), LLMJudge(LLMJudgeSettings()),
                               AsyncEvaluatorSettings(concurrency=4))
    events = [env.event for env in scored]
    assert [[(s.name, s.value, s.evaluator_version) for s in e.scores] for e in events[:2]] == [
        [("remote_check", 0.5, "2")], []]
    assert [f.reason for f in events[1].failures] == ["ConnectionError: the checker is down"]
    assert [e.scores[0].value for e in events[2:]] == [n / 10 for n in range(10)]
    assert module.peak == 4  # 12 calls, at most 4 at once


async def test_an_async_plugins_calls_still_running_at_the_deadline_are_failures(tmp_path):
    plugins.load([_plugin(tmp_path, ASYNC_PLUGIN, name="remote.py")])
    specs = (EvaluatorSpec(type="remote_check", seconds=5), EvaluatorSpec(type="exact_match"),
             EvaluatorSpec(type="remote_check", name="quick"))
    scored = await score_cases(_envelopes(["abc"], specs), LLMJudge(LLMJudgeSettings()),
                               AsyncEvaluatorSettings(deadline_s=0.2))
    case = scored[0].event
    assert [(s.name, s.value) for s in case.scores] == [("quick", 0.3)]
    assert [(f.name, f.reason) for f in case.failures] == [
        ("remote_check", "TimeoutError: no answer within the batch deadline of 0.2 s "
                         "(EVALSTREAM_ASYNC_EVALUATORS__DEADLINE_S); rescore to try again")]


SLOW_PLUGIN = """
    import time
    from services.evaluator.plugins import Options, evaluator

    class Nap(Options):
        seconds: float = 0.05

    @evaluator("slow_check", version="1", options=Nap)
    def slow_check(case, options):
        if case.output == "raise":
            raise ValueError("no good")
        time.sleep(options.seconds)
        return len(str(case.output)) / 10
"""


async def test_a_plain_plugin_runs_off_the_event_loop_up_to_the_deadline(tmp_path):
    """A plain function sleeping (or computing) does not hold up the loop — the consumer's
    heartbeats, the judge's calls —, and the calls not done at the deadline are failures."""
    import asyncio

    plugins.load([_plugin(tmp_path, SLOW_PLUGIN, name="slow.py")])
    assert not plugins.any_async()  # the evaluator's batches stay as large as without it
    specs = (EvaluatorSpec(type="slow_check", seconds=0.1), EvaluatorSpec(type="exact_match"))
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beating = asyncio.create_task(ticker())
    scored = await score_cases(_envelopes(["abc", "raise", "a", "b", "c"], specs),
                               LLMJudge(LLMJudgeSettings()),
                               AsyncEvaluatorSettings(deadline_s=0.25))
    beating.cancel()
    assert ticks >= 15  # the loop ran on through the plugin's ~0.25 s
    cases = [env.event for env in scored]
    assert [(s.name, s.value) for s in cases[0].scores] == [("slow_check", 0.3)]
    assert [f.reason for f in cases[1].failures] == ["ValueError: no good"]
    assert [(s.name, s.value) for s in cases[2].scores] == [("slow_check", 0.1)]
    # 0.1 s each: "c" (and perhaps "b") were not reached by 0.25 s; exact_match carries on.
    late = ("TimeoutError: no answer within the batch deadline of 0.25 s "
            "(EVALSTREAM_ASYNC_EVALUATORS__DEADLINE_S); rescore to try again")
    assert [f.reason for f in cases[4].failures] == [late]
    assert cases[4].scores == ()  # no expected output: no exact_match score either
    # A call past the deadline runs on in its thread (here 1 s); meanwhile the next batch starts
    # no other thread: its calls fail saying why. Once it has returned, plugins are called again.
    await asyncio.sleep(0.5)  # the thread above has returned ("b" ended at ~0.3 s)
    judge, quick = LLMJudge(LLMJudgeSettings()), AsyncEvaluatorSettings(deadline_s=0.1)
    [late_one] = await score_cases(
        _envelopes(["d"], (EvaluatorSpec(type="slow_check", seconds=1.0),)), judge, quick)
    assert late_one.event.failures[0].reason.startswith("TimeoutError")
    [busy] = await score_cases(_envelopes(["de"], specs[:1]), judge, quick)
    assert "still running past its deadline" in busy.event.failures[0].reason
    await asyncio.sleep(1.2)
    [again] = await score_cases(_envelopes(["de"], specs[:1]), judge,
                                AsyncEvaluatorSettings(deadline_s=1.0))
    assert [(s.name, s.value) for s in again.event.scores] == [("slow_check", 0.2)]
    # Without a judge at hand (score_case alone), the function is called in place as before.
    assert [(s.name, s.value) for s in _scored(specs[:1], output="ab").scores] == [
        ("slow_check", 0.2)]


def test_specs_are_tried_locally_with_a_plugin_just_written(tmp_path):
    """`evalstream evaluators try --local`: no server; the plugin as it is on disk now."""
    import json
    import subprocess

    path = _plugin(tmp_path, WORD_LIMIT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALSTREAM_")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "services.cli", "evaluators", "try",
                               "--local", *args], capture_output=True, text=True, env=env,
                              cwd=ROOT, timeout=60)

    done = cli("--plugin", path, '{"type": "word_limit", "max_words": 2}',
               '{"type": "label"}', "--output", "a", "--json")
    assert done.returncode == 0, done.stderr
    assert [[(s["name"], s["value"], s["label"], s["passed"]) for s in r["scores"]]
            for r in json.loads(done.stdout)] == [[("word_limit", 1.0, None, True),
                                                   ("label", 0.0, "good", None)]]
    def said(done):  # the error panel's text, unwrapped
        return " ".join(done.stderr.replace("│", " ").split())

    done = cli("--plugin", path, '{"type": "word_limit", "max_words": 0}', "--output", "a")
    assert done.returncode == 2
    assert "evaluators.0: Value error, max_words: Input should be greater than or equal to 1" \
        in said(done)
    done = cli('{"type": "word_limit"}', "--output", "a")  # the plugin not named: unknown
    assert done.returncode == 2 and "unknown evaluator type 'word_limit'" in said(done)


async def test_a_trial_whose_plain_plugin_never_returns_is_given_up(tmp_path):
    import time

    from services.evaluator import trial

    plugins.load([_plugin(tmp_path, """
        import time
        from services.evaluator.plugins import evaluator

        @evaluator("stuck", version="1")
        def stuck(case):
            time.sleep(30)
    """, name="stuck.py")])
    started = time.monotonic()
    with pytest.raises(trial.TrialTimeout, match="did not finish within 0.5 s"):
        await trial.try_specs((EvaluatorSpec(type="stuck"),), [{"output": "x"}], Settings(),
                              limit=0.5)
    assert time.monotonic() - started < 5
    # Another trial meanwhile is answered: the stuck call holds up its own thread only.
    (answer,) = await trial.try_specs((EvaluatorSpec(type="exact_match"),),
                                      [{"output": "a", "expected_output": "a"}], Settings())
    assert [(s["name"], s["passed"]) for s in answer["scores"]] == [("exact_match", True)]


def test_options_json_schema_cannot_express_are_listed_by_name(tmp_path):
    plugins.load([_plugin(tmp_path, """
        from typing import Callable
        from pydantic import ConfigDict
        from services.evaluator.plugins import Options, evaluator

        class Odd(Options):
            model_config = ConfigDict(arbitrary_types_allowed=True)
            check: Callable = len

        @evaluator("odd", version="1", options=Odd)
        def odd(case, options):
            return 1
    """, name="odd.py")])
    described = {d["type"]: d for d in plugins.describe()}
    assert set(described["odd"]["options"]["properties"]) == {"pass_threshold", "check"}
    assert described["odd"]["options"]["description"] == "options not expressible as JSON Schema"
