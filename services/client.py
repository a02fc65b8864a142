"""What the client commands (`upload`, `run`, `review`, `check`) share: where the two APIs are,
the key they send, and how an API's refusal reads."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from services.settings import Settings

KEY_HINT = ("give --api-key or set EVALSTREAM_API_KEY; `make up` writes its key to "
            ".evalstream/api-key in its own directory")


def client_key(settings: Settings, given: str | None) -> str | None:
    """The key a client sends: the one given, else EVALSTREAM_API_KEY, else the first of
    EVALSTREAM_API_KEYS, else the one `make up` made (when run from its directory)."""
    key = given or os.environ.get("EVALSTREAM_API_KEY") or (
        settings.api_keys[0] if settings.api_keys else None)
    key_file = Path(settings.data_dir) / "api-key"
    if key is None and key_file.exists():
        key = key_file.read_text().strip()
    return key


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def ingest_url(settings: Settings, given: str | None) -> str:
    """The one given, else EVALSTREAM_INGEST_URL, else the local ingest port."""
    return given or os.environ.get("EVALSTREAM_INGEST_URL") or \
        f"http://{settings.host}:{settings.ingest_port}"


def query_url(settings: Settings, given: str | None) -> str:
    """The one given, else EVALSTREAM_QUERY_URL, else the local query port."""
    return given or os.environ.get("EVALSTREAM_QUERY_URL") or \
        f"http://{settings.host}:{settings.query_port}"


def first_error(r: httpx.Response) -> tuple[list[str], str]:
    """The API's first error as (loc, msg): FastAPI's `{"detail": [{"loc", "msg"}]}`, a plain
    `{"detail": "..."}`, or the start of a body that is neither."""
    try:
        detail = r.json()["detail"]
        first = detail[0] if isinstance(detail, list) else {"loc": [], "msg": str(detail)}
        return [str(p) for p in first.get("loc", [])], str(first.get("msg"))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return [], r.text[:300]


def refusal(r: httpx.Response) -> str:
    """`HTTP 422: body.traces.0.output: <why>` — what the API said, naming the field; a 401 says
    how to give the key."""
    loc, msg = first_error(r)
    said = f"HTTP {r.status_code}: {'.'.join(loc) + ': ' if loc else ''}{msg}"
    return f"{said} ({KEY_HINT})" if r.status_code == 401 else said
