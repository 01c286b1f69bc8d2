"""The demo's experiment: `tailor up` runs one, as a storefront would.

`Storefront` is a thread that talks to the API over HTTP like a client. Once the
API answers it creates and starts `EXPERIMENT` (generated vs default headline
copy, a 10% holdout). Then, whenever a simulated session starts (the traffic calls
`session_started` with the items the user looked at lately, as a "recently viewed"
shelf would show them), it asks ``/v1/personalize`` for that user's headline about
those items (``item_ids``, read from the catalog the demo loads), at most once per
`SERVE_EVERY_S` per user: the API assigns the user an arm and logs the impression.
It counts what the generated arm served (`generated_share`: generated copy rather
than default copy), which the live view shows. The storefront remembers whom it served; the traffic asks it
(`experiment_of`) whether a click came after a served headline, and if so the
click names the experiment, as a storefront reports what was clicked. Purchases
are attributed by the flow itself (to every experiment a user had seen).

The simulated shoppers do not read the copy, so the demo is an A/A test in
effect: its results should show no significant difference.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import urllib.error
import urllib.request

EXPERIMENT = {
    "id": "demo-headline",
    "description": "tailor up's demo: generated vs default headline copy (simulated shoppers do not read it: "
    "expect no difference)",
    "slot": "headline",
    "holdout": 0.1,
    "primary_metric": "conversion",
    "guardrails": ["click"],
    "arms": [{"name": "default-copy", "copy": "default"}, {"name": "generated"}],
}
#: A user's headline is asked for at most this often (a session start in between reuses it).
SERVE_EVERY_S = 60.0
#: Session starts waiting for a request; more are dropped (the demo's traffic never waits on the API).
QUEUE_SIZE = 200


class Storefront:
    """Creates the demo experiment and serves headlines to simulated users as their sessions start.

    ``api_key`` serves the headlines: the ``serve`` scope is all it needs.
    ``setup_key`` (``admin``; default ``api_key``) creates and starts the
    experiment, is sent with those calls only and dropped once they are done.
    """

    def __init__(self, base_url: str, api_key: str, *, setup_key: str | None = None, timeout_s: float = 2.0):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self._setup_key = setup_key or api_key
        self.timeout_s = timeout_s
        self.experiment = EXPERIMENT["id"]
        #: "waiting for the API", "running", or why the experiment could not start.
        self.state = "waiting for the API"
        self.served = 0
        self.failed = 0
        #: Headlines the generated arm served, and how many of them were generated copy.
        self.generated_arm = 0
        self.generated_copy = 0
        self._exposed_ms: dict[str, int] = {}  # raw user id -> when their headline was last served
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, tuple[str, ...]]] = queue.Queue(maxsize=QUEUE_SIZE)
        self._running = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tailor-up-storefront", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    # -- called by the traffic thread: never blocks ---------------------------

    def session_started(self, user_id: str, item_ids: tuple[str, ...] = ()) -> None:
        """A simulated session began: serve the user a headline about ``item_ids`` soon (dropped if the queue is full).

        No items (a user's first session): the API picks one from the catalog for them.
        """
        if self._running.is_set():
            try:
                self._queue.put_nowait((user_id, tuple(item_ids)))
            except queue.Full:
                pass

    @property
    def generated_share(self) -> float | None:
        """Share of the generated arm's headlines that were generated copy (None before any)."""
        return self.generated_copy / self.generated_arm if self.generated_arm else None

    def experiment_of(self, user_id: str, ts_ms: int) -> str | None:
        """The experiment a click of ``user_id`` at ``ts_ms`` reports: ours if their headline came first."""
        with self._lock:
            exposed = self._exposed_ms.get(user_id)
        return self.experiment if exposed is not None and exposed <= ts_ms else None

    # -- the thread -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            status, _ = self._call("GET", "/healthz")
            if status == 200:
                break
            self._stop.wait(0.5)
        else:
            return
        if not self._start_experiment():
            return
        self._running.set()
        while not self._stop.is_set():
            try:
                user, item_ids = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            now = int(time.time() * 1000)
            with self._lock:
                last = self._exposed_ms.get(user)
            if last is not None and now - last < SERVE_EVERY_S * 1000:
                continue
            request = {"user_id": user, "slot": "headline"}
            if item_ids:
                request["item_ids"] = list(item_ids)
            status, body = self._call("POST", "/v1/personalize", request)
            if status == 200:
                self.served += 1
                if body.get("variant") == "generated":
                    self.generated_arm += 1
                    self.generated_copy += not body["explanation"]["fallbacks"]
                with self._lock:
                    self._exposed_ms[user] = now
            else:
                self.failed += 1

    def _start_experiment(self) -> bool:
        try:
            return self._set_up()
        finally:
            self._setup_key = None  # serving needs no admin key: do not keep one around

    def _set_up(self) -> bool:
        status, body = self._call("POST", "/v1/experiments", EXPERIMENT, key=self._setup_key)
        if status not in (201, 409):  # 409: it exists (a run on Redis, or on a kept repository)
            self.state = f"not started: creating it answered {status} {body.get('detail', '') if body else ''}"
            return False
        status, body = self._call("GET", f"/v1/experiments/{self.experiment}")
        if status == 200 and body["status"] == "draft":
            status, body = self._call("POST", f"/v1/experiments/{self.experiment}/start", key=self._setup_key)
        if status != 200 or body["status"] != "running":
            detail = body.get("detail", body.get("status", "")) if body else ""
            self.state = f"not started: {status} {detail}"
            return False
        self.state = "running"
        return True

    def _call(
        self, method: str, path: str, payload: dict | None = None, key: str | None = None
    ) -> tuple[int, dict | None]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"X-API-Key": key or self.api_key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            try:
                return exc.code, json.loads(exc.read() or b"null")
            except ValueError:
                return exc.code, None
        except (OSError, ValueError):
            return 0, None
