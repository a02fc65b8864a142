"""Replay-rescore and rebuild rates on the log the benchmark has just written, timed by running
`evalstream replay` and `evalstream projections rebuild` as an operator would (the commands
themselves belong to the rescoring and rebuild work)."""

from __future__ import annotations

import asyncio
import json
import sys

import httpx


async def _command(env: dict[str, str], *args: str) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", *args, "--json", "--no-progress", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"`evalstream {' '.join(args)}` exited {proc.returncode}: "
                           f"{err.decode(errors='replace')[-400:]}")
    return json.loads(out.decode().strip().splitlines()[-1])


async def replay_rescore(env: dict[str, str], query: httpx.AsyncClient, run_id: str,
                         stall_seconds: float = 60.0) -> dict:
    """From starting `evalstream replay --run RUN` to every rescored case of it being visible
    (the query API's progress says done). Events = score requests replayed."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await _command(env, "replay", "--run", run_id)
    command_seconds = loop.time() - started
    request_id, requested = report["request_id"], report["requested"]
    last, last_change, progress = -1, loop.time(), {}
    while True:
        r = await query.get(f"/v1/score-requests/{request_id}")
        if r.status_code == 200:
            progress = r.json()
            if progress.get("done"):
                break
            if progress.get("completed", 0) != last:
                last, last_change = progress.get("completed", 0), loop.time()
        if loop.time() - last_change > stall_seconds:
            raise RuntimeError(f"replay {request_id}: no progress for {stall_seconds:.0f}s "
                               f"({progress})")
        await asyncio.sleep(0.1)
    seconds = loop.time() - started
    scan = report.get("scan_seconds") or 0
    return {"events": requested, "seconds": round(seconds, 3),
            "events_per_s": round(requested / seconds, 1),
            "scores_per_s": round(progress.get("scores_recorded", 0) / seconds, 1),
            "command_seconds": round(command_seconds, 3),
            "log_records_scanned": report.get("log_records"),
            "scan_records_per_s": round(report["log_records"] / scan, 1) if scan else None,
            "request_id": request_id}


async def rebuild(env: dict[str, str]) -> dict:
    """`evalstream projections rebuild`: its own count of events applied and seconds taken."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await _command(env, "projections", "rebuild")
    return {"events": report["events"], "seconds": report["seconds"],
            "events_per_s": report["events_per_second"],
            "wall_seconds": round(loop.time() - started, 3), "schema": report.get("schema")}
