#!/usr/bin/env python3
"""Builds bench/RESULTS.md from the runs of scripts/bench-all.sh (bench/results/*/summary.json)."""
import json
import os
import platform
import subprocess

R = "bench/results"
PAPER = [  # clients, system, elapsed s, p50 s, p95 s, throughput msg/s (the table)
    (1, "OpenFaaS", 213.1, 0.403, 0.496, 1.86), (1, "Fission", 223.2, 0.423, 0.549, 1.79),
    (3, "OpenFaaS", 239.3, 1.269, 20.33, 5.01), (5, "OpenFaaS", 318.4, 22.24, 91.85, 6.27),
    (5, "Fission", 315.9, 19.09, 81.42, 6.32), (5, "Kafka-ML", 494.5, None, None, 4.0),
    (10, "Fission", 561.6, 123.8, 317.2, 7.12),
]
SCHEDULE_S = 100 * (1 + 1 / 2 + 1 / 3 + 1 / 4)  # one client's send schedule, 208.3 s


def load(name):
    p = os.path.join(R, name, "summary.json")
    return json.load(open(p)) if os.path.exists(p) else None


def tail_after_last_send(name, mode):
    """Seconds from the last send to the last exit (backlog left when the clients stop)."""
    p = os.path.join(R, name, "messages.csv")
    if not os.path.exists(p):
        return None
    last_send, last_exit = 0.0, 0.0
    for line in open(p).read().splitlines()[1:]:
        f = line.split(",")
        if f[0] != mode:
            continue
        send, rtt = float(f[4]), float(f[6]) / 1000
        last_send, last_exit = max(last_send, send), max(last_exit, send + rtt)
    return last_exit - last_send


