"""Model card figures and calibration tables, computed from the ONNX files and the held-out digits.

    .ddnn/pyenv/bin/python models/card.py            # print
    .ddnn/pyenv/bin/python models/card.py --write    # also rewrite the card section of models/README.md
                                                     # and every models/<set>/calibration.json

For each model set: the accuracy of each exit alone on the 2,000 held-out digits; for each exit
rule of the node (inference/exit_rule.rs) and a few thresholds, the fraction exiting at each tier
and the overall accuracy (same rule and threshold at every tier; the last tier always exits):
  max-prob  exit when max(softmax) >= threshold (the paper's rule)
  entropy   exit when entropy(softmax) / ln(classes) <= threshold (BranchyNet's)
  margin    exit when top-1 minus top-2 probability >= threshold
and the time per sample of each tier at batch 1, 8 and 32 (ONNX Runtime, one thread).

Calibration table (models/<set>/calibration.json), for choosing a tier's threshold on its own
(an SLO-driven controller): for every tier but the last, every rule and a grid of thresholds,
over ALL held-out digits as if every one of them reached that tier (so no figure depends on
another tier's threshold):
  exit_fraction  share of the digits whose probabilities at this tier pass the rule
                 (measured exactly as `measure` below, float32 like the node);
  accuracy       end-to-end accuracy when those exit here with this tier's top-1 and every
                 other digit is answered by the last tier's top-1;
  exit_accuracy  accuracy of the exiting digits alone (null when none exits).
Thresholds: CALIBRATION_GRID plus the card's thresholds, sorted; figures rounded to 4 decimals.
  {"set": "mnist-resnet", "heldout": 2000, "last_tier": "cloud",
   "tiers": {"edge": {"max-prob": [{"threshold": 0.8, "exit_fraction": 0.93, "accuracy": 0.975,
                                    "exit_accuracy": 0.99}, ...],
                      "margin": [...], "entropy": [...]},
             "fog": {...}}}
nodes/node/tests/model_card.rs recomputes every entry with the node's own exit-rule code.

Exit, accuracy and calibration figures do not depend on the machine; per-sample times do. They
are the CPU time of the thread that runs the session (ONNX Runtime with one intra-op thread runs
the graph on the caller's thread), median of several rounds, so that other work on a shared
machine does not inflate them; on an idle core wall-clock time is the same. `--keep-timing`
recomputes everything else and copies the timing tables from the card already in
models/README.md (as a previous run of this script wrote them) instead of measuring.
"""
import argparse
import json
import os
import re
import time

import numpy as np
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
TIERS = ["edge", "fog", "cloud"]
# (rule, comparison, thresholds): max-prob's are the card's historical ones; the others span
# similar shares of early exits on these models.
RULES = [
    ("max-prob", ">=", [0.5, 0.65, 0.8, 0.9]),
    ("entropy", "<=", [0.05, 0.1, 0.2, 0.3, 0.5]),
    ("margin", ">=", [0.3, 0.5, 0.7, 0.9]),
]


def measure(rule, p):
    """What the rule measures per sample, in float32 like the node (which sums entropy in f64)."""
    if rule == "max-prob":
        return p.max(1)
    if rule == "margin":
        top = np.sort(p, axis=1)
        return top[:, -1] - top[:, -2]
    p64 = p.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p64 > 0, p64 * np.log(p64), 0.0).sum(1)
    return (h / np.log(p.shape[1])).astype(np.float32)


SETS = ["mnist", "mnist-cnn", "mnist-resnet"]
BATCHES = [1, 8, 32]
# Calibration thresholds (besides the card's): 0.00..1.00 in steps of 0.05, and 0.99 for the
# probability rules.
STEPS = [round(0.05 * i, 2) for i in range(21)]
CALIBRATION_GRID = {"max-prob": STEPS + [0.99], "margin": STEPS + [0.99], "entropy": STEPS}


def exits_here(rule, cmp, th, p):
    m, t = measure(rule, p), np.float32(th)
    return m >= t if cmp == ">=" else m <= t


def sessions(folder):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return [ort.InferenceSession(os.path.join(folder, f"{t}.onnx"), opts, providers=["CPUExecutionProvider"]) for t in TIERS]


def run_all(sess, x, batch=32):
    """probs of every exit for every sample (each tier fed the previous tier's features), in
    batches of 32 digits as nodes/node/tests/model_card.rs runs them."""
    chunks = []
    for i in range(0, len(x), batch):
        probs, inp = [], x[i:i + batch]
        for s in sess:
            out = dict(zip([o.name for o in s.get_outputs()], s.run(None, {s.get_inputs()[0].name: inp})))
            probs.append(out["probs"])
            inp = out.get("features")
        chunks.append(probs)
    return [np.concatenate([c[t] for c in chunks]) for t in range(len(sess))]


def thread_ms(run, rounds=5, min_s=0.1):
    """Median over `rounds` of the calling thread's CPU ms per call of `run` (each round calls it
    until at least `min_s` of CPU time has passed)."""
    run()
    per_call = []
    for _ in range(rounds):
        calls, t0 = 0, time.thread_time()
        while calls == 0 or time.thread_time() - t0 < min_s:
            run()
            calls += 1
        per_call.append((time.thread_time() - t0) / calls * 1000)
    return float(np.median(per_call))


def per_sample_ms(sess, x):
    """{batch: [ms per sample of each tier]}, each tier fed the previous tier's features of the
    same held-out digits."""
    out, inp = {b: [] for b in BATCHES}, x[:max(BATCHES)]
    for s in sess:
        name = s.get_inputs()[0].name
        for b in BATCHES:
            batch = np.ascontiguousarray(inp[:b])
            out[b].append(thread_ms(lambda: s.run(None, {name: batch})) / b)
        inp = dict(zip([o.name for o in s.get_outputs()], s.run(None, {name: inp}))).get("features")
    return out


