"""An open-loop HTTP/1.1 load generator on plain asyncio streams.

Request ``i`` of a run is due at ``t0 + i / rate`` and leaves then, whatever
happened to the earlier ones: a pool of keep-alive connections carries them,
and when every connection is busy another is opened (up to a cap). Latency is
measured from the *scheduled* send time to the end of the response, so time a
request spends queued behind a stalled server counts (no coordinated
omission). A closed-loop client, which waits for each answer before the next
request, would record one slow request during a stall; this one records every
request that the stall delayed.

The client is deliberately small: one request writer, one response reader
(``Content-Length`` or chunked bodies), no client library in the measured path.

Examples
--------
>>> build_request("GET", "/healthz", "127.0.0.1:8000")
b'GET /healthz HTTP/1.1\\r\\nHost: 127.0.0.1:8000\\r\\n\\r\\n'
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable

import msgspec

from bench.common import percentile

#: A send this much after its scheduled time counts as late.
LATE_AFTER_S = 0.001
#: Error samples kept per run (status and the start of the body, or the exception).
ERROR_SAMPLES = 5


def build_request(
    method: str, path: str, host: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> bytes:
    """The bytes of one HTTP/1.1 request (keep-alive is HTTP/1.1's default)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class Response(msgspec.Struct):
    status: int
    body: bytes
    keep_alive: bool


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One response off a keep-alive connection: status line, headers, then the body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP response: {lines[0][:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    keep_alive = headers.get("connection", "").lower() != "close" and parts[0] != "HTTP/1.0"
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:  # the body runs to the end of the connection
        body = await reader.read()
        keep_alive = False
    return Response(status, body, keep_alive)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(chunks)
        chunks.append(await reader.readexactly(size))
        await reader.readexactly(2)


class _Connection:
    __slots__ = ("reader", "requests", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.requests = 0

    def close(self) -> None:
        self.writer.close()


class _Run:
    """What one run records."""

    def __init__(self, count_cached: bool, on_response=None):
        self.on_response = on_response
        self.latencies: list[float] = []
        self.send_lags: list[float] = []
        self.late_sends = 0
        self.waited_for_connection = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.count_cached = count_cached
        self.cached = 0
        self.ok = 0
        self.last_done = 0.0

    def error(self, sample: str) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES:
            self.error_samples.append(sample)


class OpenLoopClient:
    """Keep-alive connections to one server, shared by the runs made with it.

    Parameters
    ----------
    host, port
        The server.
    max_connections
        Most connections open at once; a request due when all are busy waits
        for one (and is counted as a late send, its wait counted in its latency).
    timeout_s
        A response slower than this is an error (the connection is dropped).
    """

    def __init__(self, host: str, port: int, *, max_connections: int = 256, timeout_s: float = 10.0):
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self._idle: collections.deque[_Connection] = collections.deque()
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._open = 0
        self.opened = 0

    async def run(
        self,
        make_request: Callable[[int], bytes],
        rate: float,
        seconds: float,
        *,
        count_cached: bool = False,
        drain_s: float | None = None,
        on_response: Callable[[int, float, float, Response], None] | None = None,
    ) -> dict:
        """Send ``rate * seconds`` requests at a fixed rate; return what was measured.

        ``make_request(i)`` gives the bytes of request ``i`` (see `build_request`).
        With ``count_cached`` each 2xx JSON body is checked for ``"cached": true``.
        Requests still out ``drain_s`` (default: the timeout) after the last send
        are given up and counted as errors. ``on_response(i, scheduled, done, response)``
        sees each answer (``perf_counter`` times), for what a caller follows per request.
        """
        if rate <= 0 or seconds <= 0:
            raise ValueError(f"rate and seconds must be > 0, got {rate} and {seconds}")
        total = max(1, int(rate * seconds))
        requests = [make_request(i) for i in range(total)]  # built before the clock starts
        run = _Run(count_cached, on_response)
        opened_before = self.opened
        tasks = set()
        clock = time.perf_counter
        t0 = clock() + 0.01
        i = 0
        while i < total:
            now = clock()
            # Everything due by now leaves now: a late wake-up sends a burst, not a gap.
            while i < total and t0 + i / rate <= now:
                task = asyncio.create_task(self._send(run, i, requests[i], t0 + i / rate))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if i < total:
                await asyncio.sleep(max(0.0, t0 + i / rate - clock()))
        unanswered = 0
        if tasks:
            # What is still out a timeout after the last send is given up (counted, not waited for).
            _, pending = await asyncio.wait(set(tasks), timeout=self.timeout_s if drain_s is None else drain_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
            unanswered = len(pending)
            run.errors += unanswered
            if unanswered and len(run.error_samples) < ERROR_SAMPLES:
                run.error_samples.append(f"{unanswered} requests unanswered when the run ended")
        elapsed = (run.last_done or clock()) - t0
        answered = len(run.latencies)
        result = {
            "offered_rps": rate,
            "seconds": seconds,
            "requests": total,
            "answered": answered,
            "achieved_rps": round(answered / elapsed, 1) if elapsed > 0 else None,
            "p50_ms": _ms(percentile(run.latencies, 50)),
            "p90_ms": _ms(percentile(run.latencies, 90)),
            "p99_ms": _ms(percentile(run.latencies, 99)),
            "max_ms": _ms(max(run.latencies)) if run.latencies else None,
            "errors": run.errors,
            "unanswered": unanswered,
            "error_samples": run.error_samples,
            "late_sends": run.late_sends,
            "waited_for_connection": run.waited_for_connection,
            "send_lag_p99_ms": _ms(percentile(run.send_lags, 99)),
            "connections_opened": self.opened - opened_before,
            "connections_open": self._open,
        }
        if count_cached:
            result["cached_ratio"] = round(run.cached / run.ok, 4) if run.ok else None
        return result

    async def _send(self, run: _Run, index: int, request: bytes, scheduled: float) -> None:
        clock = time.perf_counter
        conn = None
        try:
            for attempt in (1, 2):
                conn = await self._acquire(run)
                if attempt == 1:
                    sent = clock()
                    run.send_lags.append(sent - scheduled)
                    if sent - scheduled > LATE_AFTER_S:
                        run.late_sends += 1
                reused = conn.requests > 0
                conn.requests += 1
                try:
                    conn.writer.write(request)
                    response = await asyncio.wait_for(read_response(conn.reader), self.timeout_s)
                    break
                except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                    # A kept-alive connection the server closed as this request left: any
                    # HTTP client sends it again on a new one (its latency still counts).
                    partial = getattr(exc, "partial", b"")
                    self._discard(conn)
                    conn = None
                    if attempt == 2 or not reused or partial:
                        raise
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            reason = f"no response in {self.timeout_s:g}s" if isinstance(exc, TimeoutError) else str(exc)
            run.error(f"{type(exc).__name__}: {reason}"[:200])
            if conn is not None:
                self._discard(conn)
            return
        except asyncio.CancelledError:
            if conn is not None:
                self._discard(conn)  # mid-response: the connection cannot be reused
            raise
        done = clock()
        run.latencies.append(done - scheduled)
        run.last_done = max(run.last_done, done)
        if 200 <= response.status < 300:
            run.ok += 1
            if run.count_cached:
                run.cached += is_cached(response.body)
        else:
            run.error(f"{response.status}: {response.body[:200].decode('utf-8', 'replace')}")
        if run.on_response is not None:
            run.on_response(index, scheduled, done, response)
        if response.keep_alive:
            self._release(conn)
        else:
            self._discard(conn)

    async def _acquire(self, run: _Run) -> _Connection:
        while self._idle:
            conn = self._idle.pop()
            if not (conn.reader.at_eof() or conn.writer.is_closing()):
                return conn
            conn.close()  # the server closed it while idle (its keep-alive timeout)
            self._open -= 1
        if self._open < self.max_connections:
            self._open += 1
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except BaseException:
                self._open -= 1
                raise
            self.opened += 1
            return _Connection(reader, writer)
        run.waited_for_connection += 1
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter

    def _release(self, conn: _Connection) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        if self._waiters and self._open < self.max_connections:
            # A waiter takes the freed slot with a new connection.
            waiter = self._waiters.popleft()
            asyncio.ensure_future(self._reopen(waiter))

    async def _reopen(self, waiter: asyncio.Future) -> None:
        self._open += 1
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            self._open -= 1
            if not waiter.done():
                waiter.set_exception(exc)
            return
        self.opened += 1
        conn = _Connection(reader, writer)
        if waiter.done():
            self._release(conn)
        else:
            waiter.set_result(conn)

    async def close(self) -> None:
        while self._idle:
            conn = self._idle.pop()
            conn.close()
            self._open -= 1
            try:
                await conn.writer.wait_closed()
            except OSError:
                pass


def is_cached(body: bytes) -> bool:
    """Whether a response body is JSON with ``"cached": true`` (a personalize answer from the copy cache)."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return False
    return isinstance(decoded, dict) and decoded.get("cached") is True


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1000, 2)  # NaN: nothing measured


async def closed_loop(
    host: str, port: int, requests: list[bytes], concurrency: int, timeout_s: float = 30.0
) -> list[Response]:
    """Send ``requests`` over ``concurrency`` connections, each waiting for its answer (cache warm-up)."""
    queue = collections.deque(enumerate(requests))
    responses: list[Response | None] = [None] * len(requests)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while queue:
                index, request = queue.popleft()
                writer.write(request)
                response = await asyncio.wait_for(read_response(reader), timeout_s)
                responses[index] = response
                if not response.keep_alive:
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(requests))))))
    return responses  # type: ignore[return-value]
