"""The `evalstream` command: start the whole system for development, or one service, migrate,
rescore from the log (`replay`) and rebuild the read models (`projections rebuild`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from services import client
from services.settings import ConfigurationError, NotConfigured, Settings

# Markdown: a docstring's lines are one paragraph in --help, as written, not broken where the
# source breaks them.
HELP_MARKUP = "markdown"
app = typer.Typer(help="evalstream: event-sourced scoring of LLM application outputs.",
                  no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=HELP_MARKUP)


class Service(StrEnum):
    ingest = "ingest"
    evaluator = "evaluator"
    projections = "projections"


def tune_gc() -> None:
    """Collect cycles less often. A batch of thousands of events allocates millions of
    short-lived objects (pydantic models, dicts, tuples), almost all freed by reference counting,
    and CPython's default (a collection every 700 allocations net) spent ~30% of the evaluator's
    CPU collecting: its stage alone went from 94 to 65 µs per trace with (50,000, 20, 100)
    (bench/ceilings.py). Cycles are still collected; the objects made at start-up are frozen out
    of every later collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command(rich_help_panel="Run the system")
def migrate() -> None:
    """Create or upgrade the catalog and read-model schemas, and create the topics."""
    from services.database import migrate_all
    from services.messaging import ensure_topics

    settings = Settings()
    _logging(settings)

    async def main() -> None:
        await migrate_all(settings)
        await ensure_topics(settings)

    asyncio.run(main())
    typer.echo("schemas and topics are up to date")


@app.command(rich_help_panel="Run the system")
def serve(service: Service) -> None:
    """Run one service in the foreground (what each container of docker-compose.yml runs)."""
    import uvicorn

    settings = Settings()
    _logging(settings)
    tune_gc()
    if service is Service.ingest:
        from services.ingest.app import application_factory

        uvicorn.run(application_factory(settings), host=settings.host, port=settings.ingest_port,
                    log_level=settings.log_level.lower(), access_log=False)
    elif service is Service.projections:
        from services.projections.app import application_factory

        uvicorn.run(application_factory(settings), host=settings.host, port=settings.query_port,
                    log_level=settings.log_level.lower(), access_log=False)
    else:
        from services.evaluator.app import application_factory

        asyncio.run(application_factory(settings).run())


