#!/usr/bin/env python3
"""Probes the consumer-group APIs of a Kafka-protocol broker binary with librdkafka (confluent-kafka).

Starts BROKER_BIN (tansu's CLI: `broker --listener-url --advertised-listener-url --storage-engine`)
on a free loopback port with its data in a temp dir, runs each check against it, prints one
Markdown table row per check as it completes, then kills the broker (by PID) and removes the dir.

    .ddnn/pyenv/bin/python scripts/probe-groups.py ~/.cache/ddnn/tansu/bin/tansu
    .ddnn/pyenv/bin/python scripts/probe-groups.py ~/.cache/ddnn/nisshi/bin/nisshi --json out.json

Every figure is measured in the run: times from librdkafka's rebalance callbacks, generations
and JoinGroup rounds from librdkafka's own `cgrp` debug log (the JoinGroup responses it received).
A result is `yes`, `no`, or `error` (the client call failed: the detail says how).

(`probe-groups.py _member BROKER GROUP TOPIC SESSION_MS` is the subprocess member of the
session-expiry checks: it prints its JoinGroup responses and assignments as JSON lines.)
"""
import argparse
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid

try:
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic
except ImportError as e:  # pragma: no cover - environment problem, said plainly
    sys.exit(f"probe-groups: cannot import confluent_kafka ({e}); run scripts/setup.sh and use .ddnn/pyenv/bin/python")

PARTITIONS = 4
HEARTBEAT_MS = 1000
OFFSET_INVALID = -1001  # librdkafka: nothing committed
SYNC_RE = re.compile(r"SyncGroup response: (.*) \((\d+) bytes of MemberState data\)")
JOIN_RE = re.compile(
    r"JoinGroup response: GenerationId (-?\d+), Protocol (\S*), LeaderId (\S*?)( \(me\))?, "
    r"my MemberId (\S*), member metadata count (\d+): (.*)$"
)

CHILDREN = []  # subprocess members still alive, killed by PID on exit
LOG_DIR = None  # --member-logs: each member's librdkafka cgrp log is written there on close


def now():
    return time.monotonic()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProbeError(Exception):
    """The harness itself failed (not a finding about the broker)."""


# --- the broker --------------------------------------------------------------------------------


class Broker:
    """BROKER_BIN on a free port, data and log in a temp dir; `stop()` kills it by PID."""

    def __init__(self, binary, storage):
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="probe-groups-")
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log_path = os.path.join(self.dir, "broker.log")
        url = f"tcp://{self.addr}"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", storage]
        try:
            with open(self.log_path, "ab") as log:
                # A session of its own: a Ctrl-C in the terminal reaches only us, and we kill it.
                self.proc = subprocess.Popen(cmd, cwd=self.dir, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True)
        except OSError as e:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise ProbeError(f"cannot start {binary}: {e}") from e

    def log_tail(self, n=15):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout=30.0):
        deadline = now() + timeout
        last = None
        while now() < deadline:  # first a listener (librdkafka would log every refused connect)
            if self.proc.poll() is not None:
                raise ProbeError(f"broker exited with {self.proc.returncode}; its log:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError as e:
                last = e
                time.sleep(0.05)
        admin = AdminClient({"bootstrap.servers": self.addr}, logger=quiet_logger())
        while now() < deadline:
            if self.proc.poll() is not None:
                raise ProbeError(f"broker exited with {self.proc.returncode}; its log:\n{self.log_tail()}")
            try:
                admin.list_topics(timeout=2)
                return
            except KafkaException as e:
                last = e
                time.sleep(0.2)
        raise ProbeError(f"broker on {self.addr} not ready in {timeout:.0f} s ({last}); its log:\n{self.log_tail()}")

    def data_contains(self, needle):
        """Whether any file of the broker's dir other than its log holds these bytes."""
        for root, _, files in os.walk(self.dir):
            for name in files:
                path = os.path.join(root, name)
                if path == self.log_path:
                    continue
                try:
                    with open(path, "rb") as f:
                        if needle in f.read():
                            return True
                except OSError:
                    pass
        return False

    def stop(self, keep_dir=False):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if keep_dir:
            print(f"(broker dir kept: {self.dir})", file=sys.stderr)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def quiet_logger():
    """librdkafka's log of a client, dropped (the checks report what the calls returned)."""
    logger = logging.getLogger(f"probe.quiet.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    return logger


def create_topic(addr, topic, partitions=PARTITIONS):
    admin = AdminClient({"bootstrap.servers": addr}, logger=quiet_logger())
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)
    deadline = now() + 30
    while now() < deadline:
        md = admin.list_topics(topic, timeout=5).topics.get(topic)
        if md is not None and md.error is None and len(md.partitions) == partitions:
            return
        time.sleep(0.1)
    raise ProbeError(f"topic {topic} does not show {partitions} partitions in metadata after 30 s")


# --- one raw Kafka request (what librdkafka cannot be made to send) ------------------------------


class _Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        v = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return v[0]

    def string(self):
        n = self.take(">h")
        if n < 0:
            return None
        v = self.data[self.at:self.at + n].decode()
        self.at += n
        return v

    def bytes(self):
        n = self.take(">i")
        if n < 0:
            return None
        v = self.data[self.at:self.at + n]
        self.at += n
        return v


def _kstr(s):
    b = s.encode()
    return struct.pack(">h", len(b)) + b


def raw_request(addr, api_key, version, body, timeout=10):
    """Sends one non-flexible request (header v1) and returns the response body after the
    correlation id, or raises OSError/ConnectionError when the broker closes the connection."""
    host, port = addr.rsplit(":", 1)
    msg = struct.pack(">hhi", api_key, version, 7) + _kstr("probe-groups") + body
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(msg)) + msg)
        head = _recv(sock, 4)
        payload = _recv(sock, struct.unpack(">i", head)[0])
    corr = struct.unpack_from(">i", payload)[0]
    if corr != 7:
        raise ProbeError(f"response to correlation id {corr}, expected 7")
    return payload[4:]


