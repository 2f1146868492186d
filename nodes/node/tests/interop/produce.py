"""Produces records the way other Kafka clients do (confluent-kafka / librdkafka), for tests.

Usage:
  produce.py BROKER TOPIC PARTITION HELDOUT_BIN poison         one record with an out-of-range
      timestamp (2**62 ms), then 5 held-out digits, then one record that is not JSON, each in a
      batch of its own
  produce.py BROKER TOPIC PARTITION HELDOUT_BIN CODEC COUNT    COUNT digits in batches
      compressed with CODEC (gzip, lz4, snappy, zstd)
Prints one JSON line per record sent: {"key", "kind"} (kind: digit, bad-timestamp, garbage).
"""
import json
import sys
import time
import uuid

from confluent_kafka import Producer

broker, topic, partition, heldout, mode = sys.argv[1:6]
partition = int(partition)
data = open(heldout, "rb").read()


def digit(i):
    rec = data[i * 785:(i + 1) * 785]
    return json.dumps([[list(rec[1 + r * 28:1 + (r + 1) * 28]) for r in range(28)]]).encode()


def send(p, key, value, kind, **kw):
    p.produce(topic, key=key.encode(), value=value, partition=partition,
              headers=[("X-INFERENCE-TS", repr(time.time()).encode())], **kw)
    print(json.dumps({"key": key, "kind": kind}))


if mode == "poison":
    p = Producer({"bootstrap.servers": broker, "linger.ms": 0})
    send(p, f"badts-{uuid.uuid4()}", digit(0), "bad-timestamp", timestamp=2 ** 62)
    p.flush(30)
    for i in range(5):
        send(p, f"digit-{uuid.uuid4()}", digit(i + 1), "digit")
        p.flush(30)
    send(p, f"garbage-{uuid.uuid4()}", b"\x00\x01 not json at all", "garbage")
    left = p.flush(30)
else:
    codec, count = mode, int(sys.argv[6])
    p = Producer({"bootstrap.servers": broker, "compression.type": codec, "linger.ms": 50,
                  "batch.num.messages": 10})
    for i in range(count):
        send(p, f"{codec}-{uuid.uuid4()}", digit(i), "digit")
    left = p.flush(30)
if left:
    sys.exit(f"{left} records not delivered")
