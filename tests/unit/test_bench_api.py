"""bench/openloop.py against tiny in-test HTTP servers, and bench/api.py's wrk parsing and targets."""

from __future__ import annotations

import asyncio

import pytest

from bench.api import compare, parse_wrk, targets
from bench.openloop import OpenLoopClient, build_request, closed_loop, read_response


class TinyServer:
    """An HTTP/1.1 keep-alive server whose answers depend on the path.

    ``/slow``: 50 ms, concurrently; ``/serial``: one request at a time, 2 ms
    each, except one that stalls ``stall_s`` once the server is ``stall_after_s``
    old; ``/cached``: ``{"cached": true}``; ``/fail``: 500; ``/chunked``: a
    chunked body; ``/hang``: no answer for 30 s; ``/drop-second``: the second
    request on a connection is dropped with the connection. Anything else: ``{"cached": false}``.
    """

    def __init__(self, stall_after_s: float = 0.2, stall_s: float = 0.3, idle_close_s: float | None = None):
        self.idle_close_s = idle_close_s
        self.lock = asyncio.Lock()
        self.stall_after_s, self.stall_s = stall_after_s, stall_s
        self.stalled = False
        self.requests = 0

    async def __aenter__(self) -> TinyServer:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.started = asyncio.get_running_loop().time()
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                # Like uvicorn's keep-alive timeout: an idle connection is closed.
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_close_s)
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                path = head.split(b" ")[1].decode()
                served += 1
                if path == "/drop-second" and served == 2:
                    return  # closes without an answer, as a server timing out a kept-alive connection may
                self.requests += 1
                writer.write(await self.answer(path))
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()

    async def answer(self, path: str) -> bytes:
        body, status = b'{"cached": false}', b"200 OK"
        if path == "/slow":
            await asyncio.sleep(0.05)
        elif path == "/serial":
            async with self.lock:
                age = asyncio.get_running_loop().time() - self.started
                if not self.stalled and age >= self.stall_after_s:
                    self.stalled = True
                    await asyncio.sleep(self.stall_s)
                else:
                    await asyncio.sleep(0.002)
        elif path == "/hang":
            await asyncio.sleep(30)
        elif path == "/cached":
            body = b'{"cached": true, "content": {"text": "hi"}}'
        elif path == "/fail":
            body, status = b'{"detail": "boom"}', b"500 Internal Server Error"
        elif path == "/chunked":
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        return b"HTTP/1.1 %s\r\nContent-Length: %d\r\nContent-Type: application/json\r\n\r\n%s" % (
            status,
            len(body),
            body,
        )


def _get(port: int, path: str):
    request = build_request("GET", path, f"127.0.0.1:{port}", {"X-API-Key": "k"})
    return lambda i: request


async def _open_loop(path: str, rate: float, seconds: float, **kw) -> tuple[dict, TinyServer]:
    async with TinyServer() as server:
        client = OpenLoopClient("127.0.0.1", server.port, max_connections=64, timeout_s=5.0)
        try:
            result = await client.run(_get(server.port, path), rate, seconds, **kw)
        finally:
            await client.close()
    return result, server


def test_build_request_has_length_and_body():
    raw = build_request("POST", "/v1/personalize", "h:1", {"X-API-Key": "k"}, b'{"a": 1}')
    assert raw == b'POST /v1/personalize HTTP/1.1\r\nHost: h:1\r\nX-API-Key: k\r\nContent-Length: 8\r\n\r\n{"a": 1}'


def test_latency_reflects_a_slow_server_and_connections_grow():
    result, server = asyncio.run(_open_loop("/slow", rate=100, seconds=1.0))
    assert result["requests"] == result["answered"] == server.requests == 100
    assert result["errors"] == 0
    assert 45 <= result["p50_ms"] <= 250  # 50 ms of server time (generous for a busy machine)
    # 100 rps of 50 ms requests keep ~5 in flight: one connection could not carry them.
    assert result["connections_opened"] >= 3


