"""A Kafka-ML user's client, unchanged, against a ddnn continuum whose tiers write exit_format =
"kafka-ml".

Usage: kafka_ml_client.py BROKER INPUT_TOPIC OUTPUT_TOPIC HELDOUT_BIN COUNT MODELS_DIR THRESHOLD

Sending is Kafka-ML's examples/MNIST_RAW_format/mnist_dataset_inference_example.py: each image's
raw uint8 bytes (`x_test[i].tobytes()`, 784 bytes), no key, no headers. Reading is Kafka-ML's
backend/automl/websockets.py (KafkaThread.run): a consumer in a fresh group, each value decoded
with `json.loads(msg.value().decode())["values"]` and classified by argmax.

For every output record it prints one JSON line:
  key, headers   as the record carries them (Kafka-ML's pods write no key and copy the input's
                 headers)
  label          the argmax Kafka-ML's reader computes
  reencoded      whether the value is byte for byte what a Kafka-ML pod would write for these
                 numbers: json.dumps({'values': float32_output.tolist()}).encode()
  tier, max_diff the reference cascade (the same ONNX files run here with onnxruntime, batch 1,
                 max(probs) >= THRESHOLD exits, the last tier always) whose output is nearest,
                 and the largest difference from it
  true_label     of the image it matched
"""
import json
import sys
import time
import uuid

import numpy as np
import onnxruntime as ort
from confluent_kafka import Consumer, Producer

broker, input_topic, output_topic, heldout, count, models, threshold = sys.argv[1:8]
count, threshold = int(count), float(threshold)
data = open(heldout, "rb").read()
images = [np.frombuffer(data[i * 785 + 1:(i + 1) * 785], np.uint8).reshape(28, 28) for i in range(count)]
labels = [data[i * 785] for i in range(count)]

# The reference: what each image's exit should carry.
sessions = [ort.InferenceSession(f"{models}/{t}.onnx", providers=["CPUExecutionProvider"])
            for t in ("edge", "fog", "cloud")]
reference = []
for i, image in enumerate(images):
    x = image.astype(np.float32).reshape(1, 1, 28, 28)
    for tier, s in zip(("edge", "fog", "cloud"), sessions):
        names = [o.name for o in s.get_outputs()]
        out = dict(zip(names, s.run(None, {s.get_inputs()[0].name: x})))
        probs = out["probs"][0]
        if tier == "cloud" or probs.max() >= threshold:
            reference.append((tier, probs, labels[i]))
            break
        x = out["features"]

producer = Producer({"bootstrap.servers": broker})
for image in images:
    producer.produce(input_topic, image.tobytes())
left = producer.flush(30)
if left:
    sys.exit(f"{left} records not delivered")

# websockets.py's consumer sets only bootstrap.servers and group.id (reading from the latest
# offset, for a live view); earliest here, so that no record produced before the subscription
# settles is missed.
consumer = Consumer({"bootstrap.servers": broker, "group.id": str(uuid.uuid4()),
                     "auto.offset.reset": "earliest"})
consumer.subscribe([output_topic])
unmatched = list(range(count))
seen = 0
deadline = time.time() + 60
while seen < count and time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is None or msg.error():
        continue
    seen += 1
    values = json.loads(msg.value().decode())["values"]
    label = max(range(len(values)), key=lambda i: values[i])  # websockets.py's __argmax
    as_f32 = np.array(values, np.float32)
    reencoded = json.dumps({"values": as_f32.tolist()}).encode() == msg.value()
    best = min(unmatched, key=lambda r: float(np.abs(reference[r][1] - as_f32).max()), default=None)
    line = {"key": None if msg.key() is None else msg.key().decode(errors="replace"),
            "headers": None if msg.headers() is None else [[k, v.decode(errors="replace")] for k, v in msg.headers()],
            "label": label, "reencoded": reencoded}
    if best is not None:
        unmatched.remove(best)
        tier, probs, true_label = reference[best]
        line.update(tier=tier, max_diff=float(np.abs(probs - as_f32).max()), true_label=true_label)
    print(json.dumps(line), flush=True)
consumer.close()
