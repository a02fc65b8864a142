"""What the client commands (`upload`, `download`, `run`, `check`, `show`, `compare`, `review`,
`rescore`, `evaluators`, `datasets`, `runs`) share: where the two APIs are, the key they send, how
an API's refusal reads, and the query API's client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx

from services.settings import Settings

KEY_HINT = ("give --api-key or set EVALSTREAM_API_KEY; `make up` writes its key to "
            ".evalstream/api-key in its own directory")


class ApiError(RuntimeError):
    """An API that did not answer as asked; the message says why. `kind`: "not_found" (no such
    thing, or not in the read model yet), "unavailable" (unreachable, or answering 502, 503 or
    504, which may pass) or "refused" (any other answer: a wrong key, an internal error)."""

    def __init__(self, message: str, kind: str = "refused"):
        super().__init__(message)
        self.kind = kind


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


class QueryApi:
    """The query API for the client commands: `get` any path (ApiError when it does not
    answer 200), and the calls `check` makes; with another `name` and URL, ingest's GET and
    POST endpoints that answer at once (`post`)."""

    def __init__(self, url: str, api_key: str | None, timeout: float = 30.0,
                 name: str = "query API"):
        self._client = httpx.Client(base_url=url, headers=auth(api_key), timeout=timeout)
        self._name = name

    def close(self) -> None:
        self._client.close()

    def get(self, path: str, **params: str) -> dict:
        try:
            response = self._client.get(path, params=params)
        except httpx.HTTPError as e:
            raise ApiError(f"{self._name} at {self._client.base_url} unreachable: {e}",
                             "unavailable") from None
        if response.status_code == 404:
            raise ApiError(f"{path}: {first_error(response)[1]}", "not_found")
        if response.status_code != 200:
            # 502/503/504: a gateway, or the API without its database for a moment (a 503, see
            # README, HTTP API); any other answer will not change by asking again.
            raise ApiError(f"{path}: {refusal(response)}",
                             "unavailable" if response.status_code in (502, 503, 504)
                             else "refused")
        return response.json()

    def post(self, path: str, body: object, expect: int = 200) -> dict:
        """POST `body` as JSON; ApiError unless the answer is `expect` (a 422 names the field)."""
        return self.send("POST", path, body, expect)

    def send(self, method: str, path: str, body: object = None, expect: int = 200) -> dict:
        """`method` with `body` as JSON (if any); ApiError unless the answer is `expect`."""
        try:
            response = self._client.request(method, path, json=body)
        except httpx.HTTPError as e:
            raise ApiError(f"{self._name} at {self._client.base_url} unreachable: {e}",
                             "unavailable") from None
        if response.status_code != expect:
            raise ApiError(f"{method} {path}: {refusal(response)}",
                             "unavailable" if response.status_code in (502, 503, 504)
                             else "not_found" if response.status_code == 404 else "refused")
        return response.json()

    def scoring(self, run_id: str) -> dict:
        return self.get(f"/v1/runs/{run_id}/scoring")

    def summary(self, run_id: str) -> dict:
        return self.get(f"/v1/runs/{run_id}")

    def pages(self, path: str, **params: str) -> Iterator[dict]:
        """Every page of a paged answer, 1,000 rows a page, following its `next_offset`."""
        offset: int | None = 0
        while offset is not None:
            page = self.get(path, **params, limit="1000", offset=str(offset))
            yield page
            offset = page["next_offset"]

    def breakdown(self, run_id: str, by: str) -> list[dict]:
        """Every group of the run's breakdown, page after page."""
        return [group for page in self.pages(f"/v1/runs/{run_id}/breakdown", by=by)
                for group in page["groups"]]

    def comparison(self, baseline: str | None, run_id: str) -> dict:
        """The run against `baseline`, or (None) against its dataset's baseline run."""
        if baseline is None:
            return self.get("/v1/compare", runs=run_id, include="scores")
        return self.get("/v1/compare", runs=f"{baseline},{run_id}", baseline=baseline,
                        include="scores")
