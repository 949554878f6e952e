"""The report: one Markdown file with a table per scenario, the targets of issue #5 as
ratios from the same run with PASS/MISS, and a PNG chart of the main figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

ROW_ORDER = ("ceiling", "naive", "ours", "ours-uvicorn", "ours-granian", "ours-core")
LATENCY_LIMIT_MS = 100.0


def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or (isinstance(a, float) and math.isnan(a)):
        return None
    return a / b


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**PASS**" if ok else "**MISS**")


def _rows(table: dict[str, Any]) -> list[str]:
    return sorted(table, key=lambda name: ROW_ORDER.index(name) if name in ROW_ORDER else 99)


# ---------------------------------------------------------------------------
# S1


def s1_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Knee (highest target rate with p99 < 100 ms, no drops, drained), peak, probe, drops."""
    steps = result.get("steps") or []
    knee = None
    for step in steps:
        if step["p99_ms"] < LATENCY_LIMIT_MS and not step["drops"] and step["drained"]:
            knee = step["rate_target"]
    probe = result.get("probe") or {}
    busiest = max((step.get("client_busy", 0) for step in steps), default=0)
    return {
        "knee": knee,
        "peak": max((step["achieved_dps"] for step in steps), default=None),
        "probe_p50": probe.get("p50_ms"),
        "probe_p99": probe.get("p99_ms"),
        "probe_all_p99": probe.get("all_p99_ms"),
        "drops": sum(step["drops"] for step in steps) + probe.get("drops", 0),
        "cpu_per_delivery": min((s["server_cpu_per_delivery_us"] for s in steps if s["delivered"]), default=None),
        "client_busy": busiest,
        "last_rate": steps[-1]["rate_target"] if steps else None,
    }


