"""The benchmark's output: one table on the terminal (rich), the same figures as JSON under
bench/results/ (timestamped and latest.json), and a chart of throughput over time, CPU per
process and the latency distribution (matplotlib, PNG)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

TARGETS = {
    "traces_per_s": 10_000,
    "scores_per_s": 30_000,
    "p99_ms": 500,
    "service_mb": 300,
    "baseline_ratio": 50,
    "replay_events_per_s": 50_000,
    "rebuild_1m_seconds": 60,
}
SERVICES = ("ingest", "evaluator", "projections")


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return {True: "[green]met[/]", False: "[red]not met[/]", None: ""}[ok]


def rows(results: dict) -> list[tuple[str, str, str, str, str]]:
    """(section, figure, value, target, verdict) for every figure of a bench run."""
    out: list[tuple[str, str, str, str, str]] = []
    tp = results["throughput"]
    section = f"end to end, {tp['traces']:,} traces, {tp['runs']} run(s)"
    out += [
        (section, "throughput, first POST → last score visible",
         f"{_num(tp['traces_per_s'])} traces/s", f"≥ {TARGETS['traces_per_s']:,}",
         _verdict(tp["traces_per_s"] >= TARGETS["traces_per_s"])),
        (section, "scores written", f"{_num(tp['scores_per_s'])} scores/s",
         f"≥ {TARGETS['scores_per_s']:,}", _verdict(tp["scores_per_s"] >= TARGETS["scores_per_s"])),
        (section, "ingest accepted (202), first → last POST",
         f"{_num(tp['ingest_accept_traces_per_s'])} traces/s", "", ""),
        (section, "wall time", f"{tp['seconds']:.1f} s (POSTs done at {tp['post_seconds']:.1f} s)",
         "", ""),
    ]
    if tp.get("wal_bytes_per_trace"):
        out.append((section, "Postgres WAL written", f"{tp['wal_bytes_per_trace']:,} bytes/trace",
                    "", ""))
    if bg := tp.get("postgres_background"):
        out.append((section, "Postgres checkpoints / autovacuums / autoanalyzes meanwhile",
                    " / ".join(str(bg.get(k, "—")) for k in ("checkpoints", "autovacuum",
                                                              "autoanalyze")), "", ""))
    for label, r in results["resources"].items():
        target, verdict = "", ""
        if label.split("-")[0] in SERVICES:
            target = f"< {TARGETS['service_mb']} MB"
            verdict = _verdict(r["peak_mb"] < TARGETS["service_mb"])
        memory = "" if not r["peak_mb"] else f", peak {r['peak_mb']:.0f} MB"
        if label.startswith("system"):
            target = f"≤ {2e6 / TARGETS['traces_per_s']:.0f} µs/trace on 2 cores"
            verdict = _verdict(r["cpu_us_per_trace"] <= 2e6 / TARGETS["traces_per_s"])
        per = (f" = {r['cpu_us_per_trace']:,.0f} µs/trace" if r.get("cpu_us_per_trace")
               else "")
        out.append((section, f"  {label}", f"{r['cpu_seconds']:.1f} CPU s{per} "
                    f"({r['cpu_cores']:.2f} cores){memory}", target, verdict))
    if check := results.get("correctness"):
        out.append((section, "scores as the evaluator functions compute them",
                    "yes" if check["ok"] else f"NO: {check['detail']}", "", ""))

    if lat := results.get("latency"):
        section = "latency, POST → all scores visible"
        out += [
            (section, "offered / achieved load",
             f"{_num(lat['offered_traces_per_s'])} / {_num(lat['achieved_traces_per_s'])} "
             f"traces/s", "½ of throughput", ""),
            (section, "p50 / p95 / p99",
             f"{_num(lat.get('p50_ms'))} / {_num(lat.get('p95_ms'))} / "
             f"{_num(lat.get('p99_ms'))} ms", f"p99 ≤ {TARGETS['p99_ms']} ms",
             _verdict(lat.get("p99_ms", 1e9) <= TARGETS["p99_ms"])),
            (section, "POST → 202, p50 / p99",
             f"{_num(lat.get('post_p50_ms'))} / {_num(lat.get('post_p99_ms'))} ms", "", ""),
        ]
        if bg := lat.get("postgres_background"):
            out.append((section, "Postgres checkpoints / autovacuums / autoanalyzes meanwhile",
                        " / ".join(str(bg.get(k, "—")) for k in ("checkpoints", "autovacuum",
                                                                  "autoanalyze")), "", ""))

    section = "replay and rebuild"
    for key, title in (("replay", "replay-rescore: command start → every case rescored and "
                                  "visible"), ("rebuild", "projections rebuild")):
        r = results.get(key) or {}
        if r.get("events_per_s"):
            target = (f"≥ {TARGETS['replay_events_per_s']:,}/s" if key == "replay"
                      else f"1M events ≤ {TARGETS['rebuild_1m_seconds']} s")
            ok = (r["events_per_s"] >= TARGETS["replay_events_per_s"] if key == "replay"
                  else 1_000_000 / r["events_per_s"] <= TARGETS["rebuild_1m_seconds"])
            detail = ""
            if r.get("scan_records_per_s"):
                detail = (f"; the command itself {r['command_seconds']:.1f} s, reading the log "
                          f"at {_num(r['scan_records_per_s'])} records/s")
            noun = "cases" if key == "replay" else "events"
            out.append((section, title, f"{_num(r['events_per_s'])} {noun}/s "
                        f"({r['events']:,} in {r['seconds']:.1f} s{detail})", target,
                        _verdict(ok)))
        else:
            out.append((section, title, r.get("note", "not available"), "", ""))

    if base := results.get("baseline"):
        section = "yardsticks on the same Postgres"
        seed, copy = base.get("seed_loop"), base.get("copy")
        if seed:
            out.append((section, f"seed design (lookup + insert/update per row), "
                        f"{seed['rows']:,} scores", f"{_num(seed['rows_per_s'])} scores/s", "", ""))
        if copy:
            out.append((section, f"COPY into a copy of `scores`, {copy['rows']:,} rows",
                        f"{_num(copy['rows_per_s'])} rows/s", "", ""))
        if score := base.get("score_batch"):
            out.append((section, "evaluator stage alone: decode + score + encode, one core",
                        f"{_num(score['rows_per_s'])} traces/s", "", ""))
        if apply := base.get("apply_batch"):
            split = ""
            if "postgres_us_per_trace" in apply:
                split = (f" (Python {apply['python_us_per_trace']:.0f} + Postgres "
                         f"{apply['postgres_us_per_trace']:.0f} µs/trace)")
            out.append((section, "projections stage alone: apply_batch, no broker",
                        f"{_num(apply['rows_per_s'])} traces/s{split}", "", ""))
        if seed:
            ratio = tp["scores_per_s"] / seed["rows_per_s"]
            out.append((section, "evalstream / seed design", f"{ratio:.1f}×",
                        f"≥ {TARGETS['baseline_ratio']}×",
                        _verdict(ratio >= TARGETS["baseline_ratio"])))
        if copy:
            ratio = tp["scores_per_s"] / copy["rows_per_s"]
            out.append((section, "evalstream / COPY", f"{ratio:.2f}×", "", ""))

    for scale in results.get("scale", []):
        section = (f"scale-out, {scale['traces']:,} traces over {scale['runs']} run(s) "
                   f"({scale['partitions']} partitions)")
        load = ""
        if scale.get("system_cores") is not None:
            load = (f" (system {scale['system_cores']:.2f} cores, "
                    f"{scale['system_cpu_us_per_trace']:,.0f} µs/trace; others "
                    f"{scale.get('other_cores') or 0:.2f} cores)")
        out.append((section, f"{scale['evaluators']} evaluator(s), {scale['projections']} "
                    f"projection process(es)", f"{_num(scale['traces_per_s'])} traces/s{load}",
                    "", ""))
    return out


def print_table(results: dict, console: Console | None = None) -> None:
    console = console or Console()
    if not console.is_terminal:
        console.width = 120  # piped to a file or CI log: no terminal width to follow
    table = Table(title=f"evalstream benchmark — {results['started_at']}", show_lines=False)
    for name, justify in (("figure", "left"), ("value", "right"), ("target", "right"),
                          ("", "left")):
        table.add_column(name, justify=justify)
    current = None
    for section, figure, value, target, verdict in rows(results):
        if section != current:
            table.add_section()
            table.add_row(f"[bold]{section}[/]", "", "", "")
            current = section
        table.add_row(figure, value, target, verdict)
    console.print(table)
    for label, prof in results.get("profiles", {}).items():
        # Active samples are CPU time, so a share of them is a share of the CPU per trace.
        per_trace = results["resources"].get(label, {}).get("cpu_us_per_trace", 0)
        console.print(f"\n[bold]py-spy: {label}[/] ({prof['samples']} active samples, "
                      f"{per_trace:,.0f} CPU µs/trace; {prof['file']})")
        for title, key in (("self", "self"), ("inclusive", "inclusive")):
            console.print(f"  {title}:")
            for frame, share in prof[key][:15]:
                console.print(f"    {share:5.1f}% {share * per_trace / 100:6.0f} µs  {frame}")
    if activity := results.get("pg_activity"):
        console.print(f"\n[bold]Postgres activity[/] ({activity['samples']} samples of "
                      "pg_stat_activity; busy backends on average)")
        for a in activity["activities"]:
            console.print(f"  {a['backends']:6.3f}  {a['state']:<20} {a['waiting']:<22} "
                          f"{a['statement']}")


def write_json(results: dict, out_dir: Path, stamp: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, default=str) + "\n"
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(text)
    (out_dir / "latest.json").write_text(text)
    return path


def draw_png(results: dict, series: dict, out_dir: Path, stamp: str) -> Path:
    """Three panels: traces accepted and scores visible per second, CPU per process, latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3, ax4) = plt.subplots(4, 1, figsize=(10, 15))
    tp = results["throughput"]

    def rate(points: list[tuple[float, int]], per: float, step: float = 1.0) -> tuple[list, list]:
        """Per-second rate of a cumulative count, in fixed bins (step-interpolated)."""
        if not points:
            return [], []
        xs, ys, k, value, prev = [], [], 0, 0, 0
        edge = step
        end = points[-1][0] + step
        while edge <= end:
            while k < len(points) and points[k][0] <= edge:
                value = points[k][1]
                k += 1
            xs.append(edge)
            ys.append((value - prev) / step / per)
            prev, edge = value, edge + step
        return xs, ys

    ax1.plot(*rate(series["acks"], 1), label="traces accepted by ingest (202)/s")
    # Progress is seen a POST (1000 traces) at a time, so this rate is binned coarser.
    ax1.plot(*rate(series["visible"], 3, step=2.0),
             label="traces fully scored in the read model/s")
    ax1.axhline(tp["traces_per_s"], ls="--", c="grey",
                label=f"end-to-end average {tp['traces_per_s']:,.0f}/s")
    ax1.set(title=f"Throughput, {tp['traces']:,} traces", xlabel="s since first POST",
            ylabel="traces/s")
    ax1.legend(loc="upper right", fontsize=8)

    for label, points in series["cpu"].items():
        if points:
            ax2.plot([p[0] for p in points], [p[1] for p in points], label=label,
                     ls=":" if label.startswith("machine") else "-")
    ax2.set(title="CPU per process during the throughput run", xlabel="s since first POST",
            ylabel="cores")
    ax2.legend(loc="upper right", fontsize=8)

    latencies = series.get("latencies_ms") or []
    if latencies:
        lat = results["latency"]
        ax3.hist(latencies, bins=60, color="tab:blue", alpha=0.8)
        for key, color in (("p50_ms", "green"), ("p95_ms", "orange"), ("p99_ms", "red")):
            ax3.axvline(lat[key], c=color, ls="--", label=f"{key[:-3]} {lat[key]:.0f} ms")
        ax3.set(title=f"POST → scores visible at {lat['achieved_traces_per_s']:,.0f} traces/s "
                      f"({lat['traces']:,} traces)", xlabel="ms", ylabel="traces")
        ax3.legend(fontsize=8)
    if points := series.get("latency_points"):
        ax4.scatter([p[0] for p in points], [p[1] for p in points], s=2)
        ax4.set(title="Latency of each trace by the time it was posted", xlabel="s since start",
                ylabel="ms")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"bench-{stamp}.png"
    fig.savefig(path, dpi=100)
    fig.savefig(out_dir / "latest.png", dpi=100)
    plt.close(fig)
    return path
