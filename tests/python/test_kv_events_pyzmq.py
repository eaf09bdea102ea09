"""The router's own ZeroMQ sockets (src/kv_events/zmtp.rs) against libzmq, the library vLLM
publishes its KV cache events with (through pyzmq): a PUB socket sending messages a real vLLM
0.32 published (tests/fixtures/kv-events/), and a ROUTER socket answering replay requests the
way vLLM's publisher does."""

import json
import pathlib
import struct
import threading
import time
import urllib.request

import zmq

from conftest import Process

CAPTURE = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "kv-events" / "vllm-0.32-cpu"
END = (-1).to_bytes(8, "big", signed=True)


def captured(name):
    """The parts of one captured message: count, then (length, bytes) per part, big-endian."""
    data = (CAPTURE / name).read_bytes()
    count, offset = struct.unpack_from(">I", data)[0], 4
    parts = []
    for _ in range(count):
        length = struct.unpack_from(">I", data, offset)[0]
        parts.append(data[offset + 4: offset + 4 + length])
        offset += 4 + length
    return parts


class Publisher:
    """vLLM's publisher, in miniature: PUB for live messages, ROUTER for replays."""

    def __init__(self):
        self.context = zmq.Context()
        self.pub = self.context.socket(zmq.PUB)
        self.live_port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        self.router = self.context.socket(zmq.ROUTER)
        self.replay_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.sent = []  # (seq, payload)
        self.replays = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve_replays, daemon=True)
        self.thread.start()

    def publish(self, topic, payload):
        seq = len(self.sent)
        self.sent.append((seq, payload))
        self.pub.send_multipart([topic, seq.to_bytes(8, "big"), payload])

    def serve_replays(self):
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while not self.stop.is_set():
            if not poller.poll(50):
                continue
            identity, _, start = self.router.recv_multipart()
            start = int.from_bytes(start, "big")
            self.replays += 1
            for seq, payload in list(self.sent):
                if seq >= start:
                    self.router.send_multipart([identity, b"", seq.to_bytes(8, "big"), payload])
            self.router.send_multipart([identity, b"", END, b""])

    def close(self):
        self.stop.set()
        self.thread.join(timeout=5)
        self.context.destroy(linger=0)


def engine(router):
    with urllib.request.urlopen(router.url + "/load-stats", timeout=5) as r:
        stats = json.loads(r.read())
    kv = stats["servers"][0]["kv_events"]
    return kv["engines"][0] if kv and kv["engines"] else {}


def wait(what, check, limit=20):
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_the_router_follows_a_libzmq_publisher(tmp_path):
    publisher = Publisher()
    sim = Process(["sim", "--host", "127.0.0.1", "--port", "0", "--itl-ms", "1"])
    config = tmp_path / "servers.toml"
    config.write_text(
        "[servers]\nservers = [ { "
        f'url = "{sim.url}", kv_events = "tcp://127.0.0.1:{publisher.live_port}", '
        f'kv_events_replay = "tcp://127.0.0.1:{publisher.replay_port}" }} ]\n'
        "[config]\nmetrics_interval = 0.2\n[routing]\npolicy = \"cache-aware\"\n"
    )
    # Published before the router subscribes: only the replay can bring it.
    first = captured("msg-000.bin")
    publisher.publish(first[0], first[2])
    router = Process(["run", "--console", "--host", "127.0.0.1", "--port", "0",
                      "--config", str(config)])
    try:
        wait("the replay of what was published before", lambda: engine(router).get("messages_received") == 1)
        assert publisher.replays >= 1
        assert engine(router)["trusted"] is True
        assert engine(router)["complete_history"] is True
        # Live, through the PUB socket: new messages until some arrived. Any sent before the
        # subscription took hold at libzmq's end show up as a gap on the next one, and are
        # fetched from the ROUTER socket.
        second = captured("msg-001.bin")
        deadline = time.monotonic() + 20
        while engine(router).get("messages_received", 0) < 3:
            assert time.monotonic() < deadline, f"live messages never arrived: {engine(router)}"
            publisher.publish(second[0], second[2])
            time.sleep(0.1)
        state = engine(router)
        assert state["lost"] == 0 and state["malformed"] == 0, state
        assert state["gaps"] == state["replays"], state
        assert state["blocks"] > 0, state
    finally:
        router.stop()
        sim.stop()
        publisher.close()
