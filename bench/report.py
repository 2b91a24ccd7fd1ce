"""Turns bench/run.sh's results.jsonl into table.md and latency.png.

    python3 bench/report.py target/bench/results.jsonl target/bench
"""

import json
import sys
from pathlib import Path

SYSTEMS = ("gateway", "nginx")
MODE_TITLES = {"plain": "plain HTTP", "tls": "TLS", "tls-close": "TLS, a connection per callback"}
# The targets of issue #7, at this many connections.
AT = 32


def load(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    by_kind = {}
    for row in rows:
        by_kind.setdefault(row["kind"], []).append(row)
    return by_kind


def runs(by_kind):
    """Per (mode, system, connections): the rounds taken together. Throughput
    and CPU are totals over all rounds; latencies are the median round's."""
    rounds = {}
    for r in by_kind.get("load", []):
        rounds.setdefault((r["mode"], r["system"], r["connections"]), []).append(r)
    out = {}
    for key, rs in rounds.items():
        requests = sum(r["wrk"]["requests"] for r in rs)
        seconds = sum(r["wrk"]["duration_us"] for r in rs) / 1e6
        ticks = sum(r["cpu_user_ticks"] + r["cpu_sys_ticks"] for r in rs)
        sys_ticks = sum(r["cpu_sys_ticks"] for r in rs)
        clk_tck = rs[0]["clk_tck"]
        out[key] = {
            "rps": requests / seconds,
            "p50": median(r["wrk"]["p50_us"] for r in rs) / 1000,
            "p99": median(r["wrk"]["p99_us"] for r in rs) / 1000,
            "p999": median(r["wrk"]["p999_us"] for r in rs) / 1000,
            "cpu_us": ticks / clk_tck * 1e6 / max(requests, 1),
            "sys_us": sys_ticks / clk_tck * 1e6 / max(requests, 1),
            "errors": sum(sum(r["wrk"][k] for k in r["wrk"] if k.startswith("errors_")) for r in rs),
            # Each round's throughput, in order, for the spread of the ratio.
            "round_rps": [r["wrk"]["requests"] / (r["wrk"]["duration_us"] / 1e6)
                          for r in sorted(rs, key=lambda r: r.get("round", 1))],
        }
    return out


def median(values):
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def spread(g, n):
    """The lowest and highest of the rounds' throughput ratios."""
    ratios = [a / b for a, b in zip(g["round_rps"], n["round_rps"])]
    return min(ratios), max(ratios)


def one(by_kind, kind, mode, system):
    for r in by_kind.get(kind, []):
        if r["mode"] == mode and r["system"] == system:
            return r
    return None


def table(by_kind, results):
    machine = by_kind["machine"][0]
    end = by_kind.get("end", [{}])[0]
    modes = [m for m in MODE_TITLES if any(k[0] == m for k in results)]
    conns = sorted({k[2] for k in results})
    lines = [
        f"{machine['cpus']} CPUs ({machine['model']}), load average before "
        f"{machine['load_before']}, after {end.get('load_after', '?')}; "
        f"{machine['body_kind']} callbacks of {machine['body_bytes'] - 1} bytes; "
        f"{machine.get('rounds', 1)} alternating runs of {machine['duration_s']} s per system and load "
        f"(throughput and CPU over all of them, latency of the median run); "
        f"commit {machine['commit']}, {machine['date']}.",
        "",
        "| mode | conns | system | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req (of it kernel); with a connection per callback, per connection | errors |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mode in modes:
        for c in conns:
            for system in SYSTEMS:
                r = results.get((mode, system, c))
                if r is None:
                    continue
                lines.append(
                    f"| {MODE_TITLES[mode]} | {c} | {system} | {r['rps']:,.0f} | {r['p50']:.3f} | "
                    f"{r['p99']:.3f} | {r['p999']:.3f} | {r['cpu_us']:.1f} ({r['sys_us']:.1f}) | {r['errors']} |"
                )
            g, n = results.get((mode, "gateway", c)), results.get((mode, "nginx", c))
            if g and n:
                low, high = spread(g, n)
                lines.append(
                    f"| {MODE_TITLES[mode]} | {c} | **ratio** (runs {low:.2f}–{high:.2f}) | **{g['rps'] / n['rps']:.2f}x** | "
                    f"{g['p50'] / n['p50']:.2f}x | **{g['p99'] / n['p99']:.2f}x** | "
                    f"{g['p999'] / n['p999']:.2f}x | {g['cpu_us'] / n['cpu_us']:.2f}x | |"
                )
    lines += [
        "",
        "| mode | system | ready after ms | idle RSS MiB | peak RSS MiB | processes |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for mode in modes:
        for system in SYSTEMS:
            s, p = one(by_kind, "start", mode, system), one(by_kind, "peak", mode, system)
            if s is None:
                continue
            peak = f"{p['peak_rss_kib'] / 1024:.1f}" if p else "?"
            lines.append(
                f"| {MODE_TITLES[mode]} | {system} | {s['ready_us'] / 1000:.1f} | "
                f"{s['idle_rss_kib'] / 1024:.1f} | {peak} | {s['processes']} |"
            )
    lines += ["", "Targets (gateway):", ""]
    for mode in modes:
        g, n = results.get((mode, "gateway", AT)), results.get((mode, "nginx", AT))
        if g and n:
            ratio, p99 = g["rps"] / n["rps"], g["p99"] / n["p99"]
            low, high = spread(g, n)
            # Three places, so a ratio just under a target does not print as on it.
            lines.append(f"- {MODE_TITLES[mode]}, {AT} connections: throughput {ratio:.3f}x nginx "
                         f"(runs {low:.2f}–{high:.2f}; ≥ 0.9: {'met' if ratio >= 0.9 else 'NOT met'}), p99 {p99:.2f}x nginx "
                         f"(≤ 1.5: {'met' if p99 <= 1.5 else 'NOT met'})")
        s, p = one(by_kind, "start", mode, "gateway"), one(by_kind, "peak", mode, "gateway")
        if s and p:
            peak, idle, ready = p["peak_rss_kib"] / 1024, s["idle_rss_kib"] / 1024, s["ready_us"] / 1000
            lines.append(f"- {MODE_TITLES[mode]}: peak RSS {peak:.1f} MiB (≤ 20: {'met' if peak <= 20 else 'NOT met'}), "
                         f"idle RSS {idle:.1f} MiB (≤ 8: {'met' if idle <= 8 else 'NOT met'}), "
                         f"ready after {ready:.1f} ms (< 100: {'met' if ready < 100 else 'NOT met'})")
    return "\n".join(lines) + "\n"


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODE_TITLES if any(k[0] == m for k in results)]
    fig, axes = plt.subplots(2, len(modes), figsize=(6.2 * len(modes), 7.6), squeeze=False,
                             sharex=True)
    colours = {"gateway": "#1f6fb4", "nginx": "#e07b16"}
    names = {"gateway": "feishu-gate", "nginx": "nginx proxy_pass"}
    for col, mode in enumerate(modes):
        top, bottom = axes[0][col], axes[1][col]
        for system in SYSTEMS:
            points = sorted((c, r) for (m, s, c), r in results.items() if m == mode and s == system)
            if not points:
                continue
            conns = [c for c, _ in points]
            top.plot(conns, [r["rps"] for _, r in points], marker="o", color=colours[system],
                     label=names[system])
            for key, style in (("p50", "-"), ("p99", "--"), ("p999", ":")):
                bottom.plot(conns, [r[key] for _, r in points], style, marker="o",
                            color=colours[system], label=f"{names[system]} {key.replace('p999', 'p99.9')}")
        top.set_title(f"{MODE_TITLES[mode]}: throughput")
        top.set_ylabel("requests per second")
        top.set_ylim(bottom=0)
        bottom.set_title(f"{MODE_TITLES[mode]}: latency against load")
        bottom.set_ylabel("latency, ms (log scale)")
        bottom.set_yscale("log")
        bottom.set_xlabel("concurrent connections (closed loop)")
        bottom.set_xscale("log", base=2)
        bottom.set_xticks(sorted({k[2] for k in results}))
        bottom.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        for ax in (top, bottom):
            ax.grid(True, which="both", alpha=0.3)
        top.legend(fontsize=8, loc="lower right")
    # One legend for the latency panels, below them, where it hides no point.
    handles, labels = axes[1][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)


def main():
    by_kind = load(sys.argv[1])
    out = Path(sys.argv[2])
    results = runs(by_kind)
    text = table(by_kind, results)
    (out / "table.md").write_text(text)
    print(text)
    chart(results, out / "latency.png")
    print(f"chart: {out / 'latency.png'}")


if __name__ == "__main__":
    main()
