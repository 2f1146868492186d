"""Model card figures, computed from the ONNX files and the held-out digits.

    .ddnn/pyenv/bin/python models/card.py            # print
    .ddnn/pyenv/bin/python models/card.py --write    # also rewrite the card section of models/README.md

For each model set: the accuracy of each exit alone on the 2,000 held-out digits; for each exit
rule of the node (inference/exit_rule.rs) and a few thresholds, the fraction exiting at each tier
and the overall accuracy (same rule and threshold at every tier; the last tier always exits):
  max-prob  exit when max(softmax) >= threshold (the paper's rule)
  entropy   exit when entropy(softmax) / ln(classes) <= threshold (BranchyNet's)
  margin    exit when top-1 minus top-2 probability >= threshold
and the per-sample inference time of each tier (batch 1, one thread).

Exit and accuracy figures do not depend on the machine; per-sample times do, and mean nothing on
a busy one. `--keep-timing` recomputes everything else and copies the timing tables from the
card already in models/README.md (as a previous run of this script wrote them) instead of
measuring.
"""
import argparse
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


def exits_here(rule, cmp, th, p):
    m, t = measure(rule, p), np.float32(th)
    return m >= t if cmp == ">=" else m <= t


def sessions(folder):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return [ort.InferenceSession(os.path.join(folder, f"{t}.onnx"), opts, providers=["CPUExecutionProvider"]) for t in TIERS]


def run_all(sess, x):
    """probs of every exit for every sample (each tier fed the previous tier's features)."""
    probs, inp = [], x
    for s in sess:
        out = dict(zip([o.name for o in s.get_outputs()], s.run(None, {s.get_inputs()[0].name: inp})))
        probs.append(out["probs"])
        inp = out.get("features")
    return probs


def per_sample_ms(sess, x, reps=200):
    out, inp = [], x[:1]
    for s in sess:
        name = s.get_inputs()[0].name
        s.run(None, {name: inp})
        t0 = time.perf_counter()
        for _ in range(reps):
            res = s.run(None, {name: inp})
        out.append((time.perf_counter() - t0) / reps * 1000)
        feats = dict(zip([o.name for o in s.get_outputs()], res)).get("features")
        inp = feats
    return out


TIMING_HEADER = "| tier | ms per sample (batch 1, 1 thread) |"


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


def card(folder, x, y, keep=None):
    sess = sessions(folder)
    probs = run_all(sess, x)
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
    lines += ["", TIMING_HEADER, "|---|---|"]
    lines += [f"| {t} | {m:.3f} |" for t, m in zip(TIERS, ms)]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--keep-timing", action="store_true", help="copy the timing tables from models/README.md")
    args = ap.parse_args()
    path = os.path.join(HERE, "README.md")
    keep = kept_timing(open(path).read()) if args.keep_timing else None
    raw = np.fromfile(os.path.join(HERE, "heldout.bin"), dtype=np.uint8).reshape(-1, 785)
    y, x = raw[:, 0], raw[:, 1:].reshape(-1, 1, 28, 28).astype(np.float32)
    text = "\n\n".join(card(os.path.join(HERE, s), x, y, keep) for s in ["mnist", "mnist-cnn"])
    how = "--write --keep-timing` (timing tables kept from the previous run)" if args.keep_timing else "--write`"
    text = f"Held-out digits: {len(y)}. Generated by `.ddnn/pyenv/bin/python models/card.py {how}.\n\n" + text
    print(text)
    if args.write:
        doc = open(path).read()
        doc = re.sub(r"<!-- card:begin -->.*<!-- card:end -->", f"<!-- card:begin -->\n{text}\n<!-- card:end -->", doc, flags=re.S)
        open(path, "w").write(doc)


if __name__ == "__main__":
    main()