def s1_section(s1: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = ["## S1 fan-out", ""]
    lines += [
        "One socket per room sends at a rising rate; every member (the sender too) receives every message. "
        "*Knee*: the highest offered rate at which p99 end-to-end latency stayed under 100 ms with nothing lost. "
        "*Peak*: the most deliveries/s achieved at any step. *One message*: one message at a time into the first "
        "room, latency of every delivery (p50/p99) and until the last member had it (all p99).",
        "",
    ]
    verdicts: list[dict[str, Any]] = []
    largest = max(s1, key=lambda c: int(c.split("x")[0])) if s1 else ""
    for config, table in s1.items():
        size, count = config.split("x")
        lines += [f"### {size} members x {count} room(s)", ""]
        lines += [
            "| row | knee dps (p99<100ms) | peak dps | one msg p50 / p99 ms | one msg to all p99 ms "
            "| drops | server µs CPU/delivery | client busy max | targets |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        summaries = {name: s1_summary(r) for name, r in table.items() if "error" not in r}
        ceiling = summaries.get("ceiling", {})
        naive = summaries.get("naive", {})
        for name in _rows(table):
            result = table[name]
            if "error" in result:
                lines.append(f"| {name} | error: {result['error']} | | | | | | | |")
                continue
            s = summaries[name]
            notes = []
            if name.startswith("ours") and config == largest:
                checks = s1_targets(s, ceiling, naive)
                for check in checks:
                    check.update({"scenario": "S1", "row": name, "config": config})
                verdicts += checks
                notes = [f"{c['what']}: {c['shown']} {_verdict(c['ok'])}" for c in checks if "issue" not in c]
            elif name == "naive" and ceiling.get("peak"):
                notes = [f"peak {(_ratio(s['peak'], ceiling['peak']) or 0):.3f}x ceiling"]
            knee = _num(s["knee"]) if s["knee"] else "never"
            lines.append(
                f"| {name} | {knee} | {_num(s['peak'])} | {_num(s['probe_p50'], 1)} / {_num(s['probe_p99'], 1)} "
                f"| {_num(s['probe_all_p99'], 1)} | {_num(s['drops'])} | {_num(s['cpu_per_delivery'], 1)} "
                f"| {s['client_busy']:.0%} | {'<br>'.join(notes)} |"
            )
        lines.append("")
        lines += s1_steps_detail(table)
    return lines, verdicts


def s1_targets(s: dict[str, Any], ceiling: dict[str, Any], naive: dict[str, Any]) -> list[dict[str, Any]]:
    knee_ratio = _ratio(s["knee"] or 0, ceiling.get("knee"))
    peak_ratio = _ratio(s["peak"], naive.get("peak"))
    probe_ratio = _ratio(s["probe_p99"], ceiling.get("probe_p99"))
    return [
        {
            "what": "knee ≥ 0.3x ceiling",
            "ratio": knee_ratio,
            "shown": f"{knee_ratio:.2f}x" if knee_ratio is not None else "n/a",
            "ok": None if knee_ratio is None else knee_ratio >= 0.3,
        },
        {
            "what": "peak ≥ 10x naive",
            "ratio": peak_ratio,
            "shown": f"{peak_ratio:.1f}x" if peak_ratio is not None else "n/a",
            "ok": None if peak_ratio is None else peak_ratio >= 10,
        },
        {
            "what": "one-message p99 ≤ 3x ceiling",
            "ratio": probe_ratio,
            "shown": f"{probe_ratio:.2f}x" if probe_ratio is not None else "n/a",
            "ok": None if probe_ratio is None else probe_ratio <= 3,
        },
        {"what": "drops = 0", "ratio": None, "shown": _num(s["drops"]), "ok": s["drops"] == 0},
        {
            "issue": "#14",
            "what": "knee ≥ 0.5x ceiling",
            "ratio": knee_ratio,
            "shown": f"{knee_ratio:.2f}x" if knee_ratio is not None else "n/a",
            "ok": None if knee_ratio is None else knee_ratio >= 0.5,
        },
        {
            "issue": "#14",
            "what": "one-message p99 ≤ 2x ceiling",
            "ratio": probe_ratio,
            "shown": f"{probe_ratio:.2f}x" if probe_ratio is not None else "n/a",
            "ok": None if probe_ratio is None else probe_ratio <= 2,
        },
    ]


def s1_steps_detail(table: dict[str, Any]) -> list[str]:
    lines = ["<details><summary>every step</summary>", ""]
    lines += [
        "| row | offered dps | achieved dps | p50 ms | p99 ms | max ms | drops | server CPU s | redis CPU s "
        "| client busy | other load on server core |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in _rows(table):
        for step in table[name].get("steps") or []:
            cpu = step.get("cpu_s", {})
            others = None
            if "core0" in cpu:
                others = max(0.0, cpu["core0"] - cpu.get("server", 0) - cpu.get("redis", 0)) / step["wall_s"]
            lines.append(
                f"| {name} | {_num(step['rate_target'])} | {_num(step['achieved_dps'])} | {_num(step['p50_ms'], 1)} "
                f"| {_num(step['p99_ms'], 1)} | {_num(step['max_ms'], 1)} | {_num(step['drops'])} "
                f"| {_num(cpu.get('server'), 2)} | {_num(cpu.get('redis'), 2)} | {step['client_busy']:.0%} "
                f"| {'-' if others is None else f'{others:.0%}'} |"
            )
    lines += ["", "</details>", ""]
    return lines


# ---------------------------------------------------------------------------
# S2


def s2_section(s2: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = ["## S2 token relay", ""]
    lines += [
        "K replies stream at once from the fake OpenAI-wire server (60 tokens/s each) into rooms of M members. "
        "*Overhead*: time from the upstream emitting a token to a member receiving it. *Frames/reply*: frames one "
        "member received per reply. *Intact*: replies whose reassembled text equals the source, over all members.",
        "",
        "| row | KxM | overhead p50 / p99 ms | frames/reply | server µs CPU per delivered token | intact "
        "| tokens delivered | notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    verdicts: list[dict[str, Any]] = []
    naive_ok: dict[str, float] = {}
    for config, table in s2.items():
        for name in _rows(table):
            r = table[name]
            if "error" in r:
                lines.append(f"| {name} | {config} | error: {r['error']} | | | | | |")
                continue
            lines.append(
                f"| {name} | {config} | {_num(r.get('overhead_p50_ms'), 1)} / {_num(r.get('overhead_p99_ms'), 1)} "
                f"| {_num(r.get('frames_per_reply'), 1)} | {_num(r.get('server_cpu_per_token_us'), 1)} "
                f"| {r.get('intact', 0)}/{r.get('replies_expected', 0)} | {_num(r.get('tokens_delivered'))} "
                f"| {r.get('note', '')} |"
            )
            if name == "naive":
                naive_ok[config] = r.get("overhead_p99_ms") or float("nan")
    lines.append("")
    # Concurrency each row sustains at the naive design's overhead: p99 within naive's at its lightest
    # load (or 100 ms, whichever is larger), every text intact.
    lightest = min(naive_ok, key=lambda c: int(c.split("x")[0]), default=None)
    budget = max(LATENCY_LIMIT_MS, naive_ok.get(lightest, 0) if lightest else 0)
    sustained: dict[str, int] = {}
    for config, table in s2.items():
        replies = int(config.split("x")[0])
        for name, r in table.items():
            if "error" in r or r.get("intact") != r.get("replies_expected"):
                continue
            if r.get("overhead_p99_ms", math.inf) <= budget:
                sustained[name] = max(sustained.get(name, 0), replies)
    if sustained:
        lines += [
            f"Concurrent replies sustained with p99 overhead ≤ {budget:.0f} ms (the naive design's p99 at its "
            f"lightest load, or {LATENCY_LIMIT_MS:.0f} ms if larger) and every text intact: "
            + ", ".join(f"{name} {count}" for name, count in sorted(sustained.items())),
            "",
        ]
    for name in [n for n in sustained if n.startswith("ours")] + [
        n for t in s2.values() for n in t if n.startswith("ours") and n not in sustained
    ]:
        ratio = _ratio(sustained.get(name, 0), sustained.get("naive"))
        intact = all(t[name].get("intact") == t[name].get("replies_expected") for t in s2.values() if name in t)
        verdicts.append(
            {
                "scenario": "S2",
                "row": name,
                "what": "≥ 5x naive's concurrent replies at the same overhead, texts intact",
                "ratio": ratio,
                "shown": f"{ratio:.1f}x" if ratio is not None else "n/a (naive sustained none)",
                "ok": (ratio is not None and ratio >= 5 and intact) if ratio is not None else None,
            }
        )
    return lines, _dedupe(verdicts)


# ---------------------------------------------------------------------------
# S3


def s3_section(s3: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = ["## S3 idle connections", ""]
    lines += [
        "N sockets connect (50 handshakes in flight) and then sit idle. *Memory/conn*: server RSS growth / N "
        "(Redis's growth shown apart). *Held*: sockets still open after the idle window.",
        "",
        "| row | N | KiB/conn (server) | KiB/conn (redis) | handshakes/s | idle CPU % | held | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts: list[dict[str, Any]] = []
    for size, table in s3.items():
        ceiling = table.get("ceiling", {})
        for name in _rows(table):
            r = table[name]
            if "error" in r:
                lines.append(f"| {name} | {size} | error: {r['error']} | | | | | |")
                continue
            per_conn = r["rss_per_conn_bytes"].get("server", 0) / 1024
            redis = r["rss_per_conn_bytes"].get("redis")
            notes = []
            if name.startswith("ours") and "rss_per_conn_bytes" in ceiling:
                ratio = _ratio(per_conn, ceiling["rss_per_conn_bytes"]["server"] / 1024)
                ok = ratio is not None and ratio <= 2
                notes.append(f"memory ≤ 2x ceiling: {ratio:.2f}x {_verdict(ok)}")
                verdicts.append(
                    {
                        "scenario": "S3",
                        "row": name,
                        "config": size,
                        "issue": "#5, #14",
                        "what": f"memory/conn ≤ 2x ceiling at {size} (one user per socket)",
                        "ratio": ratio,
                        "shown": f"{ratio:.2f}x",
                        "ok": ok,
                    }
                )
                if int(size) >= 10000:
                    held = r["open_after_idle"] >= r["sockets"]
                    notes.append(f"holds {size}: {_verdict(held)}")
                    verdicts.append(
                        {
                            "scenario": "S3",
                            "row": name,
                            "config": size,
                            "what": "holds 10k sockets",
                            "ratio": None,
                            "shown": f"{r['open_after_idle']}",
                            "ok": held,
                        }
                    )
            elif name == "naive" and "rss_per_conn_bytes" in ceiling:
                ratio = _ratio(per_conn, ceiling["rss_per_conn_bytes"]["server"] / 1024)
                notes.append(f"{ratio:.2f}x ceiling")
            idle = r["idle_cpu_pct"].get("server", 0) + r["idle_cpu_pct"].get("redis", 0)
            held = r["open_after_idle"]
            lines.append(
                f"| {name} | {size} | {per_conn:.1f} | {_num(redis / 1024 if redis else None, 1)} "
                f"| {_num(r['handshakes_per_s'])} | {idle:.1f} | {max(held, 0)}/{r['sockets']} | {'<br>'.join(notes)} |"
            )
    lines.append("")
    return lines, verdicts


# ---------------------------------------------------------------------------
# S4


def s4_section(s4: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = ["## S4 soak", ""]
    lines += [
        "Half of the row's S1 knee (1000-member room; a fixed rate where it has none), 10%/min reconnect churn "
        "and replies streaming. Drift compares the last quarter of the run with the first.",
        "",
        "| row | seconds | rate dps | p99 first→last ms | RSS first→last MiB | redis keys first→last "
        "| lost | dupes | coverage gaps | reconnects (server-closed) | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts: list[dict[str, Any]] = []
    for name in _rows(s4):
        r = s4[name]
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} | | | | | | | | | |")
            continue
        d = r.get("drift", {})
        notes = []
        if name.startswith("ours"):
            ok = bool(d.get("no_upward_drift")) and r.get("lost", 1) == 0 and r.get("coverage_gaps", 1) == 0
            notes.append(f"no upward drift, zero loss: {_verdict(ok)}")
            verdicts.append(
                {
                    "scenario": "S4",
                    "row": name,
                    "what": "no upward drift, zero loss",
                    "ratio": None,
                    "shown": "",
                    "ok": ok,
                }
            )
        lines.append(
            f"| {name} | {_num(r.get('seconds'))} | {_num(r.get('rate_dps'))} "
            f"| {_num(d.get('p99_first_ms'), 1)} → {_num(d.get('p99_last_ms'), 1)} "
            f"| {_num(d.get('rss_first_mib'), 1)} → {_num(d.get('rss_last_mib'), 1)} "
            f"| {_num(d.get('keys_first'))} → {_num(d.get('keys_last'))} | {_num(r.get('lost'))} "
            f"| {_num(r.get('dupes'))} | {_num(r.get('coverage_gaps'))} "
            f"| {_num(r.get('reconnects'))} ({_num(r.get('unexpected_closes'))}) | {'<br>'.join(notes)} |"
        )
    lines.append("")
    return lines, verdicts


def _dedupe(verdicts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen, out = set(), []
    for v in verdicts:
        key = (v["scenario"], v["row"], v["what"])
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


# ---------------------------------------------------------------------------


def report_write(results: dict[str, Any], out: Path, stem: str) -> Path:
    meta = results["meta"]
    lines = [f"# Benchmark report {meta['started']}", ""]
    mode = "quick (smoke sizes, not for comparison)" if meta["quick"] else meta.get("mode", "full")
    lines += [
        f"Mode: {mode}. Duration {meta.get('duration_s', 0):.0f} s. "
        f"Server pinned to core {meta['cores']['server']} (Redis too), load generator on core "
        f"{meta['cores']['client']}; {meta['machine']['cpus']} cores, {meta['machine']['platform']}. "
        f"Ours' database: {meta.get('ours_db')}.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
    ]
    if meta.get("default_server"):
        lines += [
            f"Default server (docker-compose.yml's `ASGI_SERVER` default): **{meta['default_server']}**, "
            f"the row `{meta.get('default_row')}`. Every socket is a distinct user with its own session "
            "(S5: 1000 users, several sockets each).",
            "",
        ]
    if meta.get("git"):
        git = meta["git"]
        dirty = ", ".join(git.get("dirty") or []) or "none"
        lines += [f"Code: commit {git.get('commit', '?')}; uncommitted changes in the tree: {dirty}.", ""]
    loads = meta.get("load") or {}
    if loads:
        busiest = max(v[0] for v in loads.values())
        note = (
            "**the machine was not idle** (other agents' test runs): prefer the ratios, "
            "and the *other load* column of S1's steps"
            if busiest > 1.0
            else "the machine was quiet"
        )
        lines += [
            "Load average (1 min) at the start of each scenario: "
            + ", ".join(f"{k} {v[0]:.2f}" for k, v in loads.items())
            + f"; {note}.",
            "",
        ]
    for name, origin in sorted((meta.get("origins") or {}).items()):
        lines += [
            f"{name} comes from the earlier run {origin['file']} (started {origin['started']}); "
            "its ratios are between rows of that run.",
            "",
        ]
    if meta.get("skipped_targets"):
        lines += ["Skipped rows: " + "; ".join(f"{k}: {v}" for k, v in meta["skipped_targets"].items()), ""]
    lines += [
        "Ratios are taken between rows of this same run; absolute numbers move with the machine "
        "(it is shared: the *other load* column of S1's steps shows what else ran on the server core).",
        "",
        f"![chart]({stem}.png)",
        "",
    ]
    sections = {
        "S1": s1_section,
        "S2": s2_section,
        "S3": s3_section,
        "S4": s4_section,
        "S5": s5_section,
        "S6": s6_section,
        "S7": s7_section,
    }
    verdicts: list[dict[str, Any]] = []
    body: list[str] = []
    for name, section in sections.items():
        data = results.get(name)
        if data is None:
            continue
        if "error" in data and len(data) == 1:
            body += [f"## {name}", "", f"Not run: {data['error']}", ""]
            continue
        part, found = section(data)
        body += part
        verdicts += found
    if verdicts:
        lines += [
            "## Targets of issues #5 and #14",
            "",
            "| issue | scenario | row | target | ratio | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for v in verdicts:
            where = f" ({v['config']})" if v.get("config") else ""
            row = v["row"] + (" (default server)" if v["row"] == meta.get("default_row") else "")
            lines.append(
                f"| {v.get('issue', '#5')} | {v['scenario']}{where} | {row} | {v['what']} | {v['shown']} "
                f"| {_verdict(v['ok'])} |"
            )
        lines.append("")
    lines += body
    lines += profiles_section(results)
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    try:
        chart_write(results, out / f"{stem}.png")
    except Exception as exc:  # noqa: BLE001 - a chart failure must not lose the report
        path.write_text(path.read_text() + f"\n(chart failed: {exc!r})\n")
    return path


def profiles_section(results: dict[str, Any]) -> list[str]:
    """py-spy summaries attached to rows: where the server's samples went."""
    found = []
    phases = (
        ("S1", "fan-out ramp"),
        ("S3", "handshakes"),
        ("S5", "reconnect storm"),
        ("S6", "small-room ramp"),
        ("S2", "token relay"),
    )
    for scenario, phase in phases:
        for config, table in (results.get(scenario) or {}).items():
            if not isinstance(table, dict):
                continue
            for name, result in table.items():
                if isinstance(result, dict) and result.get("profile"):
                    found.append((scenario, phase, config, name, result["profile"]))
    if not found:
        return []
    lines = [
        "## Where the server's time goes (py-spy)",
        "",
        "Share of py-spy samples of the server process (all threads, 100 Hz, non-blocking) during the phase. "
        "*Inclusive*: the frame was on the stack; *self*: it was the leaf. Event-loop plumbing every sample "
        "shares is left out.",
        "",
    ]
    for scenario, phase, config, name, profile in found:
        lines += [
            f"### {name}: {scenario} {config}, {phase} ({profile['samples_s']} s of samples)",
            "",
            "| inclusive % | frame | | self % | frame |",
            "|---:|---|---|---:|---|",
        ]
        inclusive, leaf = profile["inclusive"], profile["self"]
        for i in range(max(len(inclusive), len(leaf))):
            a = inclusive[i] if i < len(inclusive) else ["", ""]
            b = leaf[i] if i < len(leaf) else ["", ""]
            lines.append(f"| {a[1]} | `{a[0]}` | | {b[1]} | `{b[0]}` |")
        lines.append("")
        if profile.get("threads"):
            lines += ["Samples by thread: " + ", ".join(f"{k} {v}%" for k, v in profile["threads"].items()) + "."]
            if profile.get("loop_inclusive"):
                lines += ["Event loop alone (inclusive % of all samples): "]
                lines += ["; ".join(f"`{label}` {share}" for label, share in profile["loop_inclusive"]) + "."]
            lines.append("")
    return lines


COLORS = {
    "ceiling": "#2b8a3e",
    "naive": "#c92a2a",
    "ours": "#1c7ed6",
    "ours-uvicorn": "#f08c00",
    "ours-granian": "#e64980",
    "ours-core": "#7048e8",
}


def chart_write(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    ax = axes[0][0]
    s1 = results.get("S1") or {}
    largest = max(s1, key=lambda c: int(c.split("x")[0])) if s1 else ""
    first = s1.get(largest)
    if first:
        for name in _rows(first):
            steps = first[name].get("steps") or []
            if steps:
                ax.plot(
                    [s["rate_target"] for s in steps],
                    [max(s["p99_ms"], 0.1) for s in steps],
                    "o-",
                    color=COLORS.get(name),
                    label=name,
                )
        ax.axhline(LATENCY_LIMIT_MS, color="grey", linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("deliveries/s offered")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_title(f"S1: {largest.split('x')[0]}-member room, p99 vs load")
        ax.legend()
    ax = axes[0][1]
    if s1:
        configs = list(s1)
        rows = [n for n in ROW_ORDER if any(n in s1[c] for c in configs)]
        width = 0.8 / max(1, len(rows))
        for i, name in enumerate(rows):
            peaks = [s1_summary(s1[c][name])["peak"] or 0 if name in s1[c] else 0 for c in configs]
            ax.bar([x + i * width for x in range(len(configs))], peaks, width, color=COLORS.get(name), label=name)
        ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(configs))])
        ax.set_xticklabels([c.replace("x", " members x ") + " rooms" for c in configs])
        ax.set_yscale("log")
        ax.set_ylim(bottom=100)
        ax.set_ylabel("peak deliveries/s")
        ax.set_title("S1: peak deliveries/s")
        ax.legend(fontsize="small", ncol=2, loc="lower right")
    ax = axes[1][0]
    s2 = results.get("S2") or {}
    if s2 and not ("error" in s2 and len(s2) == 1):
        configs = list(s2)
        rows = [n for n in ROW_ORDER if any(n in s2[c] for c in configs)]
        width = 0.8 / max(1, len(rows))
        for i, name in enumerate(rows):
            # A rung a row never ran (it failed a lower one) gets no bar, not a near-zero one.
            points = [
                (x + i * width, value)
                for x, c in enumerate(configs)
                if (value := (s2[c].get(name) or {}).get("overhead_p99_ms"))
            ]
            ax.bar([x for x, _ in points], [v for _, v in points], width, color=COLORS.get(name), label=name)
        ax.axhline(100, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(configs))])
        ax.set_xticklabels(configs)
        ax.set_xlabel("concurrent replies x members")
        ax.set_yscale("log")
        ax.set_ylabel("relay overhead p99 (ms)")
        ax.set_title("S2: token relay overhead")
        ax.legend()
    else:
        ax.set_visible(False)
    ax = axes[1][1]
    s3 = results.get("S3") or {}
    if s3:
        sizes = list(s3)
        rows = [n for n in ROW_ORDER if any(n in s3[s] for s in sizes)]
        width = 0.8 / max(1, len(rows))
        for i, name in enumerate(rows):
            values = [((s3[s].get(name) or {}).get("rss_per_conn_bytes") or {}).get("server", 0) / 1024 for s in sizes]
            ax.bar([x + i * width for x in range(len(sizes))], values, width, color=COLORS.get(name), label=name)
        ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(sizes))])
        ax.set_xticklabels([f"{s} sockets" for s in sizes])
        ax.set_ylabel("KiB per idle connection")
        ax.set_title("S3: memory per idle connection")
        ax.legend(fontsize="small", ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---------------------------------------------------------------------------
# S5


PRESENCE_BYTES_PER_JOIN = 32  # a delta naming one user, not a list of the room


def s5_section(s5: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = ["## S5 reconnect storm", ""]
    lines += [
        "N sockets of 1000 distinct users in 10 rooms; each socket's cursor is 20 messages behind. Every client "
        "socket is killed at once; each comes back on the browser's schedule (first attempt uniform in the upper "
        "half of the 1 s window, retries backing off the same way) with `?after=<cursor>`. *All back*: from the "
        "drop until the last socket had its `hello` (ours: with all 20 missed messages; ceiling and naive: the "
        "101, they have nothing to resume). *Ready/s*: sockets back / (last ready - first attempt). *To hello*: "
        "per socket, first attempt to ready. Server CPU, queries (the bench's census of every statement Django "
        "ran) and database time (the server's wait on them) are per reconnect; *PG CPU*: the PostgreSQL "
        "backends' CPU. *Presence*: frames of type presence/presence.delta the sockets received from the drop "
        "until 1 s after the last hello; *B/join/socket*: their bytes / (joins x sockets per room).",
        "",
        "| row | N | all back s | ready/s | to hello p50 / p99 ms | retries | not back | missed msgs in hello "
        "| server ms CPU/reconnect | queries/reconnect | DB ms/reconnect | PG CPU ms/reconnect "
        "| presence frames/socket | presence B/join/socket | first connect joins/s | targets |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts: list[dict[str, Any]] = []
    statements: list[str] = []
    for size, table in s5.items():
        ceiling = table.get("ceiling", {})
        for name in _rows(table):
            r = table[name]
            if "error" in r:
                lines.append(f"| {name} | {size} | error: {r['error']} |" + " |" * 14)
                continue
            db = r.get("db") or {}
            notes = []
            if name.startswith("ours") and "back_all_s" in ceiling and "error" not in ceiling:
                back_ratio = _ratio(r["back_all_s"], ceiling["back_all_s"])
                rate_ratio = _ratio(r["ready_per_s"], ceiling["ready_per_s"])
                all_back = r["back"] == r["sockets"] and r.get("missed_complete") == r["sockets"]
                presence = r.get("presence_bytes_per_join_per_socket")
                checks = [
                    {
                        "what": f"all {size} back within 3x the ceiling's time",
                        "ratio": back_ratio,
                        "shown": f"{back_ratio:.2f}x" if back_ratio is not None else "n/a",
                        "ok": back_ratio is not None and back_ratio <= 3 and r["back"] == r["sockets"],
                    },
                    {
                        "what": "handshakes with hello ≥ 0.3x the ceiling's rate",
                        "ratio": rate_ratio,
                        "shown": f"{rate_ratio:.2f}x" if rate_ratio is not None else "n/a",
                        "ok": rate_ratio is not None and rate_ratio >= 0.3,
                    },
                    {
                        "what": f"presence O(1) per join per socket (≤ {PRESENCE_BYTES_PER_JOIN} B)",
                        "ratio": None,
                        "shown": f"{_num(presence, 1)} B",
                        "ok": presence is not None and presence <= PRESENCE_BYTES_PER_JOIN,
                    },
                    {
                        "what": "every socket back with all its missed messages",
                        "ratio": None,
                        "shown": f"{r.get('missed_complete')}/{r['sockets']}",
                        "ok": all_back,
                    },
                ]
                for check in checks:
                    check.update({"scenario": "S5", "row": name, "config": size, "issue": "#14"})
                verdicts += checks
                notes = [f"{c['what']}: {c['shown']} {_verdict(c['ok'])}" for c in checks]
                if db.get("statements"):
                    statements.append(f"*{name}, {size} sockets* (calls and ms per reconnect):")
                    statements += [f"- {calls} x {ms} ms `{sql[:110]}`" for sql, calls, ms in db["statements"]]
            to_hello = f"{_num(r.get('to_hello_p50_ms'))} / {_num(r.get('to_hello_p99_ms'))}"
            missed = "-" if r.get("missed_complete") is None else f"{r['missed_complete']}/{r['sockets']}"
            lines.append(
                f"| {name} | {size} | {_num(r.get('back_all_s'), 2)} | {_num(r.get('ready_per_s'))} | {to_hello} "
                f"| {_num(r.get('retries'))} | {r['sockets'] - r.get('back', 0)} | {missed} "
                f"| {_num(r.get('server_cpu_per_reconnect_ms'), 2)} | {_num(db.get('queries_per'), 1)} "
                f"| {_num(db.get('query_ms_per'), 2)} | {_num(db.get('pg_cpu_ms_per'), 2)} "
                f"| {_num(r.get('presence_frames_per_socket'), 1)} "
                f"| {_num(r.get('presence_bytes_per_join_per_socket'), 1)} | {_num(r.get('first_joins_per_s'))} "
                f"| {'<br>'.join(notes)} |"
            )
    lines.append("")
    failures = [
        f"{name} ({size}): " + ", ".join(f"{k} x{v}" for k, v in r["failures"].items())
        for size, table in s5.items()
        for name, r in table.items()
        if r.get("failures")
    ]
    if failures:
        lines += ["Failed attempts (each retried on the browser's backoff): " + "; ".join(failures) + ".", ""]
    if statements:
        lines += ["<details><summary>where a reconnect's database time goes</summary>", "", *statements]
        lines += ["", "</details>", ""]
    return lines, verdicts


# ---------------------------------------------------------------------------
# S6


def s6_summary(result: dict[str, Any], members: int) -> dict[str, Any]:
    steps = result.get("steps") or []
    knee_step = None
    for step in steps:
        persisted_ok = step.get("persisted") is None or (
            step["persisted"] == step["sent"] and not step.get("persist_duplicates")
        )
        if step["p99_ms"] < LATENCY_LIMIT_MS and not step["drops"] and step["drained"] and persisted_ok:
            knee_step = step
    checked = [s for s in steps if s.get("persisted") is not None]
    return {
        "knee": knee_step["rate_target"] if knee_step else None,
        "knee_msgs": knee_step["rate_target"] / members if knee_step else None,
        "knee_step": knee_step,
        "peak": max((s["achieved_dps"] for s in steps), default=None),
        "drops": sum(s["drops"] for s in steps),
        "persisted": sum(s["persisted"] for s in checked) if checked else None,
        "sent": sum(s["sent"] for s in checked) if checked else None,
        "duplicates": sum(s.get("persist_duplicates") or 0 for s in checked) if checked else None,
    }


def s6_section(s6: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = ["## S6 many small rooms", ""]
    lines += [
        "Rooms of 10 members on one process, one sender per room, a rising total message rate spread over the "
        "rooms; every member (the sender too: ours acknowledges with the message) receives every message. "
        "*Knee*: the highest offered deliveries/s with p99 < 100 ms, nothing lost and (ours) every message of "
        "every step read back from the database exactly once. Per message at the knee: server CPU, the queries "
        "Django ran, the time the server waited on them, and the PostgreSQL backends' CPU.",
        "",
        "| row | rooms x members | knee dps (msgs/s) | peak dps | p99 at knee ms | drops | persisted / sent "
        "| server µs CPU/msg | queries/msg | DB ms/msg | PG CPU ms/msg | targets |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts: list[dict[str, Any]] = []
    for config, table in s6.items():
        members = int(config.split("x")[0])
        summaries = {n: s6_summary(r, members) for n, r in table.items() if "error" not in r}
        ceiling = summaries.get("ceiling", {})
        for name in _rows(table):
            r = table[name]
            if "error" in r:
                lines.append(f"| {name} | {config} | error: {r['error']} |" + " |" * 9)
                continue
            s = summaries[name]
            step = s["knee_step"] or {}
            db = step.get("db") or {}
            notes = []
            if name.startswith("ours"):
                ratio = _ratio(s["knee"] or 0, ceiling.get("knee"))
                all_saved = s["persisted"] is not None and s["persisted"] == s["sent"] and not s["duplicates"]
                checks = [
                    {
                        "what": "deliveries/s at p99 < 100 ms ≥ 0.25x ceiling",
                        "ratio": ratio,
                        "shown": f"{ratio:.2f}x" if ratio is not None else "n/a",
                        "ok": None if ratio is None else ratio >= 0.25,
                    },
                    {
                        "what": "every message persisted once, delivered to every member",
                        "ratio": None,
                        "shown": f"{_num(s['persisted'])}/{_num(s['sent'])}, {_num(s['drops'])} lost",
                        "ok": all_saved and s["drops"] == 0,
                    },
                ]
                for check in checks:
                    check.update({"scenario": "S6", "row": name, "config": config, "issue": "#14"})
                verdicts += checks
                notes = [f"{c['what']}: {c['shown']} {_verdict(c['ok'])}" for c in checks]
            knee = f"{_num(s['knee'])} ({_num(s['knee_msgs'])})" if s["knee"] else "never"
            saved = "-" if s["persisted"] is None else f"{_num(s['persisted'])} / {_num(s['sent'])}"
            lines.append(
                f"| {name} | {config.replace('x', ' members x ')} rooms | {knee} | {_num(s['peak'])} "
                f"| {_num(step.get('p99_ms'), 1)} | {_num(s['drops'])} | {saved} "
                f"| {_num(step.get('server_cpu_per_message_us'))} | {_num(db.get('queries_per'), 1)} "
                f"| {_num(db.get('query_ms_per'), 2)} | {_num(db.get('pg_cpu_ms_per'), 2)} | {'<br>'.join(notes)} |"
            )
        lines.append("")
        lines += s1_steps_detail(table)
        for name in _rows(table):
            step = summaries.get(name, {}).get("knee_step") or {}
            rows = (step.get("db") or {}).get("statements")
            if rows:
                lines += [f"*{name}*: statements per message at the knee (calls, ms the server waited):", ""]
                lines += [f"- {calls} x {ms} ms `{sql[:110]}`" for sql, calls, ms in rows]
                lines.append("")
    return lines, verdicts


# ---------------------------------------------------------------------------
# S7

EVENTS_PER_USER_S = 0.1  # the projection's load model: see the section's text


def s7_section(s7: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    lines = ["## S7 Redis as the shared bus", ""]
    lines += [
        "N subscriber processes run the project's hub (`rooms.realtime.hub` on the channels-redis pub/sub "
        "layer, joined to every one of the room groups); one publisher sends room events, one `PUBLISH` each, "
        "the bytes `group_send` writes, with a message frame of S1's size. Redis is alone on the server core; "
        "the publisher and all subscribers share the client core. *Sustained*: the highest offered events/s "
        "that every subscriber received in full with p99 < 100 ms. *Redis µs/event*: Redis's CPU (from "
        "/proc/<pid>/stat) per published event, its idle tick subtracted; *projected*: what one Redis core "
        "would carry at that cost (1e6 / µs per event), and the users that is at "
        f"{EVENTS_PER_USER_S} room events per user per second (a message, two typing changes and a share of "
        "an assistant reply's coalesced deltas every ~30 s per active user).",
        "",
        "**What 2 cores limit**: with N subscribers on one core, each event costs N decodes there, so the "
        "subscriber side saturates long before Redis does; the measured *sustained* rate is this machine's, "
        "and the *projected* columns are Redis's own ceiling, extrapolated linearly from its CPU per event "
        "(Redis is single-threaded: one core is its limit).",
        "",
        "| subscribers | event bytes | sustained events/s | deliveries/s | Redis busy at sustained "
        "| Redis µs/event | subscriber µs/event/process | first failing step: what saturated "
        "| projected events/s per Redis | projected users per Redis |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for n, r in s7.items():
        if "error" in r and not r.get("steps"):
            lines.append(f"| {n} | error: {r['error']} |" + " |" * 8)
            continue
        steps = r.get("steps") or []
        ok = [s for s in steps if s.get("ok")]
        best = ok[-1] if ok else None
        bad = next((s for s in steps if not s.get("ok")), None)
        why = "-"
        if bad:
            side = "subscribers' core" if bad["subs_busy"] + 0.1 >= bad["redis_busy"] else "Redis"
            why = (
                f"{_num(bad['rate_target'])}/s: lost {_num(bad['lost'])}, p99 {_num(bad['p99_ms'])} ms, "
                f"published {_num(bad['publish_rate'])}/s; Redis {bad['redis_busy']:.0%}, subscribers "
                f"{bad['subs_busy']:.0%} of a core ({side})"
            )
        elif steps:
            why = f"none up to {_num(steps[-1]['rate_target'])}/s (the ladder's top)"
        per_event = best.get("redis_us_net_per_event", best.get("redis_us_per_event")) if best else None
        projected = 1e6 / per_event if per_event else None
        users = projected / EVENTS_PER_USER_S if projected else None
        subs_per = best["subs_us_per_event"] / int(n) if best else None
        busy = f"{best['redis_busy']:.0%}" if best else "-"
        lines.append(
            f"| {n} | {_num(r.get('event_bytes'))} | {_num(best['publish_rate']) if best else 'none'} "
            f"| {_num(best['publish_rate'] * int(n)) if best else '-'} "
            f"| {busy} | {_num(per_event, 1)} | {_num(subs_per, 1)} "
            f"| {why} | {_num(projected)} | {_num(users)} |"
        )
    lines += ["", "<details><summary>every step</summary>", ""]
    lines += [
        "| subscribers | offered/s | published/s | lost | p50 / p99 ms | Redis busy | Redis µs/event "
        "| subscribers busy | publisher µs/event |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in s7.items():
        for s in r.get("steps") or []:
            lines.append(
                f"| {n} | {_num(s['rate_target'])} | {_num(s['publish_rate'])} | {_num(s['lost'])} "
                f"| {_num(s['p50_ms'], 1)} / {_num(s['p99_ms'], 1)} | {s['redis_busy']:.0%} "
                f"| {_num(s.get('redis_us_net_per_event', s['redis_us_per_event']), 1)} | {s['subs_busy']:.0%} "
                f"| {_num(s['pub_us_per_event'], 1)} |"
            )
    lines += ["", "</details>", ""]
    return lines, []