def test_a_stall_shows_in_the_requests_queued_behind_it():
    """Coordinated omission is not hidden: requests due during a 300 ms stall wait, and count it.

    A closed-loop client would record one slow request; at 200 rps about 60
    requests fall due during the stall, and those due in its first 200 ms waited
    over 100 ms each (~17 % of the run): the p90 is one of them.
    """
    result, _ = asyncio.run(_open_loop("/serial", rate=200, seconds=1.2))
    assert result["errors"] == 0
    assert result["max_ms"] >= 250
    assert result["p90_ms"] >= 80
    assert result["p50_ms"] < result["p90_ms"]


def test_errors_are_counted_with_samples():
    result, _ = asyncio.run(_open_loop("/fail", rate=50, seconds=0.2))
    assert result["errors"] == result["requests"] == 10
    assert result["error_samples"][0].startswith("500: ")
    assert "boom" in result["error_samples"][0]
    assert len(result["error_samples"]) <= 5


def test_requests_still_out_when_the_run_ends_are_errors():
    result, _ = asyncio.run(_open_loop("/hang", rate=20, seconds=0.1, drain_s=0.2))
    assert result["requests"] == result["unanswered"] == result["errors"] == 2
    assert result["answered"] == 0 and result["p99_ms"] is None
    assert "unanswered" in result["error_samples"][-1]


def test_connections_the_server_closed_are_not_errors():
    """Idle connections closed by the server's keep-alive timeout are dropped, and a request
    whose kept-alive connection closed under it goes again on a new one."""

    async def go():
        async with TinyServer(idle_close_s=0.1) as server:
            client = OpenLoopClient("127.0.0.1", server.port, timeout_s=5.0)
            try:
                first = await client.run(_get(server.port, "/slow"), 100, 0.2)
                await asyncio.sleep(0.3)  # every idle connection is closed by now
                second = await client.run(_get(server.port, "/slow"), 100, 0.2)
                dropped = await client.run(_get(server.port, "/drop-second"), 50, 0.4)
            finally:
                await client.close()
            return first, second, dropped

    first, second, dropped = asyncio.run(go())
    assert first["errors"] == second["errors"] == dropped["errors"] == 0
    assert second["answered"] == 20 and second["connections_opened"] >= 1
    assert dropped["answered"] == 20


def test_cached_ratio_from_response_bodies():
    hit, _ = asyncio.run(_open_loop("/cached", rate=50, seconds=0.2, count_cached=True))
    miss, _ = asyncio.run(_open_loop("/other", rate=50, seconds=0.2, count_cached=True))
    assert hit["cached_ratio"] == 1.0 and miss["cached_ratio"] == 0.0


def test_reader_handles_chunked_bodies_and_keeps_the_connection():
    async def go():
        async with TinyServer() as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                bodies = []
                for path in ("/chunked", "/cached"):  # the second on the same connection
                    writer.write(build_request("GET", path, "x"))
                    response = await read_response(reader)
                    bodies.append((response.status, response.body, response.keep_alive))
                return bodies
            finally:
                writer.close()

    (s1, b1, k1), (s2, b2, _) = asyncio.run(go())
    assert (s1, b1, k1) == (200, b"hello world", True)
    assert s2 == 200 and b'"cached": true' in b2


def test_closed_loop_answers_in_request_order():
    async def go():
        async with TinyServer() as server:
            requests = [build_request("GET", p, "x") for p in ("/cached", "/fail", "/other") * 4]
            return await closed_loop("127.0.0.1", server.port, requests, concurrency=3)

    statuses = [r.status for r in asyncio.run(go())]
    assert statuses == [200, 500, 200] * 4


def test_invalid_rate_is_refused():
    client = OpenLoopClient("127.0.0.1", 1)
    with pytest.raises(ValueError, match="rate and seconds"):
        asyncio.run(client.run(lambda i: b"", 0, 1))


WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:41234
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.12ms    1.34ms  13.35ms   86.22%
    Req/Sec    10.61k     3.67k   18.63k    85.00%
  Latency Distribution
     50%  592.00us
     75%    1.07ms
     90%    3.06ms
     99%    5.82ms
  105633 requests in 10.01s, 8.74MB read
Requests/sec:  10528.63
Transfer/sec:      0.87MB
tailor-cached 70422 105633
"""

WRK_OUTPUT_ERRORS = """\
Running 3s test @ http://127.0.0.1:18099/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   290.63us  212.01us    1.20s    81.69%
    Req/Sec    94.00    117.78   230.00     66.67%
  Latency Distribution
     50%  254.00us
     75%  341.00us
     90%  541.00us
     99%    1.02s 
  87 requests in 3.00s, 6.01KB read
  Socket errors: connect 0, read 2, write 0, timeout 16
  Non-2xx or 3xx responses: 24
Requests/sec:     28.96
Transfer/sec:      2.00KB
"""


def test_parse_wrk_output():
    got = parse_wrk(WRK_OUTPUT)
    assert got["rps"] == 10528.63
    assert got["requests"] == 105633 and got["duration_s"] == 10.01
    assert (got["p50_ms"], got["p75_ms"], got["p90_ms"], got["p99_ms"]) == (0.592, 1.07, 3.06, 5.82)
    assert got["avg_ms"] == 1.12 and got["max_ms"] == 13.35
    assert got["non_2xx"] == 0 and got["socket_errors"]["timeout"] == 0
    assert got["cached_ratio"] == round(70422 / 105633, 4)


def test_parse_wrk_errors_and_units():
    got = parse_wrk(WRK_OUTPUT_ERRORS)
    assert got["non_2xx"] == 24
    assert got["socket_errors"] == {"connect": 0, "read": 2, "write": 0, "timeout": 16}
    assert got["p99_ms"] == 1020.0 and got["max_ms"] == 1200.0 and got["p50_ms"] == 0.254
    assert "cached_ratio" not in got


def test_parse_wrk_refuses_output_without_a_rate():
    with pytest.raises(ValueError, match="Requests/sec"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def _run(rate, p99, errors=0, achieved=None, cached=None):
    out = {"offered_rps": rate, "p99_ms": p99, "errors": errors, "achieved_rps": achieved or rate}
    if cached is not None:
        out["cached_ratio"] = cached
    return out


def test_targets_judge_each_figure():
    features = {"open_loop": [_run(500, 2.0), _run(1000, 3.0)], "peak_wrk": {"rps": 6000.0, "p99_ms": 9.0}}
    feast = {"open_loop": [_run(500, 8.0), _run(1000, 900.0)], "peak_wrk": {"rps": 1000.0, "p99_ms": 40.0}}
    result = {
        "features_vs_feast": compare(features, feast),
        "personalize": {
            "open_loop": {**_run(1000, 8.5, cached=0.9), "miss_share": 0.1},
            "peak_wrk": {"rps": 3500.0, "non_2xx": 0, "cached_ratio": 1.0},
        },
        "ceiling": {"peak_wrk": {"rps": 5000.0}},
        "personalize_peak_vs_ceiling": 0.7,
    }
    assert result["features_vs_feast"]["throughput_ratio"] == 6.0
    assert result["features_vs_feast"]["open_loop_p99_ratio"] == {"500": 0.25, "1000": 0.003}
    got = targets(result)
    assert got["features_vs_feast"]["met"] is True
    assert got["personalize_p99"]["met"] is True
    assert got["personalize_peak"]["met"] is False  # 3,500 < 4,000
    assert got["personalize_vs_ceiling"]["met"] is True  # 0.7 >= 0.4
    assert got["miss_to_generated"]["met"] is None  # not followed in this result


def test_targets_unmeasured_are_none_and_errors_fail():
    got = targets({"personalize": {"open_loop": _run(1000, 5.0, errors=3, cached=0.9)}})
    assert got["personalize_p99"]["met"] is False
    assert got["personalize_peak"]["met"] is None and got["features_vs_feast"]["met"] is None