@app.command(rich_help_panel="Run the system")
def replay(
    since: str | None = typer.Option(
        None, help="Only traces completed at or after this ISO 8601 time (UTC unless a zone is "
                   "given) or this long ago (7d, 24h), by the events' own time."),
    run: list[str] = typer.Option([], "--run", help="Only this run (repeat for several)."),
    dataset: list[str] = typer.Option([], "--dataset",
                                      help="Only runs over this dataset (repeatable)."),
    trace: list[str] = typer.Option([], "--trace", help="Only this trace (repeatable)."),
    outside_runs: bool = typer.Option(
        False, "--outside-runs", help="Only traces of no run (production traffic)."),
    rule: str | None = typer.Option(
        None, "--rule", help="Only the traces this scoring rule selects (outside runs and "
                             "datasets, its metadata, its sample), scored with its evaluators "
                             "unless --evaluators: a new rule applied to traces posted before "
                             "it, with --since."),
    evaluators: Path | None = typer.Option(
        None, "--evaluators", exists=True, dir_okay=False,
        help="JSON or YAML file of evaluator specs to rescore with; default: each trace's own."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Rescore from the log: read finished traces back from the beginning, keep each selected
    run item's latest, and request its rescoring (one request id for all). Safe to interrupt
    and run again: scores are replaced, never duplicated, and the old values stay in history."""
    import json

    from services.evaluator import plugins
    from services.replay import (
        ReplayFilter,
        SpecFileError,
        UnknownRule,
        load_specs,
        parse_since,
    )
    from services.replay import replay as run_replay

    settings = Settings()
    try:
        selection = ReplayFilter(since=parse_since(since) if since else None,
                                 run_ids=frozenset(run), dataset_ids=frozenset(dataset),
                                 trace_ids=frozenset(trace), outside_runs=outside_runs,
                                 rule_name=rule)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--since") from None
    try:
        plugins.load(settings.evaluator_plugins)  # their specs may be among those given
        specs = load_specs(evaluators) if evaluators else None
    except SpecFileError as e:
        raise typer.BadParameter(str(e), param_hint="--evaluators") from None
    tune_gc()
    try:
        report = asyncio.run(run_replay(settings, selection, specs, progress=progress))
    except UnknownRule as e:
        raise typer.BadParameter(str(e), param_hint="--rule") from None
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        state = "INTERRUPTED after requesting" if report.interrupted else "requested"
        typer.echo(f"request {report.request_id}: {state} {report.requested} rescoring(s) "
                   f"({report.matched} matching trace(s) in {report.log_records} log records; "
                   f"scan {report.scan_seconds:.1f} s, requests {report.request_seconds:.1f} s)")
        for run_id, count in sorted(report.by_run.items()):
            typer.echo(f"  {run_id or '(no run)':<40} {count:>8}")
        if report.deleted:
            typer.echo(f"{report.deleted} trace(s) of deleted runs left out")
        if report.expired:
            typer.echo(f"{report.expired} trace(s) outside runs left out: older than what the "
                       "read models keep (retention)")
        typer.echo(f"progress: GET /v1/score-requests/{report.request_id}")
        if report.interrupted:
            typer.echo("run the same command again to request the rest (items already "
                       "rescored are rescored again, harmlessly)")
    if report.interrupted:
        raise typer.Exit(130)


@app.command(rich_help_panel="Run the system")
def status(as_json: bool = typer.Option(False, "--json", help="Print the status as JSON.")) -> None:
    """Is scoring keeping up? Each consumer group's lag (records of its topics it has not
    committed past yet) and the number of dead letters."""
    import json

    from services.status import pipeline_status

    settings = Settings()
    report = asyncio.run(pipeline_status(settings))
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    typer.echo(f"{'service':<12} {'group':<28} {'topic':<32} {'records':>10} {'lag':>10}")
    for group in report.groups:
        for topic in group.topics:
            typer.echo(f"{group.service:<12} {group.group:<28} {topic.topic:<32} "
                       f"{topic.end:>10,} {topic.lag:>10,}")
    behind = ", ".join(f"{g.service} {g.lag:,}" for g in report.groups)
    typer.echo(f"lag: {behind}; dead letters: {report.dead_letters:,}, "
               f"{report.dead_letters_pending:,} since the last redrive "
               f"(topic {settings.topics.dead_letter})")


# The options of the client commands (upload, run, check, show, compare, rescore, review,
# datasets, runs);
# services/client.py finds the defaults.
ClientKey = Annotated[str | None, typer.Option(
    envvar="EVALSTREAM_API_KEY",
    help="API key (default: the first of EVALSTREAM_API_KEYS, or the one `make up` made).")]
IngestUrl = Annotated[str | None, typer.Option(
    envvar="EVALSTREAM_INGEST_URL",
    help="Ingest API (default http://<EVALSTREAM_HOST>:<EVALSTREAM_INGEST_PORT>).")]
QueryUrl = Annotated[str | None, typer.Option(
    envvar="EVALSTREAM_QUERY_URL",
    help="Query API (default http://<EVALSTREAM_HOST>:<EVALSTREAM_QUERY_PORT>).")]


@contextlib.contextmanager
def _query_api(url: str | None, api_key: str | None, stopped: str, code: int = 2,
               ingest: bool = False):
    """The query API's client for a command (with `ingest`, a client of the same kind for the
    ingest API's GET endpoints); an ApiError inside (the API unreachable, a run not found, ...)
    ends the command with `code`, saying `<stopped>: <why>` on stderr."""
    settings = Settings()
    key = client.client_key(settings, api_key)
    api = client.QueryApi(client.ingest_url(settings, url), key, name="ingest API") if ingest \
        else client.QueryApi(client.query_url(settings, url), key)
    try:
        yield api
    except client.ApiError as e:
        typer.echo(f"{stopped}: {e}", err=True)
        raise typer.Exit(code) from None
    finally:
        api.close()


def _spec_file(path: Path, option: str) -> list[dict]:
    """The evaluator specs of a JSON or YAML file, as an API takes them, for a client command:
    only their form is checked here; their types and options are checked by ingest, which knows
    its plugins (a client need not have them). A wrong file is a usage error naming `option`."""
    from services.replay import SpecFileError, load_specs

    try:
        return [s.model_dump(exclude_none=True) for s in load_specs(path, check=False)]
    except SpecFileError as e:
        raise typer.BadParameter(str(e), param_hint=option) from None


def _check_metadata_matches(matches: list[str], param_hint: str) -> None:
    """Each of `matches` is KEY=VALUE, or the option is refused before any call."""
    from services.projections.views import InvalidQuery, parse_metadata_match

    for match in matches:
        try:
            parse_metadata_match(match)
        except InvalidQuery as e:
            raise typer.BadParameter(e.message, param_hint=param_hint) from None


def _check_baseline_where(baseline: str | None, where: list[str]) -> None:
    """--baseline-where: only with the baseline `latest`, and each KEY=VALUE."""
    if where and baseline != "latest":
        raise typer.BadParameter("only with the baseline `latest`", param_hint="--baseline-where")
    _check_metadata_matches(where, "--baseline-where")


@app.command(rich_help_panel="Evaluate")
def check(
    run_id: str = typer.Argument(..., metavar="RUN", help="The run to check."),
    min_pass_rate: float | None = typer.Option(
        None, min=0.0, max=1.0, help="Least overall pass rate (the run summary's pass_rate)."),
    minimum: list[str] = typer.Option(
        [], "--min", help="Least pass rate of one score, as NAME=RATE (repeatable), e.g. "
                          "--min exact_match=0.9."),
    baseline: str | None = typer.Option(
        None, help="A run of the same dataset to compare with, `pinned` for the dataset's "
                   "baseline run, or `latest` for its latest run started before this one (of "
                   "those --baseline-where selects): the items that regressed are counted per "
                   "score."),
    baseline_where: list[str] = typer.Option(
        [], "--baseline-where", help="With --baseline latest: KEY=VALUE the baseline run's "
                                     "metadata must have (repeatable), e.g. branch=main."),
    max_regressions: int = typer.Option(
        0, min=0, help="With --baseline: most items that may regress, per score."),
    significant: bool = typer.Option(
        False, "--significant", help="With --baseline: instead of counting regressed items, "
                                     "fail a score only when its pass rate fell by more than "
                                     "chance over the items both runs scored (one-sided "
                                     "p-value below 0.025, Holm-adjusted for the number of "
                                     "scores compared; for one score, its 95% interval lies "
                                     "below 0)."),
    max_failures: int | None = typer.Option(
        None, min=0, help="Most evaluator failures the run may have (an item an evaluator "
                          "failed on has no score of it, and pass rates leave it out)."),
    by: str | None = typer.Option(
        None, help="A metadata key, `item.<key>` or `trace.<key>` (e.g. item.category): "
                   "--min-pass-rate and --min must also be met in each of its groups."),
    items: int | None = typer.Option(
        None, min=0, help="Wait for this many items with a trace (default: every item of the "
                          "dataset)."),
    wait: float = typer.Option(300.0, min=0.0, help="Seconds to wait for the run's scoring."),
    url: str | None = typer.Option(
        None, envvar="EVALSTREAM_QUERY_URL",
        help="Query API (default http://<EVALSTREAM_HOST>:<EVALSTREAM_QUERY_PORT>)."),
    api_key: ClientKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    summary_file: Path | None = typer.Option(
        None, "--summary", dir_okay=False,
        help='Also append the report, with the run\'s scores (against --baseline), as Markdown '
             'to this file, e.g. --summary "$GITHUB_STEP_SUMMARY".'),
) -> None:
    """The gate for a CI job: wait until the run is scored, then check its pass rates, the items
    that regressed against --baseline and its evaluator failures. Exit 0 when every check is met,
    1 when one is not, 2 when it cannot tell (unknown run, API unreachable, still not scored
    after --wait)."""
    import json

    from services.check import check_run, parse_minimum
    from services.projections.breakdown import parse_group_by
    from services.projections.views import InvalidQuery

    try:
        minimums = dict(parse_minimum(m) for m in minimum)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    try:
        by = str(parse_group_by(by)) if by is not None else None
    except InvalidQuery as e:  # before any wait
        raise typer.BadParameter(e.message, param_hint="--by") from None
    if significant and baseline is None:
        raise typer.BadParameter("only with --baseline", param_hint="--significant")
    _check_baseline_where(baseline, baseline_where)
    said: list[str] = []

    def waiting(what: str) -> None:  # each new state once, on stderr
        if not said or said[-1] != what:
            said.append(what)
            typer.echo(f"waiting: {what}", err=True)

    with _query_api(url, api_key, "check undecided") as api:
        report = check_run(
            api, run_id, min_pass_rate=min_pass_rate, minimums=minimums, baseline=baseline,
            baseline_where=baseline_where,
            max_regressions=max_regressions, max_failures=max_failures, by=by, items=items,
            significant=significant, wait=wait, on_wait=waiting)
        if summary_file is not None:
            from services.reports import (
                fetch_comparison,
                fetch_run,
                markdown_check,
                markdown_comparison,
                markdown_run,
            )

            detail = markdown_comparison(fetch_comparison(api, run_id, report.baseline, 10),
                                         run_id) if report.baseline \
                else markdown_run(fetch_run(api, run_id, 10))
            with summary_file.open("a") as out:
                out.write(markdown_check(report, detail))
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    else:
        against = f", against baseline {report.baseline}" if report.baseline else ""
        typer.echo(f"run {report.run_id} ({report.run_name}): {report.items} item(s) scored"
                   f"{against}")
        for c in report.checks:
            typer.echo(f"  {'ok  ' if c.passed else 'FAIL'}  {c.describe()}")
        failed = sum(not c.passed for c in report.checks)
        typer.echo(f"{failed} of {len(report.checks)} check(s) failed" if failed else
                   f"passed ({len(report.checks)} check(s))")
    if not report.passed:
        raise typer.Exit(1)


dead_letters_app = typer.Typer(
    rich_markup_mode=HELP_MARKUP,
    help="The records consumers could not take (undecodable, or refused by the read model).",
    invoke_without_command=True)
app.add_typer(dead_letters_app, name="dead-letters", rich_help_panel="Run the system")


@dead_letters_app.callback()
def dead_letters_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print every dead letter as JSON."),
    limit: int = typer.Option(20, min=0, help="Latest dead letters listed after the summary."),
) -> None:
    """How many dead letters of each kind, and the latest with where they came from and why;
    `redrive` sends them back once the cause is fixed."""
    if ctx.invoked_subcommand is not None:
        return
    import json
    from dataclasses import asdict

    from services.dead_letters import dead_letters, kinds

    settings = Settings()
    letters = asyncio.run(dead_letters(settings))
    if as_json:
        typer.echo(json.dumps([asdict(d) for d in letters]))
        return
    typer.echo(f"{len(letters):,} dead letter(s) in {settings.topics.dead_letter}")
    for (consumer, kind), count in kinds(letters).most_common():
        typer.echo(f"  {count:>8,}  {consumer:<12} {kind}")
    latest = sorted(letters, key=lambda d: d.dead_lettered_at)[-limit:] if limit else []
    for d in latest:
        typer.echo(f"{d.dead_lettered_at} {d.topic}[{d.partition}]@{d.offset} "
                   f"{d.ce_type or '-'} {d.ce_id or '-'} ({d.consumer}): {d.reason}")


@dead_letters_app.command("redrive")
def dead_letters_redrive(
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would be sent; send nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Send the dead letters since the last redrive back to the topics they came from, once
    each, after the consumer that refused them is fixed. Consumers skip what they had applied;
    what is still refused comes back as a new dead letter."""
    import json

    from services.dead_letters import redrive

    report = asyncio.run(redrive(Settings(), dry_run=dry_run))
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    sent = sum(report.redriven.values())
    verb = "would send" if dry_run else "sent"
    typer.echo(f"{report.read:,} dead letter(s) since the last redrive; {verb} {sent:,} "
               f"record(s) back ({report.duplicates:,} dead-lettered twice, "
               f"{report.unroutable:,} with no topic to go back to)")
    for topic, count in sorted(report.redriven.items()):
        typer.echo(f"  {count:>8,}  {topic}")


projections_app = typer.Typer(help="Operate the read models.", no_args_is_help=True,
                              rich_markup_mode=HELP_MARKUP)
app.add_typer(projections_app, name="projections", rich_help_panel="Run the system")


@projections_app.command("rebuild")
def projections_rebuild(
    allow_truncated: bool = typer.Option(
        False, help="Rebuild even if retention has deleted the start of the log."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    workers: int = typer.Option(
        2, min=1, help="Processes sharing the long pass (decoding events is what limits one)."),
) -> None:
    """Rebuild every read model from offset zero into a fresh schema and switch readers and the
    live consumer over to it atomically once caught up. The live system keeps serving."""
    import json

    from services.projections.rebuild import RebuildRefused, rebuild

    settings = Settings()
    _logging(settings)
    tune_gc()
    try:
        report = asyncio.run(rebuild(settings, progress=progress,
                                     allow_truncated=allow_truncated, workers=workers))
    except RebuildRefused as e:
        typer.echo(f"rebuild refused: {e}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    typer.echo(f"rebuilt {report.name} into schema {report.schema}: {report.events} events "
               f"({report.undecodable} undecodable skipped) in {report.seconds:.1f} s "
               f"= {report.rate:,.0f} events/s")
    typer.echo(f"readers and the live consumer switched from {report.previous_schema} to "
               f"{report.schema} at {report.switched_at:%Y-%m-%d %H:%M:%S} UTC; the previous "
               "schema is kept (`evalstream projections drop-previous` drops it when no longer "
               "needed)")


@projections_app.command("schemas")
def projections_schemas(
    as_json: bool = typer.Option(False, "--json", help="Print the schemas as JSON."),
) -> None:
    """List the schemas of the read models, newest first: the live one and those earlier
    rebuilds left behind, with their sizes."""
    import json

    from services.projections.previous_schemas import read_model_schemas

    settings = Settings()
    _logging(settings)
    schemas = asyncio.run(read_model_schemas(settings))
    if as_json:
        typer.echo(json.dumps([info.as_dict() for info in schemas]))
        return
    if not schemas:
        typer.echo(f"no schema of read model {settings.read_model_schema} "
                   "(`evalstream migrate` creates it)")
        return
    width = max([len("schema"), *(len(info.name) for info in schemas)])
    typer.echo(f"{'schema':<{width}}  live  {'size MB':>10}  built at")
    for info in schemas:
        built = f"{info.built_at:%Y-%m-%d %H:%M:%S} UTC" if info.built_at else "-"
        typer.echo(f"{info.name:<{width}}  {'yes' if info.live else 'no':<4}  "
                   f"{info.size_bytes / 1e6:>10,.1f}  {built}")


@projections_app.command("sweep")
def projections_sweep(
    older_than: str | None = typer.Option(
        None, help="Remove the traffic outside runs older than this (30d, 12w) or than this "
                   "ISO 8601 time (UTC without a zone); default: "
                   "EVALSTREAM_RETENTION__OUTSIDE_RUNS."),
    as_json: bool = typer.Option(False, "--json", help="Print what was removed as JSON."),
) -> None:
    """Retention, once: remove the traces outside runs older than a cut from the read models.

    Their scores, verdicts and evaluator failures go too, and rows older than the cut arriving
    later stay out (a rebuild keeps the same cut). Runs are never touched; the log keeps every
    event. The projections service does this by itself every
    EVALSTREAM_RETENTION__SWEEP_INTERVAL_S when EVALSTREAM_RETENTION__OUTSIDE_RUNS is set."""
    import json
    from datetime import UTC, datetime

    import asyncpg

    from services.projections.retention import sweep_live
    from services.reports import parse_time

    settings = Settings()
    _logging(settings)
    now = datetime.now(UTC)
    if older_than is not None:
        try:
            before = parse_time(older_than, now)
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--older-than") from None
        if before > now:  # would remove all the traffic, and keep out all until then
            raise typer.BadParameter(f"{older_than!r} is in the future",
                                     param_hint="--older-than")
    elif settings.retention.outside_runs is not None:
        before = now - settings.retention.outside_runs
    else:
        raise typer.BadParameter("give a cut, or set EVALSTREAM_RETENTION__OUTSIDE_RUNS",
                                 param_hint="--older-than")

    async def once():
        conn = await asyncpg.connect(settings.dsn)
        try:
            return await sweep_live(settings, conn, before)
        finally:
            await conn.close()

    done = asyncio.run(once())
    if done is None:
        typer.echo("another sweep of the read models is running; try again later", err=True)
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(done.as_dict()))
        return
    typer.echo(f"the read models keep the traffic outside runs from "
               f"{done.before:%Y-%m-%d %H:%M:%S} UTC on; removed in {done.seconds:.1f} s:")
    for table, count in done.deleted.items():
        typer.echo(f"  {count:>10,}  {table}")


@projections_app.command("drop-previous")
def projections_drop_previous(
    keep: int = typer.Option(0, "--keep", min=0,
                             help="Keep this many of the newest schemas that are not live."),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="Only print what would be dropped."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Drop without asking."),
) -> None:
    """Drop the read-model schemas earlier rebuilds left behind (never the live one), except the
    --keep newest. Refused while a rebuild runs."""
    from services.projections.previous_schemas import (
        DropRefused,
        drop_previous_schemas,
        read_model_schemas,
    )

    settings = Settings()
    _logging(settings)
    try:
        if dry_run or not yes:
            doomed = asyncio.run(drop_previous_schemas(settings, keep, dry_run=True))
            if not doomed:
                typer.echo("no previous schema to drop")
                return
            sizes = {info.name: info.size_bytes
                     for info in asyncio.run(read_model_schemas(settings))}
            typer.echo("would drop:" if dry_run else "to drop:")
            for schema in doomed:
                typer.echo(f"  {schema} ({sizes.get(schema, 0) / 1e6:,.1f} MB)")
            if dry_run:
                return
            typer.confirm(f"drop {len(doomed)} schema(s) and everything in them?", abort=True)
            # Only what was confirmed, if it is still not live.
            dropped = asyncio.run(drop_previous_schemas(settings, keep, only=doomed))
        else:
            dropped = asyncio.run(drop_previous_schemas(settings, keep))
    except DropRefused as e:
        typer.echo(f"drop refused: {e}", err=True)
        raise typer.Exit(1) from None
    if not dropped:
        typer.echo("no previous schema to drop")
    for schema in dropped:
        typer.echo(f"dropped {schema}")


@app.command(rich_help_panel="Evaluate")
def download(
    dataset: str = typer.Argument(..., metavar="DATASET", help="The dataset (id or name)."),
    output: Path | None = typer.Option(
        None, "--output", "-o", dir_okay=False,
        help="The .jsonl file to write (default: standard output)."),
    query_url: QueryUrl = None,
    api_key: ClientKey = None,
) -> None:
    """Write a dataset's items as JSON Lines (id, input, expected_output, metadata), the form
    `evalstream upload` reads: to keep a dataset in version control or move it elsewhere."""
    from services.download import download as fetch
    from services.reports import dataset_id

    with _query_api(query_url, api_key, "download stopped") as api:
        found = dataset_id(api, dataset)
        if output is None:
            fetch(api, found, sys.stdout)
            return
        with output.open("w") as out, tqdm(unit="item", desc=f"writing {output.name}") as bar:
            def moved(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            written = fetch(api, found, out, moved)
    typer.echo(f"{written:,} item(s) of dataset {found} written to {output}", err=True)


@app.command(rich_help_panel="Evaluate")
def upload(
    file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="A .jsonl (one item object a line) or .csv file."),
    dataset: str | None = typer.Option(None, help="The dataset to add the items to."),
    name: str | None = typer.Option(None, help="Or: create a dataset of this name and add "
                                               "them to it."),
    evaluators: Path | None = typer.Option(
        None, exists=True, dir_okay=False,
        help="Evaluator specs (JSON or YAML list) of the dataset: a new one's (default: "
             "exact_match), or an existing one's, replaced (later runs take them)."),
    url: str | None = typer.Option(
        None, envvar="EVALSTREAM_INGEST_URL",
        help="Ingest API (default http://<EVALSTREAM_HOST>:<EVALSTREAM_INGEST_PORT>)."),
    api_key: ClientKey = None,
) -> None:
    """Upload a dataset's items from a JSON Lines or CSV file (CSV: columns input, id,
    expected_output; the other columns become the items' metadata), 1,000 per call, and with
    --evaluators the dataset's evaluator specs. The file is checked whole first: a wrong line
    stops it before anything is sent. Items with the ids of existing ones replace them."""
    import httpx

    from services.upload import UploadError, read_items
    from services.upload import upload as send

    if (dataset is None) == (name is None):
        raise typer.BadParameter("give --dataset ID or --name NAME", param_hint="--dataset")
    specs = _spec_file(evaluators, "--evaluators") if evaluators else None
    settings = Settings()
    try:
        items = read_items(file)
    except UploadError as e:
        typer.echo(f"upload refused: {e}", err=True)
        raise typer.Exit(2) from None
    with httpx.Client(base_url=client.ingest_url(settings, url),
                      headers=client.auth(client.client_key(settings, api_key)),
                      timeout=60) as ingest:
        try:
            if dataset is None:
                r = ingest.post("/v1/datasets", json={"name": name} | (
                    {"evaluators": specs} if specs else {}))
                if r.status_code != 201:
                    raise UploadError(f"creating the dataset: {client.refusal(r)}")
                dataset = r.json()["id"]
            elif specs:
                r = ingest.put(f"/v1/datasets/{dataset}/evaluators", json=specs)
                if r.status_code != 200:
                    raise UploadError(f"setting the dataset's evaluators: {client.refusal(r)}")
            with tqdm(total=len(items), unit="item", desc=f"uploading {file.name}") as bar:
                ids = send(ingest, dataset, items, bar.update)
        except (UploadError, httpx.HTTPError) as e:
            typer.echo(f"upload stopped: {e}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"dataset {dataset}: {len(ids):,} item(s) from {file}")


class CollectFilter(StrEnum):
    failed = "failed"
    passed = "passed"
    unscored = "unscored"
    evaluator_failed = "evaluator_failed"


@app.command(rich_help_panel="Monitor")
def collect(
    dataset: str = typer.Argument(..., metavar="DATASET",
                                  help="The dataset (id or name) to add the traces to."),
    trace: list[str] = typer.Option([], "--trace", help="This trace (repeatable); else the "
                                                        "newest that match the options below."),
    since: str = typer.Option("24h", help="Traces completed since this ISO 8601 time or this "
                                          "long ago (24h, 7d)."),
    which: CollectFilter | None = typer.Option(
        None, "--filter", help="failed: a score (of --score) failed; passed, unscored, "
                               "evaluator_failed: as GET /v1/traces takes them."),
    score: str | None = typer.Option(None, help="The score name --filter looks at."),
    by: str | None = typer.Option(None, help="With --group: a trace metadata key, "
                                             "trace.<key>."),
    group: str | None = typer.Option(None, help="With --by: only the traces with this value."),
    limit: int = typer.Option(100, min=1, max=100_000, help="Most traces to add."),
    expected: str = typer.Option(
        "none", help="none: the items have no expected output (fill it in); output: the "
                     "trace's output is the expected one (a person confirmed it)."),
    ingest_url: IngestUrl = None,
    query_url: QueryUrl = None,
    api_key: ClientKey = None,
) -> None:
    """Add production traces (posted outside any run) to a dataset as items — the failures a
    scoring rule or a person found, kept as test cases: each item's id is its trace's id (adding
    it again updates it), its input the trace's, its metadata the trace's with source_trace_id."""
    from datetime import UTC, datetime

    import httpx

    from services.collect import CollectError
    from services.collect import collect as gather
    from services.reports import dataset_id, parse_time

    if expected not in ("none", "output"):
        raise typer.BadParameter("none or output", param_hint="--expected")
    if (by is None) != (group is None):
        raise typer.BadParameter("give --by and --group together", param_hint="--by")
    try:
        filters = {"since": parse_time(since, datetime.now(UTC)).isoformat()}
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--since") from None
    filters |= {k: v for k, v in (("filter", which.value if which else None), ("score", score),
                                  ("by", by), ("group", group)) if v is not None}
    settings = Settings()
    with _query_api(query_url, api_key, "collect stopped") as api, httpx.Client(
            base_url=client.ingest_url(settings, ingest_url),
            headers=client.auth(client.client_key(settings, api_key)), timeout=60) as ingest:
        found = dataset_id(api, dataset)
        try:
            ids = gather(api, ingest, found, trace_ids=trace, limit=limit,
                         expected=expected, **filters)  # type: ignore[arg-type]
        except CollectError as e:
            typer.echo(f"collect stopped: {e}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"dataset {found}: {len(ids):,} trace(s) added as items")


@app.command("run", rich_help_panel="Evaluate")
def run_command(
    dataset: str | None = typer.Argument(None, metavar="DATASET",
                                         help="The dataset (id or name) whose items to run the "
                                              "task over."),
    task: str = typer.Option(
        ..., help="Your agent, as module:function or file.py:function: called with each item's "
                  "input (plain or async), it returns the output, or a "
                  "services.runner.TaskResult(output, usage, cost, metadata)."),
    name: str | None = typer.Option(None, help="The run's name (default: the task and the "
                                               "time)."),
    metadata: list[str] = typer.Option([], help="KEY=VALUE to keep on the run (repeatable)."),
    concurrency: int = typer.Option(8, min=1, max=256, help="Items in the task at once."),
    limit: int | None = typer.Option(None, min=1, help="Only the first N items (to try the "
                                                       "task out)."),
    timeout: float | None = typer.Option(
        None, min=0.001, help="Seconds an item may take; past it, the item fails with a "
                              "TimeoutError and the run goes on."),
    run_id: str | None = typer.Option(None, "--run", help="Continue this run instead of "
                                                          "starting one: items that have a "
                                                          "trace are skipped."),
    evaluators: Path | None = typer.Option(
        None, exists=True, dir_okay=False,
        help="Evaluator specs (JSON or YAML list) of this run, instead of the dataset's."),
    ingest_url: IngestUrl = None,
    query_url: QueryUrl = None,
    api_key: ClientKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Run your agent over a dataset: a new run, each item's input through --task, its output
    (or the error it raised) posted as the item's trace, which the evaluators then score. Prints
    the run id on stdout (for `evalstream check`); a task's failure on an item is a failed trace,
    and the run goes on."""
    import json

    from services.runner import RunnerError, load_task, run_dataset

    if (dataset is None) == (run_id is None):
        raise typer.BadParameter("give a DATASET, or --run RUN to continue a run",
                                 param_hint="DATASET")
    pairs = {}
    for m in metadata:
        key, sep, value = m.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{m!r}: give KEY=VALUE", param_hint="--metadata")
        pairs[key] = value
    try:
        fn = load_task(task)
    except RunnerError as e:
        raise typer.BadParameter(str(e), param_hint="--task") from None
    if evaluators is not None and run_id is not None:
        raise typer.BadParameter("only for a new run (a run keeps the specs it started with; "
                                 "`evalstream rescore` scores it with others)",
                                 param_hint="--evaluators")
    specs = _spec_file(evaluators, "--evaluators") if evaluators else None
    if dataset is not None:
        from services.reports import dataset_id

        with _query_api(query_url, api_key, "run stopped", code=1) as api:
            dataset = dataset_id(api, dataset)
    bar: tqdm | None = None

    def started(report, todo: int) -> None:
        nonlocal bar
        typer.echo(f"run {report.run_id} ({report.name}) of dataset {report.dataset_id}",
                   err=True)
        # In a CI log (no terminal), a line every 30 s rather than ten a second.
        bar = tqdm(total=todo, unit="item", desc="running the task",
                   mininterval=0.1 if sys.stderr.isatty() else 30)

    try:
        report = run_dataset(
            dataset, fn, name=name or f"{task} {time.strftime('%Y-%m-%d %H:%M:%S')}",
            ingest_url=ingest_url, query_url=query_url, api_key=api_key,
            metadata=pairs or None, run_id=run_id, evaluators=specs,
            concurrency=concurrency, limit=limit,
            item_timeout=timeout, on_start=started, on_item=lambda: bar.update() if bar else None)
    except RunnerError as e:
        typer.echo(f"run stopped: {e}", err=True)
        raise typer.Exit(1) from None
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
        return
    errors = ", ".join(f"{k} {n}" for k, n in sorted(report.errors.items(), key=lambda e: -e[1]))
    typer.echo(f"{report.items:,} item(s) through the task in {report.seconds:,.1f} s: "
               f"{report.succeeded:,} succeeded, {report.failed:,} failed"
               f"{f' ({errors})' if errors else ''}"
               f"{f', {report.skipped:,} already traced' if report.skipped else ''}; "
               f"{report.posted:,} trace(s) posted", err=True)
    for item, why in list(report.refused.items())[:10]:
        typer.echo(f"  not posted, refused twice by the API: item {item}: {why}", err=True)
    typer.echo(f"next: evalstream check {report.run_id} (waits for the scores) · "
               f"evalstream compare {report.run_id} <baseline run>", err=True)
    typer.echo(report.run_id)


@app.command(rich_help_panel="Evaluate")
def compare(
    run_id: str = typer.Argument(..., metavar="RUN", help="The run to compare."),
    baseline: str | None = typer.Argument(
        None, metavar="BASELINE", help="The run to compare it with, or `latest`: its dataset's "
                                       "latest run started before it (default: the dataset's "
                                       "baseline run)."),
    baseline_where: list[str] = typer.Option(
        [], "--baseline-where", help="With `latest`: KEY=VALUE the baseline run's metadata must "
                                     "have (repeatable), e.g. branch=main."),
    items: int = typer.Option(10, min=0, help="Regressed and improved items to list, each."),
    query_url: QueryUrl = None,
    api_key: ClientKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Print it as GitHub Markdown (for a "
                                                            "pull request's comment)."),
) -> None:
    """A run against a baseline run of its dataset: the summaries side by side, each score's
    pass rate and average with the change, how many items got better or worse, and the items
    that regressed, improved or changed status, with their outputs."""
    import json

    from services.check import LATEST, latest_run_before
    from services.reports import fetch_comparison, markdown_comparison, render_comparison

    _check_baseline_where(baseline, baseline_where)
    with _query_api(query_url, api_key, "compare") as api:
        if baseline == LATEST:
            baseline = latest_run_before(api, api.summary(run_id), baseline_where)
        comparison = fetch_comparison(api, run_id, baseline, items)
    typer.echo(json.dumps(comparison) if as_json else markdown_comparison(comparison, run_id)
               if markdown else render_comparison(comparison, run_id))


class RescoreOnly(StrEnum):
    evaluator_failures = "evaluator-failures"
    failed = "failed"
    unscored = "unscored"


@app.command(rich_help_panel="Evaluate")
def rescore(
    run_id: str = typer.Argument(..., metavar="RUN", help="The run to score again."),
    evaluators: Path | None = typer.Option(
        None, exists=True, dir_okay=False,
        help="Evaluator specs (JSON or YAML list) to score with instead of the run's own."),
    wait: float = typer.Option(300.0, min=0.0, help="Seconds to wait for every case (0: do "
                                                    "not wait)."),
    only: RescoreOnly | None = typer.Option(
        None, help="Only the items an evaluator failed on (a judge that timed out, say), a "
                   "score failed on, or that have no score."),
    score: str | None = typer.Option(None, help="With --only: of this score name alone."),
    ingest_url: IngestUrl = None,
    query_url: QueryUrl = None,
    api_key: ClientKey = None,
) -> None:
    """Score a run's items again, with new evaluator specs or its own, without running the
    agent again: the new values replace the old (kept in each score's history). Waits until
    every case is done, with a progress bar; prints the request id on stdout."""
    import httpx

    from services import rescore as rescoring

    if score is not None and only is None:
        raise typer.BadParameter("only with --only", param_hint="--score")
    specs = _spec_file(evaluators, "--evaluators") if evaluators else None
    settings = Settings()
    with httpx.Client(base_url=client.ingest_url(settings, ingest_url),
                      headers=client.auth(client.client_key(settings, api_key)),
                      timeout=60) as ingest, \
            _query_api(query_url, api_key, "rescore stopped", code=1) as api:
        chosen = None
        if only is not None:
            chosen = rescoring.select(api, run_id, only.value, score)
            if not (chosen[0] or chosen[1]):
                typer.echo(f"nothing to rescore: no item of run {run_id} matches --only "
                           f"{only.value}" + (f" --score {score}" if score else ""), err=True)
                return
        accepted = rescoring.request(ingest, run_id, specs, chosen)
        typer.echo(f"request {accepted['request_id']}: {accepted['requested']:,} case(s) of run "
                   f"{run_id} with {', '.join(s['type'] for s in accepted['evaluators'])}",
                   err=True)
        if wait:
            with tqdm(total=accepted["requested"], unit="case", desc="rescoring",
                      mininterval=0.1 if sys.stderr.isatty() else 30) as bar:
                def moved(progress: dict) -> None:
                    bar.update(progress["completed"] - bar.n)

                done = rescoring.wait(api, accepted["request_id"], within=wait,
                                      on_progress=moved)
            typer.echo(f"done: {done['scored']:,} scored, {done['failed']:,} with an evaluator "
                       f"failure, {done['unscored']:,} with nothing to score"
                       + (f", {done['withdrawn']:,} withdrawn (run deleted)"
                          if done["withdrawn"] else ""), err=True)
    typer.echo(accepted["request_id"])


@app.command(rich_help_panel="Evaluate")
def show(
    run_id: str = typer.Argument(..., metavar="RUN", help="The run to show."),
    items: int = typer.Option(10, min=0, help="Items to list of each kind."),
    by: str | None = typer.Option(
        None, help="A metadata key, `item.<key>` or `trace.<key>` (e.g. item.category): the pass "
                   "rates per value of it too."),
    query_url: QueryUrl = None,
    api_key: ClientKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print it as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Print it as GitHub Markdown."),
) -> None:
    """A run's summary — items, pass rate, each score's pass rate and average, cost, tokens,
    latency —, with --by the pass rates per value of a metadata key, and the items to look at:
    those a score failed on (with their output and expected output) and those whose trace
    failed (with the error)."""
    import json

    from services.projections.breakdown import parse_group_by
    from services.projections.views import InvalidQuery
    from services.reports import fetch_run, markdown_run, render_run

    try:
        by = str(parse_group_by(by)) if by is not None else None
    except InvalidQuery as e:
        raise typer.BadParameter(e.message, param_hint="--by") from None
    with _query_api(query_url, api_key, "show") as api:
        shown = fetch_run(api, run_id, items, by)
    typer.echo(json.dumps(shown) if as_json else markdown_run(shown) if markdown
               else render_run(shown))


@app.command("datasets", rich_help_panel="Evaluate")
def datasets_command(
    limit: int = typer.Option(50, min=1, max=1000, help="Most datasets to list."),
    query_url: QueryUrl = None,
    api_key: ClientKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print them as JSON."),
) -> None:
    """The datasets, newest first: id, name, items, runs, baseline run, last run."""
    from services.reports import datasets, render_datasets

    _listing(lambda api: datasets(api, limit), render_datasets, query_url, api_key, as_json)


@app.command("runs", rich_help_panel="Evaluate")
def runs_command(
    dataset: str = typer.Argument(..., metavar="DATASET", help="The dataset (id or name) whose "
                                                              "runs to list."),
    limit: int = typer.Option(20, min=1, max=1000, help="Most runs to list."),
    where: list[str] = typer.Option(
        [], help="KEY=VALUE the runs' metadata must have (repeatable; dots go into nested "
                 "objects), e.g. --where branch=main."),
    query_url: QueryUrl = None,
    api_key: ClientKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print them as JSON."),
) -> None:
    """A dataset's runs, newest first: id, name, items traced, failed, overall pass rate and
    each score's pass rate."""
    from services.reports import render_runs, runs

    _check_metadata_matches(where, "--where")
    _listing(lambda api: runs(api, dataset, limit, where), render_runs, query_url, api_key,
             as_json)


class MonitorInterval(StrEnum):
    minute = "minute"
    hour = "hour"
    day = "day"


@app.command(rich_help_panel="Monitor")
def monitor(
    since: str = typer.Option("24h", help="Start of the window: an ISO 8601 time (UTC without a "
                                          "zone) or a duration before --until (90s, 30m, 24h, "
                                          "7d, 2w)."),
    until: str | None = typer.Option(None, help="End of the window: an ISO 8601 time or a "
                                                "duration ago (default: now)."),
    interval: MonitorInterval = typer.Option(MonitorInterval.hour, help="Bucket size (at most "
                                                                        "1,000 buckets)."),
    score: str | None = typer.Option(None, help="Count only the scores (and evaluator failures) "
                                                "of this name."),
    by: str | None = typer.Option(None, help="With --group: only the traces of one value of a "
                                             "trace metadata key, trace.<key> (e.g. "
                                             "trace.model)."),
    group: str | None = typer.Option(None, help="With --by: the value, as text."),
    query_url: QueryUrl = None,
    api_key: ClientKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print it as JSON."),
    markdown: bool = typer.Option(False, "--markdown", help="Print it as GitHub Markdown."),
) -> None:
    """The traces posted outside any run (production traffic) over time: per minute, hour or
    day, the traces, failed ones, scored ones, evaluator failures, the pass rate and each
    score's pass rate (or average, or labels), then the totals of the window."""
    import json
    from datetime import UTC, datetime

    from services.projections.breakdown import parse_group_by
    from services.projections.views import InvalidQuery
    from services.reports import (
        fetch_monitoring,
        markdown_monitoring,
        parse_time,
        render_monitoring,
    )

    now = datetime.now(UTC)
    try:
        end = parse_time(until, now) if until is not None else now
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--until") from None
    try:
        start = parse_time(since, end)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--since") from None
    if (by is None) != (group is None):
        raise typer.BadParameter("give both --by (trace.<key>) and --group (its value)",
                                 param_hint="--by" if by is None else "--group")
    if by is not None:
        try:
            key = parse_group_by(by)
        except InvalidQuery as e:
            raise typer.BadParameter(e.message, param_hint="--by") from None
        if key.source != "trace":
            raise typer.BadParameter("traces outside runs have no dataset item: give "
                                     "trace.<key>", param_hint="--by")
    with _query_api(query_url, api_key, "monitor") as api:
        shown = fetch_monitoring(api, start, end, interval.value, score, by, group)
    typer.echo(json.dumps(shown) if as_json else markdown_monitoring(shown) if markdown
               else render_monitoring(shown))


@app.command(rich_help_panel="Monitor")
def trace(
    trace_id: str = typer.Argument(..., metavar="TRACE_ID", help="The trace to show."),
    query_url: QueryUrl = None,
    api_key: ClientKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print it as JSON."),
) -> None:
    """One trace, in a run or outside any: its run (if any), status, latency, tokens, cost,
    metadata, input, output and expected output, its scores — value or label, passed or
    failed, threshold, comment — and the evaluators that failed on it."""
    import json
    from urllib.parse import quote

    from services.reports import render_trace

    with _query_api(query_url, api_key, "trace") as api:
        shown = api.get(f"/v1/traces/{quote(trace_id, safe='')}")
    typer.echo(json.dumps(shown) if as_json else render_trace(shown))


evaluators_app = typer.Typer(help="The evaluator types specs can name, and trying specs on "
                                   "outputs.", no_args_is_help=False,
                             rich_markup_mode=HELP_MARKUP)
app.add_typer(evaluators_app, name="evaluators", rich_help_panel="Evaluate")


@evaluators_app.callback(invoke_without_command=True)
def evaluators_command(
    ctx: typer.Context,
    ingest_url: IngestUrl = None,
    api_key: ClientKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print them as JSON."),
) -> None:
    """The evaluator types specs can name — built in, and your own from the plugins the ingest
    API loaded (EVALSTREAM_EVALUATOR_PLUGINS) —, with their versions and options; `evalstream
    evaluators try` scores outputs with specs."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from services.reports import render_evaluators

    with _query_api(ingest_url, api_key, "evalstream", ingest=True) as api:
        rows = api.get("/v1/evaluators")["evaluators"]
    typer.echo(json.dumps(rows) if as_json else render_evaluators(rows))


@evaluators_app.command("try")
def try_evaluators(
    specs: list[str] = typer.Argument(
        None, metavar="[SPEC]...", help='Evaluator specs as JSON, e.g. \'{"type": "regex", '
                                        '"pattern": "^[0-9]+$"}\'.'),
    specs_file: Path | None = typer.Option(
        None, "--specs", exists=True, dir_okay=False,
        help="JSON or YAML file of specs (a list, or {evaluators: [...]}), besides those given."),
    output: str | None = typer.Option(None, help="An output to score, as text."),
    expected: str | None = typer.Option(None, help="Its expected output, as text."),
    input_: str | None = typer.Option(None, "--input", help="Its input, as text."),
    cases_file: Path | None = typer.Option(
        None, "--cases", exists=True, dir_okay=False,
        help="Cases to score: JSON Lines, or a JSON/YAML list, of {input, output, "
             "expected_output, metadata} (any JSON values; at most 100)."),
    local: bool = typer.Option(
        False, "--local", help="Score in this process, with the plugins of "
                               "EVALSTREAM_EVALUATOR_PLUGINS and --plugin: no server needed, "
                               "and a plugin just edited is the one used."),
    plugin: list[str] = typer.Option(
        [], "--plugin", help="With --local: a plugin (module or .py file) to load besides "
                             "EVALSTREAM_EVALUATOR_PLUGINS (repeatable)."),
    ingest_url: IngestUrl = None,
    api_key: ClientKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Score outputs with evaluator specs as the evaluator would — built-in types, your plugins,
    the LLM judge if ingest has one — and print each score, whether it passes, and each
    evaluator failure. Nothing is stored: for writing a spec against examples."""
    import json

    from services.reports import render_trial

    given = []
    for n, text in enumerate(specs or []):
        try:
            given.append(json.loads(text))
        except ValueError as e:
            raise typer.BadParameter(f"spec {n + 1} is not JSON: {e}", param_hint="SPEC") \
                from None
    if specs_file is not None:
        given += _spec_file(specs_file, "--specs")
    if not given:
        raise typer.BadParameter("give a spec, as JSON or in a --specs file", param_hint="SPEC")
    cases: list = []
    if output is not None:
        cases.append({"input": input_, "output": output, "expected_output": expected})
    if cases_file is not None:
        cases += _cases(cases_file)
    if not cases:
        raise typer.BadParameter("give --output (with --expected, --input) or a --cases file",
                                 param_hint="--output")
    if plugin and not local:
        raise typer.BadParameter("only with --local (the server loads its own plugins)",
                                 param_hint="--plugin")
    if local:
        results = _try_locally(given, cases, plugin)
    else:
        with _query_api(ingest_url, api_key, "evalstream", ingest=True) as api:
            results = api.post("/v1/evaluators/try", {"evaluators": given,
                                                       "cases": cases})["results"]
    typer.echo(json.dumps(results) if as_json else render_trial(cases, results))


def _try_locally(specs: list, cases: list, plugins_given: list[str]) -> list[dict]:
    """`evaluators try --local`: the specs and cases checked as ingest checks them, then scored
    in this process (services/evaluator/trial.py)."""
    from pydantic import ValidationError

    from services.evaluator import plugins, trial
    from services.ingest.commands import TryEvaluators

    settings = Settings()
    plugins.load([*settings.evaluator_plugins, *plugins_given])
    try:
        command = TryEvaluators.model_validate({"evaluators": specs, "cases": cases})
    except ValidationError as e:
        error = e.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise typer.BadParameter(f"{where}: {error['msg']}", param_hint="SPEC / --cases") \
            from None
    return asyncio.run(trial.try_specs(command.evaluators,
                                       [c.model_dump() for c in command.cases], settings))


def _cases(path: Path) -> list:
    """The cases of a JSON Lines file, or of a JSON or YAML list."""
    import json

    import yaml

    try:
        text = path.read_text()
        data = ([json.loads(line) for line in text.splitlines() if line.strip()]
                if path.suffix == ".jsonl" else yaml.safe_load(text))
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise typer.BadParameter(f"{path}: {e}", param_hint="--cases") from None
    if not isinstance(data, list) or not all(isinstance(c, dict) for c in data):
        raise typer.BadParameter(f"{path}: expected a list of objects with an `output`",
                                 param_hint="--cases")
    return data


rules_app = typer.Typer(help="Scoring rules: which production traces (posted outside runs) "
                             "are scored, and by what.", no_args_is_help=False,
                        rich_markup_mode=HELP_MARKUP)
app.add_typer(rules_app, name="rules", rich_help_panel="Monitor")


@rules_app.callback(invoke_without_command=True)
def rules_command(
    ctx: typer.Context,
    ingest_url: IngestUrl = None,
    api_key: ClientKey = None,
    as_json: bool = typer.Option(False, "--json", help="Print them as JSON."),
) -> None:
    """The scoring rules: name, enabled, sample rate, the metadata they select and the scores
    they give. Traces posted outside runs and datasets are scored by the rules that select
    them (`evalstream rules set`)."""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from services.reports import render_rules

    with _query_api(ingest_url, api_key, "evalstream rules", ingest=True) as api:
        rows = api.get("/v1/scoring-rules")["rules"]
    typer.echo(json.dumps(rows, default=str) if as_json else render_rules(rows))


def _where(pairs: list[str]) -> dict:
    """--where KEY=VALUE pairs as a rule's `where`: a value is JSON when it parses as a number,
    true, false or null, else text; a key given again adds a value any of which matches."""
    import json

    where: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--where")
        try:
            value = json.loads(text)
            if isinstance(value, (dict, list, str)):
                value = text
        except ValueError:
            value = text
        if key in where:
            where[key] = [*(where[key] if isinstance(where[key], list) else [where[key]]), value]
        else:
            where[key] = value
    return where


@rules_app.command("set")
def set_rule(
    name: str = typer.Argument(..., metavar="NAME", help="The rule's name (created, or "
                                                        "replaced)."),
    specs_file: Path = typer.Option(
        ..., "--evaluators", exists=True, dir_okay=False,
        help="JSON or YAML file of the evaluator specs (a list, or {evaluators: [...]})."),
    sample_rate: float = typer.Option(
        1.0, help="Share of the selected traces to score (chosen by trace id), e.g. 0.1."),
    where: list[str] = typer.Option(
        [], "--where", help="KEY=VALUE the trace's metadata must hold (repeatable; a key given "
                            "twice: either value; dots go into nested objects), e.g. --where "
                            "env=production."),
    disabled: bool = typer.Option(False, "--disabled", help="Keep the rule but select nothing."),
    ingest_url: IngestUrl = None,
    api_key: ClientKey = None,
) -> None:
    """Create or replace a scoring rule: traces posted from now on outside runs and datasets
    whose metadata holds every --where are scored by the file's evaluators, a --sample-rate share
    of them. Ingest checks the specs (a plugin's types included)."""
    from urllib.parse import quote

    from services.reports import render_rules

    body = {"evaluators": _spec_file(specs_file, "--evaluators"), "sample_rate": sample_rate,
            "where": _where(where), "enabled": not disabled}
    with _query_api(ingest_url, api_key, "evalstream rules set", ingest=True) as api:
        rule = api.send("PUT", f"/v1/scoring-rules/{quote(name, safe='')}", body)
    typer.echo(render_rules([rule]))


@rules_app.command("delete")
def delete_rule(
    name: str = typer.Argument(..., metavar="NAME", help="The rule to delete."),
    ingest_url: IngestUrl = None,
    api_key: ClientKey = None,
) -> None:
    """Delete a scoring rule: traces posted from now on are not scored by it (the scores it gave
    stay). `evalstream rules set NAME ... --disabled` keeps it for later instead."""
    from urllib.parse import quote

    with _query_api(ingest_url, api_key, "evalstream rules delete", ingest=True) as api:
        api.send("DELETE", f"/v1/scoring-rules/{quote(name, safe='')}", expect=202)
    typer.echo(f"deleted scoring rule {name}")


def _listing(fetch, render, query_url: str | None, api_key: str | None, as_json: bool) -> None:
    import json

    with _query_api(query_url, api_key, "evalstream") as api:
        rows, total = fetch(api)
    typer.echo(json.dumps({"total": total, "items": rows}) if as_json else render(rows, total))


class ReviewWhich(StrEnum):
    awaiting = "awaiting"
    failed = "failed"
    passed = "passed"
    all = "all"


@app.command(rich_help_panel="Evaluate")
def review(
    run_id: str | None = typer.Argument(None, metavar="[RUN]", help="The run whose items to "
                                                                   "review."),
    outside_runs: bool = typer.Option(
        False, "--outside-runs", help="Instead of a run's items, the traces posted outside any "
                                      "run (production traffic), newest first."),
    since: str | None = typer.Option(
        None, help="With --outside-runs: those completed since this ISO 8601 time or this long "
                   "ago (24h, 7d); default 24h."),
    name: str = typer.Option("manual", help="The verdict's score name."),
    which: ReviewWhich = typer.Option(
        ReviewWhich.awaiting, "--items",
        help="awaiting: succeeded items with no verdict of --name yet; failed / passed: by "
             "their scores; all: every item (a verdict given again corrects the earlier one)."),
    limit: int = typer.Option(100, min=1, help="Most items to offer."),
    reviewer: str | None = typer.Option(None, "--by", help="Who gives the verdicts "
                                                           "(created_by)."),
    labels: str | None = typer.Option(
        None, help="A rubric instead of correct/incorrect, e.g. correct,partial,wrong: each "
                   "verdict is one of these labels (a categorical score), answered by its "
                   "number or name."),
    ingest_url: IngestUrl = None,
    query_url: QueryUrl = None,
    api_key: ClientKey = None,
) -> None:
    """Review a run's items (or, --outside-runs, production traces) in the terminal: each one's
    input, expected output, output and scores, and your verdict — y correct, n incorrect (with a
    comment), s skip, b back, q quit. Each verdict is posted at once (a person's score, name
    `manual` by default)."""
    import httpx

    from services.review import ReviewError
    from services.review import review as go

    rubric = tuple(label.strip() for label in (labels or "").split(",") if label.strip())
    if labels is not None and (len(rubric) < 2 or len({r.lower() for r in rubric}) < len(rubric)
                               or {r.lower() for r in rubric} & {"s", "b", "q"}):
        raise typer.BadParameter("give two or more distinct labels, comma-separated (not s, b "
                                 "or q, which skip, go back and quit)", param_hint="--labels")
    if (run_id is None) == (not outside_runs):
        raise typer.BadParameter("give a RUN, or --outside-runs (not both)", param_hint="RUN")
    if since is not None and not outside_runs:
        raise typer.BadParameter("only with --outside-runs", param_hint="--since")
    when = None
    if outside_runs:
        from datetime import UTC, datetime

        from services.reports import parse_time

        try:
            when = parse_time(since or "24h", datetime.now(UTC)).isoformat()
        except ValueError as e:
            raise typer.BadParameter(str(e), param_hint="--since") from None
    settings = Settings()
    headers = client.auth(client.client_key(settings, api_key))

    def ask(prompt: str) -> str:
        try:
            return input(prompt)
        except EOFError:  # the input ended: as if the reviewer quit
            return "q"

    with httpx.Client(base_url=client.query_url(settings, query_url),
                      headers=headers, timeout=30) as query, httpx.Client(
            base_url=client.ingest_url(settings, ingest_url),
            headers=headers, timeout=30) as ingest:
        try:
            report = go(query, ingest, run_id, ask=ask, show=typer.echo, name=name,
                        which=which.value, limit=limit, reviewer=reviewer, labels=rubric,
                        since=when)
        except ReviewError as e:
            typer.echo(f"review stopped: {e}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"{len(report.verdicts)} verdict(s) posted: {report.counts()}; "
               f"{report.skipped} skipped" + (" (quit)" if report.quit else ""))


def _api_key(data_dir: Path) -> str:
    key_file = data_dir / "api-key"
    if not key_file.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(f"es_{secrets.token_urlsafe(24)}\n")
    return key_file.read_text().strip()


@app.command(rich_help_panel="Run the system")
def up(broker_port: int = typer.Option(19092, help="Port of the local broker, when started.")) \
        -> None:
    """Start everything in the foreground: broker and Postgres unless their URLs are given, the
    three services, and print where they listen. Ctrl-C stops all of it."""
    from services.devstack import ServiceProcesses, embedded_postgres, tansu_broker
    from services.evaluator import plugins

    settings = Settings()
    _logging(settings)
    plugins.load(settings.evaluator_plugins)  # a plugin that does not load stops us here, once
    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    procs = ServiceProcesses(env, ports={"ingest": settings.ingest_port,
                                         "projections": settings.query_port})
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C
    with contextlib.ExitStack() as stack:
        try:
            if not settings.kafka_bootstrap_servers:
                env["KAFKA_BOOTSTRAP_SERVERS"] = stack.enter_context(
                    tansu_broker(broker_port, log_file=data_dir / "tansu.log"))
            if not settings.database_url:
                env["DATABASE_URL"] = stack.enter_context(
                    embedded_postgres(data_dir / "postgres"))
            if not settings.api_keys:
                env["EVALSTREAM_API_KEYS"] = _api_key(data_dir)
            subprocess.run([sys.executable, "-m", "services.cli", "migrate"], env=env,
                           check=True)
            procs.start_all()
            ingest = f"http://{settings.host}:{settings.ingest_port}"
            query = f"http://{settings.host}:{settings.query_port}"
            key = env["EVALSTREAM_API_KEYS"].split(",")[0]
            typer.echo(f"""
evalstream is up.
  ingest API   {ingest}   (docs: {ingest}/docs, metrics: {ingest}/metrics)
  query API    {query}   (docs: {query}/docs, metrics: {query}/metrics)
  broker       {env['KAFKA_BOOTSTRAP_SERVERS']}
  database     {env['DATABASE_URL']}
  API key      {key}
From another shell here: .venv/bin/evalstream upload | run | check | show | compare | rescore |
evaluators (README: "Try it"). Ctrl-C stops everything.
""")
            while not procs.exited():
                time.sleep(0.5)
            typer.echo(f"service(s) exited: {', '.join(procs.exited())}", err=True)
            raise typer.Exit(1)
        except KeyboardInterrupt:
            typer.echo("stopping…")
        finally:
            procs.stop_all()


def main() -> None:
    """The `evalstream` command: a missing URL, or a broker or database that does not answer, is
    a one-line error, not a traceback."""
    from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

    try:
        app()
    except ConfigurationError as e:
        typer.echo(f"evalstream: {e}", err=True)
        raise SystemExit(2) from None
    except NotConfigured as e:
        typer.echo(f"evalstream: {e}; `make up` prints the URLs of the broker and database it "
                   "started (export KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL)", err=True)
        raise SystemExit(2) from None
    except (OSError, KafkaConnectionError, KafkaTimeoutError) as e:
        from services.http import dependency_of

        typer.echo(f"evalstream: {dependency_of(e)} is unreachable ({type(e).__name__}: {e}); "
                   "is it running, and are KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL right?",
                   err=True)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
