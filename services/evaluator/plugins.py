"""Your own evaluators, without forking evalstream: a module (or a .py file) that registers
functions with `@evaluator`, named in `EVALSTREAM_EVALUATOR_PLUGINS`, which every service loads at
start (ingest, to accept specs of the new type and check their options; the evaluator, to score
with it; `evalstream replay`, to check the specs it is given).

    # my_evals.py
    from services.evaluator.plugins import Options, Score, evaluator

    class ConciseOptions(Options):
        max_words: int = 50

    @evaluator("concise", version="1", options=ConciseOptions)
    def concise(case, options: ConciseOptions):
        return len(str(case.output).split()) <= options.max_words

An evaluator is a pure function of the case (`case.input`, `.output`, `.expected_output`, …:
schemas/traces.py, ScoringCase) and its options, like the built-in ones, so a replay through it
gives the same scores; bump `version` whenever its semantics change, and every score says which
version gave it. It returns a `Score`, or `True`/`False` (boolean 1/0), a number (numeric), a
string (a categorical score with that label), or None (nothing to score). One that raises, or
returns anything else, is that case's evaluator failure, listed in the run's results; the
case's other evaluators carry on.

An `async def` evaluator (one that calls a service) is awaited by the evaluator service a batch's
cases at once, within `EVALSTREAM_ASYNC_EVALUATORS__*`'s bound and deadline (`call_many`); a plain
one runs in the service's event loop, so it should only compute.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import logging
import math
import re
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from schemas.common import EvaluatorSpec
from schemas.traces import ScoringCase
from services.evaluator.deadline import within_deadline
from services.evaluator.evaluators import REGISTRY, Evaluator, Options, Score, parse_options
from services.settings import AsyncEvaluatorSettings, ConfigurationError
from services.threads import in_daemon_thread

__all__ = ["Options", "PluginError", "Score", "ScoringCase", "evaluator", "load"]

log = logging.getLogger(__name__)

_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_BUILT_IN = dict(REGISTRY)
_by_plugin: dict[str, str] = {}  # evaluator type -> the plugin that registered it, as named
_loaded: set[str] = set()
_loading: list[str] = []  # the plugin being imported


class PluginError(ConfigurationError):
    """A plugin that cannot be loaded or registers an evaluator wrongly; the message says which
    and why."""


def as_score(result: Any) -> Score | None:
    """What a plugin's function returned, as a score: see the module's docstring."""
    if result is None or isinstance(result, Score):
        score = result
    elif isinstance(result, bool):
        score = Score(1.0 if result else 0.0, "boolean")
    elif isinstance(result, int | float):
        score = Score(float(result), "numeric")
    elif isinstance(result, str):
        score = Score(0.0, "categorical", string_value=result)
    else:
        raise TypeError(f"the evaluator returned {type(result).__name__}; expected a Score, "
                        "a bool, a number, a string (a label) or None")
    if score is not None:
        if not isinstance(score.value, int | float) or not math.isfinite(score.value):
            raise ValueError(f"the score's value must be a finite number, not {score.value!r}")
        if score.data_type == "categorical" and not (score.string_value or "").strip():
            raise ValueError("a categorical score needs a label (string_value)")
        for tokens in (score.input_tokens, score.output_tokens):
            if tokens is not None and (not isinstance(tokens, int) or isinstance(tokens, bool)
                                       or tokens < 0):
                raise ValueError(f"a score's tokens are a count (0 or more), not {tokens!r}")
    return score


def evaluator(kind: str, /, *, version: str,
              options: type[Options] = Options) -> Callable[[Callable], Callable]:
    """Register the decorated function as the evaluator of specs `{"type": kind, …}`; `options`
    (a subclass of Options) are the spec's own fields, checked by ingest when a dataset or run
    names them (a wrong one is a 422 naming it) and passed to the function validated. The
    function takes `(case)` or `(case, options)`."""
    if not isinstance(kind, str) or not _TYPE.fullmatch(kind):
        raise PluginError(f"evaluator type {kind!r}: 1 to 100 letters, digits or _ . : -")
    if not isinstance(version, str) or not version.strip():
        raise PluginError(f"evaluator {kind!r}: `version` must be a non-empty string")
    if not (isinstance(options, type) and issubclass(options, Options)):
        raise PluginError(f"evaluator {kind!r}: `options` must be a subclass of "
                          "services.evaluator.plugins.Options")

    def register(fn: Callable) -> Callable:
        try:
            takes_options = len(inspect.signature(fn).parameters) >= 2
        except (TypeError, ValueError):
            takes_options = True
        origin = _loading[-1] if _loading else getattr(fn, "__module__", "?")
        if kind in _by_plugin:
            raise PluginError(f"evaluator {kind!r} is registered twice (by {_by_plugin[kind]} "
                              f"and {origin})")
        built_in = _BUILT_IN.get(kind)
        if built_in is not None:
            if built_in.version == version:
                raise PluginError(
                    f"evaluator {kind!r} from {origin} replaces the built-in one with the same "
                    f"version {version!r}; give it another version, so that its scores can be "
                    "told apart from the built-in's")
            log.warning("evaluator %r version %s from %s replaces the built-in version %s",
                        kind, version, origin, built_in.version)

        if inspect.iscoroutinefunction(fn):
            async def called(case: ScoringCase, spec: EvaluatorSpec) -> Score | None:
                parsed = parse_options(options, spec)
                return as_score(await (fn(case, parsed) if takes_options else fn(case)))

            def refuses(case: ScoringCase, spec: EvaluatorSpec) -> Score | None:
                parse_options(options, spec)  # a wrong spec says so first
                raise RuntimeError(f"{kind} is async: the evaluator service calls it, a batch's "
                                   "cases at once")

            REGISTRY[kind] = Evaluator(kind, version, refuses, options, batched=True,
                                       call=called)
        else:
            def scored(case: ScoringCase, spec: EvaluatorSpec) -> Score | None:
                parsed = parse_options(options, spec)
                return as_score(fn(case, parsed) if takes_options else fn(case))

            REGISTRY[kind] = Evaluator(kind, version, scored, options, threaded=True)
        _by_plugin[kind] = origin
        return fn

    return register


def _import(name: str) -> None:
    if name.endswith(".py") or "/" in name or "\\" in name:
        path = Path(name).expanduser().resolve()
        if not path.is_file():
            raise PluginError(f"EVALSTREAM_EVALUATOR_PLUGINS: no such file {str(path)!r}")
        # Named after the file and its place, so two plugins of the same file name both load.
        module_name = (f"evalstream_plugin_{re.sub(r'[^A-Za-z0-9_]', '_', path.stem)}_"
                       f"{hashlib.sha256(str(path).encode()).hexdigest()[:8]}")
        spec = importlib.util.spec_from_file_location(module_name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    else:
        importlib.import_module(name)


def load(names: Iterable[str]) -> list[str]:
    """Import each plugin (a module name, or the path of a .py file) once; returns the evaluator
    types they registered. A plugin that cannot be imported, raises on import or registers no
    evaluator is a PluginError naming it."""
    added: list[str] = []
    for name in names:
        if name in _loaded:
            continue
        before = set(_by_plugin)
        _loading.append(name)
        try:
            _import(name)
        except PluginError:
            raise
        except Exception as e:
            raise PluginError(f"evaluator plugin {name!r} failed to load: "
                              f"{type(e).__name__}: {e}") from e
        finally:
            _loading.pop()
        new = sorted(set(_by_plugin) - before)
        if not new:
            raise PluginError(f"evaluator plugin {name!r} registers no evaluator "
                              "(decorate a function with @evaluator)")
        _loaded.add(name)
        added += new
        log.info("evaluator plugin %s: %s", name, ", ".join(
            f"{t} (version {REGISTRY[t].version})" for t in new))
    return added


def any_async() -> bool:
    """Whether a loaded plugin's evaluator is async (the evaluator then takes smaller batches)."""
    return any(e.call is not None for e in REGISTRY.values())


