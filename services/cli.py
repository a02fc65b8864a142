"""The `evalstream` command: start the whole system for development, or one service, or migrate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from enum import StrEnum
from pathlib import Path

import typer

from services.settings import Settings

app = typer.Typer(help="evalstream: event-sourced scoring of LLM application outputs.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


class Service(StrEnum):
    ingest = "ingest"
    evaluator = "evaluator"
    projections = "projections"


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
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


@app.command()
def serve(service: Service) -> None:
    """Run one service in the foreground (what each container of docker-compose.yml runs)."""
    import uvicorn

    settings = Settings()
    _logging(settings)
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


def _api_key(data_dir: Path) -> str:
    key_file = data_dir / "api-key"
    if not key_file.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        key_file.write_text(f"es_{secrets.token_urlsafe(24)}\n")
    return key_file.read_text().strip()


@app.command()
def up(broker_port: int = typer.Option(19092, help="Port of the local broker, when started.")) \
        -> None:
    """Start everything in the foreground: broker and Postgres unless their URLs are given, the
    three services, and print where they listen. Ctrl-C stops all of it."""
    from services.devstack import ServiceProcesses, embedded_postgres, tansu_broker

    settings = Settings()
    _logging(settings)
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
  ingest API   {ingest}   (docs: {ingest}/docs)
  query API    {query}   (docs: {query}/docs)
  broker       {env['KAFKA_BOOTSTRAP_SERVERS']}
  database     {env['DATABASE_URL']}
  API key      {key}
Ctrl-C stops everything.
""")
            while not procs.exited():
                time.sleep(0.5)
            typer.echo(f"service(s) exited: {', '.join(procs.exited())}", err=True)
            raise typer.Exit(1)
        except KeyboardInterrupt:
            typer.echo("stopping…")
        finally:
            procs.stop_all()


if __name__ == "__main__":
    app()
