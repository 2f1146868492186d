"""Another Kafka client (confluent-kafka / librdkafka) talking to a ddnn continuum.

Usage: confluent_client.py BROKER INPUT_TOPIC EXIT_TOPIC HELDOUT_BIN COUNT
Produces COUNT held-out digits in the paper's JSON format (key, X-INFERENCE-TS header), then
reads the exit topic with a consumer group until every key was answered (or 60 s pass), and
prints one JSON line per exit record seen: {"key", "exit_tier", "label", "true_label", "headers"}.
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer

broker, input_topic, exit_topic, heldout, count = sys.argv[1:6]
count = int(count)
data = open(heldout, "rb").read()
producer = Producer({"bootstrap.servers": broker})
labels = {}
for i in range(count):
    rec = data[i * 785:(i + 1) * 785]
    key = f"confluent-{uuid.uuid4()}"
    labels[key] = rec[0]
    pixels = [[list(rec[1 + r * 28:1 + (r + 1) * 28]) for r in range(28)]]
    producer.produce(input_topic, key=key.encode(), value=json.dumps(pixels).encode(),
                     headers=[("X-INFERENCE-TS", repr(time.time()).encode()), ("x-client", b"confluent-kafka")])
left = producer.flush(30)
if left:
    sys.exit(f"{left} records not delivered")

consumer = Consumer({"bootstrap.servers": broker, "group.id": f"interop-{uuid.uuid4()}",
                     "auto.offset.reset": "earliest", "enable.auto.commit": False})
consumer.subscribe([exit_topic])
seen = set()
deadline = time.time() + 60
while len(seen) < count and time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is None or msg.error():
        continue
    key = (msg.key() or b"").decode()
    if key not in labels:
        continue
    seen.add(key)
    exit_record = json.loads(msg.value())
    print(json.dumps({"key": key, "exit_tier": exit_record["exit_tier"], "label": exit_record["label"],
                      "json_key": exit_record["key"], "true_label": labels[key],
                      "headers": {k: v.decode(errors="replace") for k, v in (msg.headers() or [])}}), flush=True)
consumer.close()
