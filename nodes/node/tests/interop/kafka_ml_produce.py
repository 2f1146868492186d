"""Sends held-out digits the way Kafka-ML's inference clients do, for tests/inputs.rs.

Kafka-ML's client (examples/MNIST_RAW_format/mnist_dataset_inference_example.py in
github.com/ertis-research/kafka-ml) sends one record per sample, value = numpy's `tobytes()` of
the [28, 28] image, no key, no headers:

    producer.send(INPUT_TOPIC, x_test[i].tobytes())

(datasources/raw_sink.py sends `data.tobytes()` the same way.) This does the same with
confluent-kafka, after `astype(DATA_TYPE)` (the EUROSAT example sends float32 this way).

Usage:
  kafka_ml_produce.py BROKER TOPIC HELDOUT_BIN DATA_TYPE COUNT
      COUNT digits to partition 0, then one record one byte short of a digit
Prints the number of records sent.
"""
import sys

import numpy as np
from confluent_kafka import Producer

broker, topic, heldout, data_type, count = sys.argv[1:6]
count = int(count)
# heldout.bin: 785-byte records, the label then 784 pixels; as Keras' x_test: uint8 [N, 28, 28].
records = np.frombuffer(open(heldout, "rb").read(), dtype=np.uint8).reshape(-1, 785)
x_test = records[:, 1:].reshape(-1, 28, 28)

p = Producer({"bootstrap.servers": broker, "linger.ms": 0})
for i in range(count):
    p.produce(topic, x_test[i].astype(data_type).tobytes(), partition=0)
p.produce(topic, x_test[0].astype(data_type).tobytes()[:-1], partition=0)
left = p.flush(30)
if left:
    sys.exit(f"{left} records not delivered")
print(count + 1)