async def call_many(pairs: Sequence[tuple[ScoringCase, EvaluatorSpec]],
                    settings: AsyncEvaluatorSettings) -> list[Score | None | BaseException]:
    """Each (case, spec) of async evaluators scored, in order: its score, None, or the exception
    that stopped it. At most `settings.concurrency` calls run at once; those still running at
    `settings.deadline_s` are cancelled and answered with a TimeoutError saying so."""
    bound = asyncio.Semaphore(settings.concurrency)

    async def one(case: ScoringCase, spec: EvaluatorSpec) -> Score | None:
        call = REGISTRY[spec.type].call
        assert call is not None
        async with bound:
            return await call(case, spec)

    deadline = settings.deadline_s
    return await within_deadline([one(case, spec) for case, spec in pairs], deadline,
                                 lambda: TimeoutError(
                                     f"no answer within the batch deadline of {deadline:g} s "
                                     "(EVALSTREAM_ASYNC_EVALUATORS__DEADLINE_S); rescore to try "
                                     "again"))


# Set when a batch gave up on its plain plugin thread at the deadline: that thread's end.
_overrunning: threading.Event | None = None


async def call_in_thread(pairs: Sequence[tuple[ScoringCase, EvaluatorSpec]],
                         settings: AsyncEvaluatorSettings) -> list[Score | None | BaseException]:
    """Each (case, spec) of plain plugin functions scored, in order, one after the other in a
    thread of its own, so that a slow function does not hold up the event loop (the consumer's
    heartbeats, the judge's calls). Those not done `settings.deadline_s` after the start are
    answered with a TimeoutError saying so; the thread stops after the call it is in, which
    Python cannot interrupt. While such a thread still runs, later batches do not start another
    (a function that never returns would otherwise keep a thread per batch): their calls are
    failures saying why, to be rescored once it has returned."""
    global _overrunning
    if _overrunning is not None and not _overrunning.is_set():
        busy = RuntimeError("a plain plugin function called by an earlier batch is still running "
                            "past its deadline; none is called until it returns (rescore later)")
        return [busy] * len(pairs)
    results: list[Score | None | BaseException] = []
    stop, finished = threading.Event(), threading.Event()

    def run() -> None:
        try:
            for case, spec in pairs:
                if stop.is_set():
                    return
                try:
                    results.append(REGISTRY[spec.type].fn(case, spec))
                except Exception as e:  # that case's failure; the others carry on
                    results.append(e)
        finally:
            finished.set()

    deadline = settings.deadline_s
    try:
        await asyncio.wait_for(in_daemon_thread(run, name="evalstream-plugins"), deadline)
    except TimeoutError:
        stop.set()
        _overrunning = finished
        log.warning("plain plugin evaluators were still running at the batch deadline of %s s",
                    deadline)
    done = results[:len(pairs)]
    late = TimeoutError(f"no answer within the batch deadline of {deadline:g} s "
                        "(EVALSTREAM_ASYNC_EVALUATORS__DEADLINE_S); rescore to try again")
    return done + [late] * (len(pairs) - len(done))


def describe() -> list[dict[str, Any]]:
    """Every evaluator type known here, for `GET /v1/evaluators`: its version, its source,
    whether a plugin gave it, and its options as JSON Schema."""
    return [{"type": e.type, "version": e.version, "source": e.source,
             "plugin": _by_plugin.get(e.type), "async": e.batched,
             "options": _options_schema(e.options)}
            for e in sorted(REGISTRY.values(), key=lambda e: e.type)]


def _options_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The options as JSON Schema; a plugin's options of a type JSON Schema cannot express are
    described by their names alone."""
    try:
        schema = model.model_json_schema()
    except Exception:  # noqa: BLE001 - pydantic raises several kinds for a type it cannot render
        return {"type": "object", "properties": {name: {} for name in model.model_fields},
                "description": "options not expressible as JSON Schema"}
    schema.pop("title", None)
    return schema