def main():
    out = ["# Benchmark results", ""]
    cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True).stdout.strip()
    out += [f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; broker: tansu 0.6.0 with",
            "sqlite storage on loopback; one `ddnn node` process per tier (release build). The machine is",
            "shared: other builds and tests ran during some of these runs, so treat small differences as noise.",
            "Reproduce everything with `scripts/bench-all.sh` then `python3 scripts/bench-report.py`. Per-message",
            "CSVs are committed for every run except `ramp-dense-memory` (21 MB; rerun it to get it).", ""]

    out += ["## The paper's workload (`ddnn-bench paper --clients N`, full length, not time-scaled)", "",
            "| clients | system | elapsed (s) | RTT p50 / p95 (s), all exits | RTT p99 (s) | throughput (msg/s) |",
            "|---|---|---|---|---|---|"]
    for n in (1, 3, 5, 10):
        for c, sysname, el, p50, p95, thr in PAPER:
            if c == n:
                rtt = "not measurable" if p50 is None else f"{p50} / {p95}"
                out.append(f"| {n} | {sysname} (paper) | {el} | {rtt} | | {thr} |")
        s = load(f"paper-{n}")
        if not s:
            out.append(f"| {n} | ddnn | (not run) | | | |")
            continue
        for m in s["modes"]:
            g = next(g for g in m["groups"] if g["exit_tier"] == "all")
            out.append(f"| {n} | ddnn {m['mode']} | {m['elapsed_s']:.1f} | {g['p50_ms']/1000:.4f} / {g['p95_ms']/1000:.4f} | "
                       f"{g['p99_ms']/1000:.4f} | {m['throughput_msg_s']:.2f} |")
    out += ["", f"The send schedule itself lasts {SCHEDULE_S:.1f} s per client. Per-exit-tier tables, peak workers and memory of",
            "each run are in `bench/results/paper-N/summary.md`.", ""]

    out += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    for n in (5, 10):
        s = load(f"paper-{n}")
        if not s:
            continue
        modes = {m["mode"]: m for m in s["modes"]}
        if "elastic" in modes:
            el = modes["elastic"]["elapsed_s"]
            over = 100 * (el - SCHEDULE_S) / SCHEDULE_S
            tail = tail_after_last_send(f"paper-{n}", "elastic")
            out.append(f"| paper {n} clients: elapsed within 0.5 % of the schedule | {el:.1f} s vs {SCHEDULE_S:.1f} s ({over:+.2f} %); last exit {tail:.3f} s after the last send | {'yes' if over <= 0.5 else 'no'} |")
        if "elastic" in modes and "relay" in modes:
            pe = next(g for g in modes["elastic"]["groups"] if g["exit_tier"] == "all")["p99_ms"]
            pr = next(g for g in modes["relay"]["groups"] if g["exit_tier"] == "all")["p99_ms"]
            out.append(f"| paper {n} clients: elastic p99 ≤ 1.5 × relay p99 | {pe:.1f} ms vs {pr:.1f} ms ({pe/pr:.2f}×) | {'yes' if pe <= 1.5 * pr else 'no'} |")
    for name, label in [("ramp-dense", "sqlite broker"), ("ramp-dense-memory", "in-memory broker")]:
        rd = load(name)
        if not rd:
            continue
        sat = {m["mode"]: m["extra"].get("saturation_msg_s", 0) for m in rd["modes"]}
        e, r = sat.get("elastic", 0), sat.get("relay", 0)
        out.append(f"| ramp, dense, {label}: ≥ 5,000 msg/s | {e:.0f} msg/s | {'yes' if e >= 5000 else 'no'} |")
        if r:
            out.append(f"| ramp, dense, {label}: ≥ 0.8 × relay saturation | {e:.0f} vs {r:.0f} msg/s ({e/r:.2f}×) | {'yes' if e >= 0.8 * r else 'no'} |")
    bc = load("burst-cnn")
    if bc:
        modes = {m["mode"]: m for m in bc["modes"]}
        if "elastic" in modes and "fixed" in modes:
            pe = next(g for g in modes["elastic"]["groups"] if g["exit_tier"] == "all")["p99_ms"]
            pf = next(g for g in modes["fixed"]["groups"] if g["exit_tier"] == "all")["p99_ms"]
            out.append(f"| mnist-cnn burst that saturates one worker: elastic p99 ≤ 0.5 × fixed p99 | {pe:.0f} ms vs {pf:.0f} ms ({pe/pf:.2f}×) | {'yes' if pe <= 0.5 * pf else 'no'} |")
    rss = []
    for name in sorted(os.listdir(R)) if os.path.isdir(R) else []:
        s = load(name)
        if s:
            for m in s["modes"]:
                rss += list(m["peak_rss_mib"].values())
    if rss:
        out.append(f"| peak RSS of a tier node under load ≤ 64 MB | max {max(rss):.0f} MiB over all runs | {'yes' if max(rss) <= 64 else 'no'} |")
    out.append("")

    for name, title in [("ramp-dense", "Ramp, dense models, sqlite broker"), ("ramp-dense-memory", "Ramp, dense models, in-memory broker"),
                        ("ramp-cnn", "Ramp, mnist-cnn models"), ("burst-cnn", "Burst, mnist-cnn models")]:
        s = load(name)
        if not s:
            continue
        out += [f"## {title} (`{name}`)", ""]
        for m in s["modes"]:
            extra = ", ".join(f"{k} = {v:.2f}" for k, v in m["extra"].items())
            g = next(g for g in m["groups"] if g["exit_tier"] == "all")
            out.append(f"- **{m['mode']}**: {extra or 'no scenario figures'}; answered {m['answered']}/{m['sent']}; RTT p50 {g['p50_ms']:.0f} ms, p99 {g['p99_ms']:.0f} ms; peak workers {m['peak_workers']}; peak RSS MiB {({k: round(v) for k, v in m['peak_rss_mib'].items()})}")
        out.append("")
    # Sittings written up by hand (one-off comparisons, the issue 16 runs) are kept as they are.
    try:
        old = open("bench/RESULTS.md").read()
        begin, end = old.index("<!-- measured: begin"), old.index("<!-- measured: end -->")
        out += [old[begin:end] + "<!-- measured: end -->", ""]
    except (OSError, ValueError):
        pass
    out += ["## What limits the figures (observations from these runs)", "",
            "- **The broker.** During ramps `top` showed tansu at ~100 % of a core while each `ddnn node` used a few",
            "  percent; tansu's sqlite engine costs a transaction per produce request and answers every fetch only",
            "  after its full max-wait (see ../shared/DEPENDENCIES.md). The dense pipeline saturates at the broker,",
            "  far below the 5,000 msg/s target; this is the test broker's limit, not the node's (ddnn's producer",
            "  keeps one request in flight per partition and batches what queues meanwhile; its consumer fetches",
            "  up to 4 MiB per request). With tansu's in-memory storage (`ramp-dense-memory`) the same pipeline",
            "  passes 5,000 msg/s; a real Kafka cluster is the deployment target.",
            "- **The relay on sqlite.** The null relay moves the 3 KB JSON input through all three hops, while the",
            "  elastic pipeline sends 94 % of the digits out at the edge and forwards 150-byte envelopes, so on the",
            "  sqlite broker the relay's load is several times higher and its saturation the lower of the two; on",
            "  the in-memory broker the relay is the faster, as expected of a floor.",
            "- **Elapsed vs schedule.** Each paper client waits for the broker's acknowledgement of every send before",
            "  sleeping, so elapsed = schedule + 400 acknowledgement round trips per client; the last exit follows",
            "  the last send by milliseconds (no backlog).",
            "- **CNN burst, elastic vs fixed p99.** The edge pool does scale to 2 workers, but the whole run is",
            "  broker-bound (the same ~600 msg/s ceiling), so p99 barely moves; p50 improves.",
            "- **Memory.** Dense-model tiers stay at 35-48 MiB. A CNN tier running 2 ONNX Runtime sessions peaks",
            "  at ~112 MiB (each session keeps its own arena for the 64-channel 28x28 activations).",
            ""]
    out += ["## Plots", "",
            "![RTT per exit tier, 5 clients](results/paper-5/rtt-boxplot.png)", "",
            "![RTT over time with workers, 5 clients, elastic](results/paper-5/timeline-elastic.png)", "",
            "![Burst timeline, mnist-cnn, elastic](results/burst-cnn/timeline-elastic.png)", ""]
    open("bench/RESULTS.md", "w").write("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
