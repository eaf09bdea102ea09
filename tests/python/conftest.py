"""Fixtures that start real `mvllm` processes on loopback ephemeral ports."""

import os
import pathlib
import subprocess
import threading
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BINARY = os.environ.get("MVLLM_BIN", str(ROOT / "target" / "debug" / "mvllm"))


class Process:
    """A running `mvllm` subcommand whose first stdout line names its URL."""

    def __init__(self, args, ready=None):
        """`ready` decides from the /health body whether the process is ready (default: 200)."""
        self.proc = subprocess.Popen(
            [BINARY, *args],
            stdout=subprocess.PIPE,
            stderr=None,
            env={**os.environ, "RUST_LOG": "warn"},
            text=True,
        )
        line = self.proc.stdout.readline()
        urls = [w for w in line.split() if w.startswith("http://")]
        if not urls:
            self.proc.kill()
            raise RuntimeError(f"{BINARY} {args} printed no address: {line!r}")
        self.url = urls[0]
        # Keep draining stdout so the process never blocks on a full pipe.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        self._wait_ready(ready)

    def _wait_ready(self, ready):
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    body = r.read().decode()
                    if r.status == 200 and (ready is None or ready(body)):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.url} never became healthy")
            time.sleep(0.02)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def sim():
    p = Process(
        [
            "sim", "--host", "127.0.0.1", "--port", "0",
            "--served-model-name", "sim-model",
            "--itl-ms", "1", "--max-model-len", "512",
            "--embedding-dim", "16", "--api-key", "sk-test",
        ]
    )
    yield p
    p.stop()