TIMING_HEADER = "| tier | ms per sample, batch 1 | batch 8 | batch 32 |"


def kept_timing(doc):
    """{section title: timing table lines} from the card in models/README.md."""
    out, title = {}, None
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("### "):
            title = line
        elif line == TIMING_HEADER and title:
            table = [line]
            for rest in lines[i + 1:]:
                if not rest.startswith("|"):
                    break
                table.append(rest)
            out[title] = table
    return out


def card(folder, sess, probs, x, y, keep=None):
    title = f"### `{os.path.relpath(folder, os.path.dirname(HERE))}`"
    lines = [title, ""]
    lines += ["| exit alone | accuracy |", "|---|---|"]
    for t, p in zip(TIERS, probs):
        lines.append(f"| {t} | {100 * (p.argmax(1) == y).mean():.2f}% |")
    lines += ["", "| exit rule | exit at edge | exit at fog | exit at cloud | overall accuracy |", "|---|---|---|---|---|"]
    for rule, cmp, thresholds in RULES:
        for th in thresholds:
            exit_at = np.full(len(y), len(TIERS) - 1)
            for i in reversed(range(len(TIERS) - 1)):
                exit_at = np.where(exits_here(rule, cmp, th, probs[i]), i, exit_at)
            pred = np.choose(exit_at, [p.argmax(1) for p in probs])
            fr = [100 * (exit_at == i).mean() for i in range(len(TIERS))]
            lines.append(
                f"| `{rule} {cmp} {th}` | {fr[0]:.1f}% | {fr[1]:.1f}% | {fr[2]:.1f}% | {100 * (pred == y).mean():.2f}% |"
            )
    if keep is not None:
        if title not in keep:
            raise SystemExit(f"--keep-timing: no timing table for {title} in models/README.md")
        lines += [""] + keep[title]
        return "\n".join(lines)
    ms = per_sample_ms(sess, x)
    lines += ["", TIMING_HEADER, "|---|---|---|---|"]
    lines += [f"| {t} | " + " | ".join(f"{ms[b][i]:#.3g}" for b in BATCHES) + " |" for i, t in enumerate(TIERS)]
    return "\n".join(lines)


def calibration(folder, probs, y):
    """The calibration table of one set (module doc), as a dict ready for JSON."""
    last = probs[-1].argmax(1)
    tiers = {}
    for tier, p in zip(TIERS[:-1], probs[:-1]):
        here, table = p.argmax(1), {}
        for rule, cmp, card_thresholds in RULES:
            rows = []
            for th in sorted(set(CALIBRATION_GRID[rule]) | set(card_thresholds)):
                exits = exits_here(rule, cmp, th, p)
                answer = np.where(exits, here, last)
                rows.append({
                    "threshold": th,
                    "exit_fraction": round(float(exits.mean()), 4),
                    "accuracy": round(float((answer == y).mean()), 4),
                    "exit_accuracy": round(float((here[exits] == y[exits]).mean()), 4) if exits.any() else None,
                })
            table[rule] = rows
        tiers[tier] = table
    return {"set": os.path.basename(folder), "heldout": len(y), "last_tier": TIERS[-1], "tiers": tiers}


def calibration_json(table):
    """One threshold per line: readable, and diffs stay small."""
    lines = ["{", f'  "set": {json.dumps(table["set"])},', f'  "heldout": {table["heldout"]},',
             f'  "last_tier": {json.dumps(table["last_tier"])},', '  "tiers": {']
    tiers = list(table["tiers"].items())
    for ti, (tier, rules) in enumerate(tiers):
        lines.append(f"    {json.dumps(tier)}: {{")
        for ri, (rule, rows) in enumerate(rules.items()):
            lines.append(f"      {json.dumps(rule)}: [")
            lines += [f"        {json.dumps(r)}" + ("," if i + 1 < len(rows) else "") for i, r in enumerate(rows)]
            lines.append("      ]" + ("," if ri + 1 < len(rules) else ""))
        lines.append("    }" + ("," if ti + 1 < len(tiers) else ""))
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--keep-timing", action="store_true", help="copy the timing tables from models/README.md")
    args = ap.parse_args()
    path = os.path.join(HERE, "README.md")
    keep = kept_timing(open(path).read()) if args.keep_timing else None
    raw = np.fromfile(os.path.join(HERE, "heldout.bin"), dtype=np.uint8).reshape(-1, 785)
    y, x = raw[:, 0], raw[:, 1:].reshape(-1, 1, 28, 28).astype(np.float32)
    cards, tables = [], {}
    for name in SETS:
        folder = os.path.join(HERE, name)
        sess = sessions(folder)
        probs = run_all(sess, x)
        cards.append(card(folder, sess, probs, x, y, keep))
        tables[name] = calibration(folder, probs, y)
    text = "\n\n".join(cards)
    how = "--write --keep-timing` (timing tables kept from the previous run)" if args.keep_timing else "--write`"
    text = (f"Held-out digits: {len(y)}. Generated by `.ddnn/pyenv/bin/python models/card.py {how}. "
            "Times: CPU time of the thread running the session (ONNX Runtime, one intra-op thread) per "
            "digit, median of 5 rounds.\n\n" + text)
    print(text)
    if args.write:
        doc = open(path).read()
        doc = re.sub(r"<!-- card:begin -->.*<!-- card:end -->", f"<!-- card:begin -->\n{text}\n<!-- card:end -->", doc, flags=re.S)
        open(path, "w").write(doc)
        for name, table in tables.items():
            with open(os.path.join(HERE, name, "calibration.json"), "w") as f:
                f.write(calibration_json(table))


if __name__ == "__main__":
    main()
