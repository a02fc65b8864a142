"""Where a service spends its time during a benchmark phase: py-spy samples the running process
(non-blocking, 100 Hz) and the collapsed stacks are summed per function, self and inclusive."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    return shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")


class Profiles:
    """py-spy recorders attached to running services; `stop()` writes their collapsed stacks."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.running: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(self, label: str, pid: int, stamp: str) -> None:
        binary = py_spy()
        if binary is None:
            raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
        path = self.out_dir / f"profile-{label}-{stamp}.txt"
        proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", "100", "--format", "raw",
             "--function", "--nonblocking", "-o", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.running[label] = (proc, path)

    def stop(self) -> dict[str, dict]:
        out = {}
        for label, (proc, path) in self.running.items():
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if path.exists():
                out[label] = {"file": str(path), **top_functions(path)}
        self.running.clear()
        return out


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3."):
        if marker in file:
            file = file.split(marker, 1)[1]
            if marker == "lib/python3.":
                file = "stdlib/" + file.split("/", 1)[-1]
            break
    return f"{m['func']} ({file})"


def top_functions(path: Path, limit: int = 15) -> dict:
    """Share of the active samples per function: `self` where the sample landed, `inclusive`
    anywhere on the stack."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return {"samples": 0, "self": [], "inclusive": []}

    def share(counter: Counter[str]) -> list[list]:
        # Frames on (nearly) every stack are the process's entry chain (cli, uvicorn, the event
        # loop) and say nothing about where the time goes.
        ranked = [(frame, n) for frame, n in counter.most_common() if n < 0.9 * total]
        return [[frame, round(100 * n / total, 1)] for frame, n in ranked[:limit]]

    return {"samples": total, "self": share(own), "inclusive": share(inclusive)}