def _recv(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed by the broker after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def describe_groups_v0(addr, group):
    """Kafka's classic DescribeGroups v0 (api key 15): (error, state, protocol type, protocol,
    [(member id, client id, partitions in its assignment)])."""
    r = _Reader(raw_request(addr, 15, 0, struct.pack(">i", 1) + _kstr(group)))
    n_groups = r.take(">i")
    if n_groups != 1:
        raise ProbeError(f"DescribeGroups answered {n_groups} groups for one")
    error, _, state, ptype, proto = r.take(">h"), r.string(), r.string(), r.string(), r.string()
    members = []
    for _ in range(r.take(">i")):
        member_id, client_id, _host, _metadata, assignment = r.string(), r.string(), r.string(), r.bytes(), r.bytes()
        members.append((member_id, client_id, _assigned_count(assignment)))
    return error, state, ptype, proto, members


def _assigned_count(assignment):
    """Partitions in a consumer-protocol assignment (version, [topic, [partition]], user data)."""
    if not assignment:
        return 0
    r = _Reader(assignment)
    r.take(">h")
    count = 0
    for _ in range(r.take(">i")):
        r.string()
        n = r.take(">i")
        r.at += 4 * n
        count += n
    return count


# --- a group member ------------------------------------------------------------------------------


class _Capture(logging.Handler):
    """Hands each librdkafka log line to `on_line`."""

    def __init__(self, on_line):
        super().__init__(logging.DEBUG)
        self.on_line = on_line

    def emit(self, record):
        self.on_line(record.getMessage())


def capture_logger(on_line):
    logger = logging.getLogger(f"probe.capture.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(_Capture(on_line))
    return logger


class Member:
    """A plain subscribing consumer (range assignor, no auto commit) that records what happens to it,
    from librdkafka's cgrp debug log (times as the log reaches poll(): within one poll round):
    `joins`: one dict per JoinGroup response (gen, leader_id, me, members listed, error, waited: s
    since the request); `syncs`: one dict per SyncGroup response (result, bytes);
    `assigns`: (t, partitions, generation) per assignment; `lost`: times partitions were lost."""

    def __init__(self, addr, group, topic, name, session_ms, **conf):
        self.name = name
        self.group = group
        self.joins = []
        self.syncs = []
        self.assigns = []
        self.lost = []
        self.errors = []
        self.log = []
        self.join_sent = None
        self.generation = None
        logger = capture_logger(self.on_log)
        config = {
            "bootstrap.servers": addr, "group.id": group, "client.id": name,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "session.timeout.ms": session_ms, "heartbeat.interval.ms": HEARTBEAT_MS,
            "partition.assignment.strategy": "range", "debug": "cgrp",
        }
        config.update(conf)
        self.c = Consumer(config, logger=logger)
        self.c.subscribe([topic], on_assign=self._assign, on_lost=self._lost)
        self.closed = False

    def on_log(self, text):
        t = now()
        self.log.append(f"{t:.3f} {text}")
        if 'Joining group "' in text:
            self.join_sent = t
        m = JOIN_RE.search(text)
        if m:
            j = {"t": t, "gen": int(m.group(1)), "leader_id": m.group(3), "me": m.group(5),
                 "leader": bool(m.group(4)), "members": int(m.group(6)), "error": m.group(7).strip(),
                 "waited": t - self.join_sent if self.join_sent is not None else float("nan")}
            j["ok"] = j["error"] in ("(no error)", "Success")
            self.joins.append(j)
            if j["ok"]:
                self.generation = j["gen"]
        m = SYNC_RE.search(text)
        if m:
            self.syncs.append({"t": t, "result": m.group(1), "bytes": int(m.group(2))})

    def _assign(self, consumer, parts):
        self.assigns.append((now(), sorted(p.partition for p in parts), self.generation))

    def _lost(self, consumer, parts):
        self.lost.append(now())

    def poll(self, timeout=0.02):
        if self.closed:
            return
        msg = self.c.poll(timeout)
        if msg is not None and msg.error():
            self.errors.append(str(msg.error()))

    def assignment(self):
        return sorted(p.partition for p in self.c.assignment())

    def ok_joins(self, since=0.0):
        return [j for j in self.joins if j["t"] >= since and j["ok"]]

    def rounds_since(self, since, dead_id=None):
        """What the member went through since `since`: each JoinGroup response (generation, who
        leads) and SyncGroup outcome, in order."""
        events = [(j["t"], f"join gen {j['gen']} " + (
            "error " + j["error"] if not j["ok"] else f"leader me, {j['members']} members listed" if j["leader"] else
            "leader = the killed member" if dead_id and j["leader_id"] == dead_id else "follower")) for j in self.joins
            if j["t"] >= since]
        events += [(x["t"], f"sync {x['result']}") for x in self.syncs if x["t"] >= since]
        events += [(a[0], f"assigned {a[1]}") for a in self.assigns if a[0] >= since]
        return ", ".join(e for _, e in sorted(events))

    def close(self):
        if not self.closed:
            self.c.close()
            self.closed = True
            if LOG_DIR:
                with open(os.path.join(LOG_DIR, f"{self.group}.{self.name}.log"), "w") as f:
                    f.write("\n".join(self.log) + "\n")


def poll_until(members, predicate, timeout):
    """Polls every member until predicate() holds; returns seconds taken, or None on timeout."""
    start = now()
    while now() - start < timeout:
        for m in members:
            m.poll()
        if predicate():
            return now() - start
    return None


def cover(members, partitions=PARTITIONS, all_nonempty=True):
    """Every member's assignment is known, they are disjoint and cover the topic, in one generation."""
    shares = [m.assignment() for m in members]
    if all_nonempty and any(not s for s in shares):
        return False
    flat = sorted(p for s in shares for p in s)
    gens = {m.generation for m in members}
    return flat == list(range(partitions)) and len(gens) == 1


def settle(members, seconds):
    """Keeps polling (heartbeats, late rebalances) for a while."""
    poll_until(members, lambda: False, seconds)


def shares(members):
    return " + ".join(f"{m.name}{m.assignment()}" for m in members)


def gen_of(members):
    return "/".join(str(m.generation) for m in members)


# --- the subprocess member (killed with SIGKILL by the expiry checks) ----------------------------


def run_member(addr, group, topic, session_ms):
    m = Member(addr, group, topic, "child", int(session_ms))
    seen_joins, seen_assigns = 0, 0
    while True:
        m.poll(0.05)
        for j in m.joins[seen_joins:]:
            print(json.dumps({"join": j["gen"], "leader": j["leader"], "me": j["me"], "ok": j["ok"]}), flush=True)
        for a in m.assigns[seen_assigns:]:
            print(json.dumps({"assigned": a[1], "generation": a[2]}), flush=True)
        seen_joins, seen_assigns = len(m.joins), len(m.assigns)


class Child:
    """`_member` in a subprocess; its JSON lines are collected by a thread."""

    def __init__(self, addr, group, topic, session_ms):
        self.lines = []
        cmd = [sys.executable, os.path.abspath(__file__), "_member", addr, group, topic, str(session_ms)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        CHILDREN.append(self.proc)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.lines.append(json.loads(line))
            except ValueError:
                pass

    def _last(self, key):
        got = [l for l in self.lines if key in l and l.get("ok", True)]
        return got[-1] if got else None

    def assignment(self):
        last = self._last("assigned")
        return last["assigned"] if last else None

    def generation(self):
        last = self._last("assigned")
        return last["generation"] if last else None

    def leader(self):
        last = self._last("join")
        return last["leader"] if last else None

    def member_id(self):
        last = self._last("join")
        return last["me"] if last else None

    def kill9(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc in CHILDREN:
            CHILDREN.remove(self.proc)


def kill_children():
    for p in list(CHILDREN):
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.wait()
        CHILDREN.remove(p)


# --- the checks ----------------------------------------------------------------------------------


class Probe:
    def __init__(self, broker, session_ms, trials, stagger):
        self.b = broker
        self.session_ms = session_ms
        self.trials = trials
        self.stagger = stagger
        self.state = {}  # what one check leaves to later ones (the committed group)

    def fresh(self, tag):
        suffix = uuid.uuid4().hex[:8]
        topic, group = f"probe.{tag}.{suffix}", f"probe.{tag}.{suffix}"
        create_topic(self.b.addr, topic)
        return topic, group

    def member(self, group, topic, name, session_ms=None, **conf):
        return Member(self.b.addr, group, topic, name, session_ms or self.session_ms, **conf)

    # JoinGroup/SyncGroup
    def split(self):
        topic, group = self.fresh("split")
        a, b = self.member(group, topic, "a"), self.member(group, topic, "b")
        try:
            t = poll_until([a, b], lambda: cover([a, b]), 60)
            if t is None:
                return False, f"no disjoint cover of {PARTITIONS} partitions by both in 60 s: {shares([a, b])}"
            ok = sorted(len(m.assignment()) for m in (a, b)) == [2, 2]
            return ok, f"{shares([a, b])}, generation {a.generation}, {t:.1f} s after subscribe"
        finally:
            a.close()
            b.close()

    # Heartbeat
    def heartbeat(self):
        topic, group = self.fresh("hb")
        a = self.member(group, topic, "a")
        try:
            if poll_until([a], lambda: a.assignment() == list(range(PARTITIONS)), 60) is None:
                return False, f"never assigned: {a.assignment()}"
            mid, gen, n_assign = a.c.memberid(), a.generation, len(a.assigns)
            hold = 3 * self.session_ms / 1000
            settle([a], hold)
            same = a.c.memberid() == mid and a.generation == gen and len(a.assigns) == n_assign and not a.lost
            return same, (f"{hold:.0f} s = 3 session timeouts ({self.session_ms} ms, heartbeat {HEARTBEAT_MS} ms): "
                          f"member id {'unchanged' if a.c.memberid() == mid else 'changed'}, generation {gen} -> "
                          f"{a.generation}, {len(a.assigns) - n_assign} further assignments, {len(a.lost)} lost")
        finally:
            a.close()

    # LeaveGroup
    def leave(self):
        topic, group = self.fresh("leave")
        # A session of 30 s: a move within 10 s cannot be a session expiry.
        session = 30000
        a, b = self.member(group, topic, "a", session), self.member(group, topic, "b", session)
        try:
            if poll_until([a, b], lambda: cover([a, b]), 60) is None:
                return False, f"no stable split to start from: {shares([a, b])}"
            gen = a.generation
            t0 = now()
            b.close()
            closed = now() - t0
            t = poll_until([a], lambda: a.assignment() == list(range(PARTITIONS)), 10)
            if t is None:
                return False, f"b closed; a still holds {a.assignment()} after 10 s (session 30 s)"
            return True, (f"a owned all {PARTITIONS} {closed + t:.2f} s after b's close() began "
                          f"(session 30 s, so not an expiry); generation {gen} -> {a.generation}")
        finally:
            a.close()
            b.close()

    def _committed_group(self):
        """A group with offsets committed by a member: p0 = 42 (with a metadata string), p1 = 7."""
        if "commit" not in self.state:
            topic, group = self.fresh("commit")
            md = f"probe-metadata-{uuid.uuid4().hex[:12]}"
            a = self.member(group, topic, "a")
            try:
                if poll_until([a], lambda: a.assignment() == list(range(PARTITIONS)), 60) is None:
                    raise ProbeError(f"commit: the member was never assigned: {a.assignment()}")
                offsets = [TopicPartition(topic, 0, 42, metadata=md), TopicPartition(topic, 1, 7)]
                result = a.c.commit(offsets=offsets, asynchronous=False)
                errs = [f"p{tp.partition}: {tp.error}" for tp in result or [] if tp.error]
            finally:
                a.close()
            reader = Consumer({"bootstrap.servers": self.b.addr, "group.id": group}, logger=quiet_logger())
            try:
                got = reader.committed([TopicPartition(topic, p) for p in range(3)], timeout=15)
            finally:
                reader.close()
            self.state["commit"] = (topic, group, errs, {tp.partition: tp for tp in got}, md)
        return self.state["commit"]

    # OffsetCommit + OffsetFetch
    def commit(self):
        topic, group, errs, got, _ = self._committed_group()
        seen = {p: got[p].offset for p in got}
        ok = not errs and seen == {0: 42, 1: 7, 2: OFFSET_INVALID}
        return ok, f"committed p0=42 p1=7; committed() read {seen}" + (f"; commit errors {errs}" if errs else "")

    def metadata(self):
        topic, group, errs, got, md = self._committed_group()
        back = got[0].metadata
        # Whether the broker kept the string at all: its bytes in the broker's data files (the log
        # excluded), which tells "not stored" from "stored but not served".
        stored = self.b.data_contains(md.encode())
        return back == md, (f"committed metadata {md!r} on p0; committed() read back {back!r}; the string "
                            f"{'is' if stored else 'is not'} in the broker's data files")

    def admin(self):
        """A client per check (one whose connection the broker dropped is not reused); checks keep
        it in a variable while they wait: a future is never completed once its client is gone."""
        return AdminClient({"bootstrap.servers": self.b.addr}, logger=quiet_logger())

    def admin_list_offsets(self):
        topic, group, _, _, _ = self._committed_group()
        req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(3)])
        admin = self.admin()
        res = admin.list_consumer_group_offsets([req], request_timeout=20)[group].result(timeout=30)
        seen = {tp.partition: tp.offset for tp in res.topic_partitions}
        md = {tp.partition: tp.metadata for tp in res.topic_partitions if tp.partition == 0}
        return seen == {0: 42, 1: 7, 2: OFFSET_INVALID}, f"read {seen} (p0 metadata {md.get(0)!r})"

    def admin_describe(self):
        topic, group = self.fresh("describe")
        a, b = self.member(group, topic, "a"), self.member(group, topic, "b")
        try:
            if poll_until([a, b], lambda: cover([a, b]), 60) is None:
                return False, f"no stable split to describe: {shares([a, b])}"
            # librdkafka's protocol log says which request it sent (DescribeGroups or KIP-848's
            # ConsumerGroupDescribe, which librdkafka prefers when the broker offers it).
            sent = []
            logger = capture_logger(lambda text: sent.extend(re.findall(r"Sent (\w*Describe\w*)Request \(v(\d+)", text)))
            admin = AdminClient({"bootstrap.servers": self.b.addr, "debug": "protocol"}, logger=logger)
            futures = admin.describe_consumer_groups([group], request_timeout=10)
            # Poll the members while the AdminClient waits, so that they stay in the group.
            deadline = now() + 15
            while not futures[group].done() and now() < deadline:
                a.poll()
                b.poll()
                admin.poll(0)
            admin.poll(0)
            via = ", ".join(f"{api} v{v}" for api, v in sent) or "(request not seen in the log)"
            d = _result(futures[group], 0.1)
            if isinstance(d, Exception):
                return None, f"describe_consumer_groups (sent {via}) failed: {type(d).__name__} {d}"
            members = sorted(len(m.assignment.topic_partitions) for m in d.members)
            ok = str(d.state).endswith("STABLE") and len(d.members) == 2 and members == [2, 2]
            return ok, (f"sent {via}; answer: state {d.state}, {len(d.members)} members (2 in the group), "
                        f"partition_assignor {d.partition_assignor!r}, partitions per member {members}")
        finally:
            a.close()
            b.close()

    # The classic DescribeGroups itself (what kafka-consumer-groups.sh --describe --members and most
    # clients other than librdkafka >= 2.x send).
    def describe_groups(self):
        topic, group = self.fresh("describe0")
        a, b = self.member(group, topic, "a"), self.member(group, topic, "b")
        try:
            if poll_until([a, b], lambda: cover([a, b]), 60) is None:
                return False, f"no stable split to describe: {shares([a, b])}"
            box = {}
            t = threading.Thread(target=lambda: box.update(r=_call(describe_groups_v0, self.b.addr, group)))
            t.start()
            while t.is_alive():
                a.poll()
                b.poll()
            if isinstance(box["r"], Exception):
                return None, f"DescribeGroups v0 failed: {type(box['r']).__name__}: {box['r']}"
            error, state, ptype, proto, members = box["r"]
            ids = sorted(m[0] for m in members)
            right_ids = ids == sorted([a.c.memberid(), b.c.memberid()])
            counts = sorted(m[2] for m in members)
            ok = error == 0 and state == "Stable" and proto == "range" and right_ids and counts == [2, 2]
            return ok, (f"error {error}, state {state!r}, protocol {ptype!r}/{proto!r}, {len(members)} members "
                        f"({'the right ids' if right_ids else 'ids differ'}), client ids "
                        f"{sorted(m[1] for m in members)}, partitions in their assignments {counts}")
        finally:
            a.close()
            b.close()

    def admin_list_groups(self):
        topic, group, _, _, _ = self._committed_group()
        admin = self.admin()
        res = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
        mine = [g for g in res.valid if g.group_id == group]
        detail = f"{len(res.valid)} groups listed, {len(res.errors)} errors"
        if mine:
            detail += f"; ours with state {mine[0].state}"
        return bool(mine), detail

    def admin_alter(self):
        topic, group, _, _, _ = self._committed_group()  # empty: its member closed
        req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 5)])
        admin = self.admin()
        res = admin.alter_consumer_group_offsets([req], request_timeout=20)[group].result(timeout=30)
        errs = [str(tp.error) for tp in res.topic_partitions if tp.error]
        reader = Consumer({"bootstrap.servers": self.b.addr, "group.id": group}, logger=quiet_logger())
        try:
            after = reader.committed([TopicPartition(topic, 0)], timeout=15)[0].offset
        finally:
            reader.close()
        return not errs and after == 5, f"moved p0 42 -> 5 on the empty group; committed() then read {after}" + (
            f"; errors {errs}" if errs else "")

    def admin_delete(self):
        topic, group, _, _, _ = self._committed_group()
        admin = self.admin()
        res = _result(admin.delete_consumer_groups([group], request_timeout=10)[group], 15)
        if isinstance(res, Exception):
            return None, f"delete_consumer_groups failed: {res}"
        listed = admin.list_consumer_groups(request_timeout=10).result(timeout=15)
        still_listed = any(g.group_id == group for g in listed.valid)
        reader = Consumer({"bootstrap.servers": self.b.addr, "group.id": group}, logger=quiet_logger())
        try:
            left = {tp.partition: tp.offset for tp in reader.committed(
                [TopicPartition(topic, p) for p in range(2)], timeout=15)}
        finally:
            reader.close()
        gone = not still_listed and set(left.values()) == {OFFSET_INVALID}
        return gone, (f"delete answered ok; the group is {'still' if still_listed else 'no longer'} listed; "
                      f"committed offsets afterwards {left}")

    def _start_with_child(self, tag, others, child_first=True):
        """A group of a subprocess member and `others` in-process members; the child joins first
        (on these brokers the first member leads) or last. Returns once all share the partitions
        in one generation."""
        topic, group = self.fresh(tag)
        live = []

        def start_child():
            child = Child(self.b.addr, group, topic, self.session_ms)
            deadline = now() + 60
            while child.assignment() is None and now() < deadline:
                for m in live:
                    m.poll()
                time.sleep(0.01)
            return child
        child = start_child() if child_first else None
        for i in range(others):
            live.append(self.member(group, topic, chr(ord("a") + i)))
        if not child_first:
            poll_until(live, lambda: all(m.assignment() for m in live), 60)
            child = start_child()

        def settled():
            ch = child.assignment()
            if not ch or any(m.generation != child.generation() for m in live):
                return False
            return sorted([p for m in live for p in m.assignment()] + ch) == list(range(PARTITIONS))
        ok = poll_until(live, settled, 60) is not None
        return topic, group, child, live, ok

    # Session expiry: a member killed with SIGKILL (no LeaveGroup).
    def expiry(self, survivors, child_first=True):
        topic, group, child, live, ok = self._start_with_child(f"expiry{survivors}", survivors, child_first)
        try:
            if not ok:
                return False, (f"no stable group of {survivors + 1} to start from: {shares(live)}, child "
                               f"{child.assignment()} gen {child.generation()}")
            before = gen_of(live)
            dead = child.member_id()
            was = f"killed member: share {child.assignment()}, {'leader' if child.leader() else 'follower'}"
            wait = self.session_ms / 1000 + 60
            t_kill = now()
            child.kill9()
            t = poll_until(live, lambda: cover(live), wait)
            rounds = "; ".join(f"{m.name}: {m.rounds_since(t_kill, dead) or 'nothing'}" for m in live)
            gens = f"generation {before} -> {gen_of(live)}"
            if t is None:
                return False, (f"{was}. {wait:.0f} s after the kill (session {self.session_ms / 1000:.0f} s) the "
                               f"survivors still hold {shares(live)}: its partitions unowned; {gens}. Since the "
                               f"kill: {rounds}")
            first = min((a[0] for m in live for a in m.assigns if a[0] >= t_kill), default=t_kill) - t_kill
            return True, (f"{was}. Survivors own all partitions {t:.1f} s after the kill (session "
                          f"{self.session_ms / 1000:.0f} s; first reassignment at {first:.1f} s): {shares(live)}; "
                          f"{gens}. Since the kill: {rounds}")
        finally:
            child.kill9()
            for m in live:
                m.close()

    def expiry1(self):
        return self.expiry(1)

    def expiry2(self):
        return self.expiry(2)

    def expiry_follower(self):
        return self.expiry(1, child_first=False)

    # Does JoinGroup wait for the other members (up to the rebalance timeout)?
    def join_wait(self):
        results = []
        for i in range(self.trials):
            topic, group = self.fresh("joinwait")
            a = self.member(group, topic, "a")
            b = None
            try:
                poll_until([a], lambda: False, self.stagger)
                b = self.member(group, topic, "b")
                t = poll_until([a, b], lambda: cover([a, b]), 60)
                settle([a, b], 2)  # late rounds, if any
                joins = {m.name: [(j["gen"], j["members"], round(j["waited"], 1)) for j in m.ok_joins()]
                         for m in (a, b)}
                assigns = {m.name: len(m.assigns) for m in (a, b)}
                results.append((t, joins, assigns))
            finally:
                a.close()
                if b is not None:
                    b.close()
        one_round = all(r[0] is not None and all(n == 1 for n in r[2].values()) and
                        all(len(js) == 1 for js in r[1].values()) for r in results)
        parts = []
        for t, joins, assigns in results:
            took = f"stable {t:.1f} s after b subscribed" if t is not None else "no cover in 60 s"
            parts.append(f"[{took}; JoinGroup responses (gen, members listed, s waited) a {joins['a']} "
                         f"b {joins['b']}; assignments a {assigns['a']} b {assigns['b']}]")
        return one_round, (f"{self.trials} trials, b subscribed {self.stagger:.1f} s after a (only the leader's "
                           f"response lists members): " + " ".join(parts))

    # tansu's stale plan: a new member joins while the dead leader is still in the group.
    def dead_leader(self):
        topic, group, child, live, ok = self._start_with_child("deadleader", 1)
        try:
            if not ok:
                return False, f"no stable pair to start from: {shares(live)}, child {child.assignment()}"
            if not child.leader():
                return None, "the first member (to be killed) was not made leader: scenario not reached"
            dead = child.member_id()
            wait = self.session_ms / 1000 + 60
            t_kill = now()
            child.kill9()
            c = self.member(group, topic, "c")
            live.append(c)
            t = poll_until(live, lambda: cover(live), wait)
            c_first = next((a for a in c.assigns if a[1]), None)
            first = (f"c's first non-empty share {c_first[1]} {c_first[0] - t_kill:.1f} s after the kill"
                     if c_first else "c never got a partition")
            rounds = "; ".join(f"{m.name}: {m.rounds_since(t_kill, dead) or 'nothing'}" for m in live)
            if t is None:
                return False, (f"leader killed, c subscribed at once: {first}; no cover {wait:.0f} s later: "
                               f"{shares(live)}. Since the kill: {rounds}")
            return True, (f"leader killed, c subscribed at once: {first}; a and c own all {t:.1f} s after the "
                          f"kill (session {self.session_ms / 1000:.0f} s): {shares(live)}. Since the kill: {rounds}")
        finally:
            child.kill9()
            for m in live:
                m.close()


