"""A Kafka-ML user's client, unchanged, against a ddnn continuum whose tiers write exit_format =
"kafka-ml". Needs only confluent-kafka.

Usage: kafka_ml_client.py BROKER INPUT_TOPIC OUTPUT_TOPIC HELDOUT_BIN COUNT

Sending is Kafka-ML's examples/MNIST_RAW_format/mnist_dataset_inference_example.py: each image's
raw uint8 bytes (`x_test[i].tobytes()`: 784 bytes, row-major), no key, no headers. Reading is
Kafka-ML's backend/automl/websockets.py (KafkaThread.run): a consumer in a fresh group, each
value decoded with `json.loads(msg.value().decode())["values"]` and classified by its argmax.

For every output record it prints one JSON line:
  key, headers  as the record carries them (Kafka-ML's pods write no key and copy the input's
                headers)
  values        the decoded values; label: the argmax Kafka-ML's reader computes
  reencoded     whether the value is byte for byte what a Kafka-ML pod writes for these numbers:
                json.dumps({'values': output.tolist()}).encode() with output a float32 array
                (tolist widens each float32 to a Python float; struct does the same here)
"""
import json
import struct
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer

broker, input_topic, output_topic, heldout, count = sys.argv[1:6]
count = int(count)
data = open(heldout, "rb").read()

producer = Producer({"bootstrap.servers": broker})
for i in range(count):
    producer.produce(input_topic, data[i * 785 + 1:(i + 1) * 785])
left = producer.flush(30)
if left:
    sys.exit(f"{left} records not delivered")


def as_float32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


# websockets.py's consumer sets only bootstrap.servers and group.id (reading from the latest
# offset, for a live view); earliest here, so that no record produced before the subscription
# settles is missed.
consumer = Consumer({"bootstrap.servers": broker, "group.id": str(uuid.uuid4()),
                     "auto.offset.reset": "earliest"})
consumer.subscribe([output_topic])
seen = 0
deadline = time.time() + 60
while seen < count and time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is None or msg.error():
        continue
    seen += 1
    values = json.loads(msg.value().decode())["values"]
    label = max(range(len(values)), key=lambda i: values[i])  # websockets.py's __argmax
    reencoded = json.dumps({"values": [as_float32(v) for v in values]}).encode() == msg.value()
    headers = msg.headers()
    print(json.dumps({"key": None if msg.key() is None else msg.key().decode(errors="replace"),
                      "headers": None if headers is None else [[k, v.decode(errors="replace")] for k, v in headers],
                      "values": values, "label": label, "reencoded": reencoded}), flush=True)
consumer.close()