def _call(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # the finding is that it failed, and how
        return e


def _result(future, timeout):
    try:
        return future.result(timeout=timeout)
    except Exception as e:  # the finding is that it failed, and how
        return e


CHECKS = [
    ("split", "JoinGroup/SyncGroup: two plain consumers split 4 partitions"),
    ("heartbeat", "Heartbeat keeps a lone member for 3 session timeouts"),
    ("leave", "LeaveGroup on close() rebalances the other member"),
    ("commit", "OffsetCommit + OffsetFetch round trip (committed())"),
    ("metadata", "commit metadata preserved"),
    ("admin_list_offsets", "AdminClient list_consumer_group_offsets"),
    ("admin_describe", "AdminClient describe_consumer_groups"),
    ("describe_groups", "DescribeGroups v0, a raw request (the classic API)"),
    ("admin_list_groups", "AdminClient list_consumer_groups"),
    ("admin_alter", "AdminClient alter_consumer_group_offsets"),
    ("admin_delete", "AdminClient delete_consumer_groups"),
    ("expiry1", "session expiry: the leader killed (kill -9), one survivor"),
    ("expiry2", "session expiry: the leader of three killed, two survivors"),
    ("expiry_follower", "session expiry: a follower killed, the leader survives"),
    ("join_wait", "JoinGroup waits for the other members (one round)"),
    ("dead_leader", "new member joins while the dead leader is still in the group"),
]


def version_of(binary):
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        return "(no --version)"


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "_member":
        if len(sys.argv) != 6:
            sys.exit("usage: probe-groups.py _member BROKER GROUP TOPIC SESSION_MS")
        run_member(*sys.argv[2:6])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("broker_bin", help="broker binary with tansu's CLI (tansu, nisshi)")
    ap.add_argument("--storage", default="sqlite://probe.db",
                    help="--storage-engine, relative to the broker's temp dir (default %(default)s)")
    ap.add_argument("--session-ms", type=int, default=6000,
                    help="session.timeout.ms of the members (default %(default)s)")
    ap.add_argument("--trials", type=int, default=3, help="runs of the join_wait check (default %(default)s)")
    ap.add_argument("--join-stagger-ms", type=int, default=500,
                    help="join_wait: the second consumer subscribes this long after the first (default %(default)s)")
    ap.add_argument("--checks", default=",".join(c for c, _ in CHECKS),
                    help="comma-separated subset of: " + ", ".join(c for c, _ in CHECKS))
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--keep-dir", action="store_true", help="keep the broker's temp dir (its log) for a look")
    ap.add_argument("--member-logs", metavar="DIR", help="write each member's librdkafka cgrp log into DIR")
    args = ap.parse_args()
    global LOG_DIR
    if args.member_logs:
        os.makedirs(args.member_logs, exist_ok=True)
        LOG_DIR = args.member_logs

    binary = os.path.expanduser(args.broker_bin)
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        ap.error(f"{binary}: not an executable file")
    wanted = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in dict(CHECKS)]
    if unknown:
        ap.error(f"unknown check(s) {unknown}; known: {[c for c, _ in CHECKS]}")

    def on_term(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)

    version = version_of(binary)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"# {binary} ({version}), storage {args.storage}, session.timeout.ms {args.session_ms}, "
          f"librdkafka {__import__('confluent_kafka').libversion()[0]}, {started}")
    try:
        broker = Broker(binary, args.storage)
    except ProbeError as e:
        print(f"probe-groups: {e}", file=sys.stderr)
        return 1
    results = []
    try:
        broker.wait_ready()
        probe = Probe(broker, args.session_ms, args.trials, args.join_stagger_ms / 1000)
        print("| check | what | result | measured |\n|---|---|---|---|", flush=True)
        for name, what in CHECKS:
            if name not in wanted:
                continue
            t0 = now()
            try:
                ok, detail = getattr(probe, name)()
                result = {True: "yes", False: "no", None: "error"}[ok]
            except ProbeError:
                raise
            except Exception as e:  # a client call that failed is a finding about the broker
                result, detail = "error", f"{type(e).__name__}: {e}"
            finally:
                kill_children()
            if broker.proc.poll() is not None:
                detail += f" (the broker exited with {broker.proc.returncode}; log: {broker.log_tail(5)!r})"
            results.append({"check": name, "what": what, "result": result, "detail": detail,
                            "seconds": round(now() - t0, 1)})
            print(f"| {name} | {what} | {result} | {detail} |", flush=True)
            if broker.proc.poll() is not None:
                raise ProbeError("the broker died; the remaining checks were not run")
    except ProbeError as e:
        print(f"probe-groups: {e}", file=sys.stderr)
        return 1
    finally:
        kill_children()
        broker.stop(keep_dir=args.keep_dir)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"broker": binary, "version": version, "storage": args.storage,
                           "session_ms": args.session_ms, "started": started, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
