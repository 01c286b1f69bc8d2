"""``tailor simulate`` and ``tailor replay``: events into Kafka (or a JSONL file).

The events themselves come from `jobs.simulator` or a file; this module is the
I/O around them: pacing, live time stamps, progress, the Kafka producer and a
one-line summary, or for ``tailor replay --dry-run`` a JSON check of the file
in place of producing it. The record helpers (`simulated_records`, `paced`,
`live`) are reused by the demo and the benchmarks.

User ids are produced as given unless ``--pseudonymize``: then each becomes its
pseudonym under ``TAILOR_PSEUDONYM_KEY`` through the API's own `Pseudonymizer`,
so replayed events meet the API's events and reads for the same user.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

import msgspec
from tqdm import tqdm

from config.settings import Settings
from engine.features.events import (
    MAX_TS_MS,
    MIN_TS_MS,
    Event,
    InvalidEvent,
    decode_event,
    decode_shifted_event,
    encode_event,
    ts_to_datetime,
    unbounded_event_time,
)
from jobs.simulator import DEFAULT_DRIFT_SHARES, Drift, Simulator, history_start_ms

T = TypeVar("T")

#: Bad replay lines listed one by one; the rest are only counted.
MAX_LISTED_BAD_LINES = 20
# A paced producer that fell this far behind (a stall, a slow broker) starts
# afresh instead of bursting to catch up.
MAX_PACING_LAG_S = 1.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- reusable record streams ------------------------------------------------


def simulated_records(
    users: int, seed: int, n: int | None, start_ms: int, *, drift: Drift | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) Kafka records of ``n`` simulated events (``0``/``None``: forever), keyed by user.

    ``drift`` changes the simulated world part-way through (see `jobs.simulator.Drift`).
    """
    simulator = Simulator(users=users, seed=seed, start_ms=start_ms, drift=drift)
    return records_of(simulator.events(n) if n else simulator)


def records_of(events: Iterable[Event]) -> Iterator[tuple[bytes, bytes]]:
    """Events as (user id, JSON) records: Kafka partitions by user."""
    for event in events:
        yield event.user_id.encode(), encode_event(event)


def paced(
    items: Iterable[T],
    rate: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[T]:
    """Hand out ``items`` at ``rate`` per second on average (``rate <= 0``: no pacing).

    Token-bucket style: item ``k`` is due at ``start + k / rate``; the loop only
    sleeps when it is more than a millisecond early, so high rates do not pay
    for a sleep per item.
    """
    if rate <= 0:
        yield from items
        return
    start = clock()
    sent = 0
    for item in items:
        due = start + sent / rate
        early = due - clock()
        if early > 0.001:
            sleep(early)
        elif early < -MAX_PACING_LAG_S:
            start, sent = clock(), 0
        yield item
        sent += 1


def pseudonymizer_for(settings: Settings, args) -> Callable[[str], str] | None:
    """The API's pseudonym function if ``--pseudonymize`` asks for it, else None (ids as given).

    Raises ValueError, saying what to set, without a usable ``TAILOR_PSEUDONYM_KEY``.
    """
    if not getattr(args, "pseudonymize", False):
        return None
    from engine.privacy import Pseudonymizer

    if not settings.api.pseudonym_key:
        raise ValueError(
            "--pseudonymize needs TAILOR_PSEUDONYM_KEY, the key the API pseudonymizes with: set it to the API's key"
        )
    return Pseudonymizer(settings.api.pseudonym_key).pseudonym


def pseudonymized(events: Iterable[Event], pseudonym: Callable[[str], str] | None) -> Iterable[Event]:
    """``events`` with each user id replaced by ``pseudonym`` of it (``None``: as given)."""
    if pseudonym is None:
        return events
    return (msgspec.structs.replace(event, user_id=pseudonym(event.user_id)) for event in events)


def ids_remark(pseudonym: Callable[[str], str] | None) -> str:
    """What the summary line says about the user ids: the reader must not have to guess."""
    if pseudonym is None:
        return "; user ids as given (--pseudonymize applies the API's pseudonyms)"
    return "; user ids pseudonymized with TAILOR_PSEUDONYM_KEY, as the API does"


def live(events: Iterable[Event], clock_ms: Callable[[], int] = now_ms) -> Iterator[Event]:
    """Re-stamp each event with the wall clock as it passes, so features look live.

    The simulated order is kept, so each user's events stay in time order.
    """
    for event in events:
        yield msgspec.structs.replace(event, ts=clock_ms())


# -- tailor simulate --------------------------------------------------------


def run_simulate(settings: Settings, args) -> int:
    """Simulate users and produce their events to Kafka, or write them as JSONL.

    With ``--rate`` and no ``--start`` the events carry the wall-clock time at
    which they are sent, so the features they feed look live; otherwise they
    carry the simulated clock, which starts at ``--start``; without it, a
    finite stream (``--events N``) is history that ends before now
    (`history_start_ms`: a flow dead-letters events ahead of its clock, and
    ``years`` spans years) and an endless one starts now.
    ``--drift-at N`` switches the profile mix (``--drift-mix``) and/or prices
    (``--drift-price-factor``) at event N; the summary says whether it happened.
    ``--shape`` picks the shape of traffic (`jobs.simulator.SHAPES`); live
    time stamps replace the simulated clock, ``years``' idle gaps included.
    ``--pseudonymize`` produces the API's pseudonyms of the simulated user ids.
    """
    try:
        pseudonym = pseudonymizer_for(settings, args)
        drift = drift_of(args)
        if args.start:
            start_ms = parse_start(args.start)
        elif args.events > 0 and not args.rate:
            start_ms = history_start_ms(
                args.events, now_ms(), users=args.users, seed=args.seed, drift=drift, shape=args.shape
            )
        else:
            start_ms = now_ms()
        simulator = Simulator(users=args.users, seed=args.seed, start_ms=start_ms, drift=drift, shape=args.shape)
    except ValueError as exc:
        print(f"tailor simulate: {exc}", file=sys.stderr)
        return 2
    events = paced(simulator.events(args.events) if args.events > 0 else simulator, args.rate)
    if args.rate > 0 and not args.start:
        events = live(events)
    shape = "" if args.shape == "sessions" else f", {args.shape} shape"
    return _deliver(
        settings,
        records_of(pseudonymized(events, pseudonym)),
        args.out,
        command="tailor simulate",
        source=f"{args.users} users{shape}",
        total=args.events or None,
        remark=lambda: drift_remark(simulator) + ids_remark(pseudonym),
    )


def drift_of(args) -> Drift | None:
    """The drift ``tailor simulate``'s options ask for, or None.

    ``--drift-at`` alone switches to `DEFAULT_DRIFT_SHARES`; ``--drift-mix none``
    (parsed to ``{}``) keeps profiles, for a drift of prices only.
    """
    if args.drift_at is None:
        if args.drift_mix is not None or args.drift_price_factor != 1.0:
            raise ValueError("--drift-mix and --drift-price-factor need --drift-at N, the event where the drift starts")
        return None
    shares = DEFAULT_DRIFT_SHARES if args.drift_mix is None else (args.drift_mix or None)
    if shares is None and args.drift_price_factor == 1.0:
        raise ValueError("--drift-mix none keeps every profile, so also give --drift-price-factor F (F != 1)")
    return Drift(at_event=args.drift_at, shares=shares, price_factor=args.drift_price_factor)


def drift_remark(simulator: Simulator) -> str:
    """What the summary line says about the simulator's drift ('' without one)."""
    drift = simulator.drift
    if drift is None:
        return ""
    if not simulator.drifted:
        return f"; drift at event {drift.at_event} not reached"
    changes = []
    if drift.shares is not None:
        changes.append("profile mix " + ", ".join(f"{name} {share:.2f}" for name, share in drift.shares.items()))
    if drift.price_factor != 1.0:
        changes.append(f"prices x{drift.price_factor:g}")
    return f"; drift injected at event {drift.at_event} ({'; '.join(changes)})"


# -- tailor replay ----------------------------------------------------------


def run_replay(settings: Settings, args) -> int:
    """Produce the events of a JSONL file to Kafka, or with ``--dry-run`` only check them.

    Two passes over the file. The first finds the newest event time; with
    ``--rebase-time`` every event moves by the same shift, so the newest lands
    at now and the gaps between events stay. The second pass judges each event
    as it will be produced, after the shift (`decode_shifted_event`): an event
    stamped before 2000 is fine once the shift brings it into 2000-2100, and
    without ``--rebase-time`` it is a bad line whose reason says so. Valid
    events go to the events topic at ``--rate`` with a progress bar; bad lines
    are skipped and listed with their numbers and reasons, and make the exit
    status 1 unless ``--allow-bad-lines``. ``--dry-run`` produces nothing, needs
    no broker and prints one JSON object (`replay_check`), under the same rule.
    ``--pseudonymize`` produces the API's pseudonyms of the file's user ids.
    """
    try:
        pseudonym = pseudonymizer_for(settings, args)
    except ValueError as exc:
        print(f"tailor replay: {exc}", file=sys.stderr)
        return 2
    path = Path(args.file)
    if not path.is_file():
        print(f"tailor replay: no such file {str(path)!r}; pass a JSONL file with one event per line", file=sys.stderr)
        return 1
    scan = scan_jsonl(path)
    rebase_ms = now_ms() - scan.newest_ms if scan.newest_ms is not None else 0
    shift_ms = rebase_ms if args.rebase_time else 0
    bad: list[tuple[int, str]] = []
    events = pseudonymized(
        read_jsonl(path, bad, shift_ms=shift_ms, hint_shift_ms=None if args.rebase_time else rebase_ms), pseudonym
    )
    if args.dry_run:
        print(json.dumps(replay_check(events, scan, bad, shift_ms)))
        if bad and not args.allow_bad_lines:
            print(
                f"tailor replay: {len(bad)} bad line(s) in {path} (see bad_lines); exit status 1, "
                "or pass --allow-bad-lines to accept them",
                file=sys.stderr,
            )
        code = 0
    else:
        code = _deliver(
            settings,
            records_of(paced(events, args.rate)),
            None,
            command="tailor replay",
            source=path.name,
            total=scan.shiftable if args.rebase_time else scan.in_range,
            remark=lambda: replay_remark(bad, shift_ms) + ids_remark(pseudonym),
        )
        report_bad_lines(bad, path, allowed=args.allow_bad_lines)
    return code or (1 if bad and not args.allow_bad_lines else 0)


@dataclass
class FileScan:
    """What the first pass over a replay file found."""

    lines: int = 0
    blank: int = 0
    #: Lines that are events in every respect but the 2000-2100 bound, stamped before 2100.
    shiftable: int = 0
    #: Of those, the ones inside the bound: the valid events when nothing is shifted.
    in_range: int = 0
    #: The newest time of the shiftable lines (None without any): ``--rebase-time`` moves it to now.
    newest_ms: int | None = None


def scan_jsonl(path: Path) -> FileScan:
    """First pass over a replay file: its lines and the newest event time a shift can start from.

    A time from 2100 on is left out of the newest: it is a unit slip (microseconds,
    say), and shifting it to now would push every real event out of range.
    """
    scan = FileScan()
    with path.open("rb") as f:
        for line in f:
            scan.lines += 1
            if not line.strip():
                scan.blank += 1
                continue
            try:
                ts = unbounded_event_time(line)
            except InvalidEvent:
                continue
            if ts >= MAX_TS_MS:
                continue
            scan.shiftable += 1
            if ts >= MIN_TS_MS:
                scan.in_range += 1
            if scan.newest_ms is None or ts > scan.newest_ms:
                scan.newest_ms = ts
    return scan


def read_jsonl(
    path: Path, bad: list[tuple[int, str]], *, shift_ms: int = 0, hint_shift_ms: int | None = None
) -> Iterator[Event]:
    """The valid events of a JSONL file, shifted by ``shift_ms`` and judged as shifted.

    Each bad line's (number, reason) goes to ``bad``. Blank lines are layout,
    not events, and are skipped without a word. ``hint_shift_ms`` is the shift
    ``--rebase-time`` would apply: a line it would keep says so in its reason.
    """
    decode = partial(decode_shifted_event, shift_ms=shift_ms) if shift_ms else decode_event
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                event = decode(line)
            except InvalidEvent as exc:
                hint = rebase_hint(line, hint_shift_ms) if hint_shift_ms else None
                bad.append((number, hint or exc.reason))
                continue
            yield event


def rebase_hint(line: bytes, shift_ms: int) -> str | None:
    """The reason for a line that only the 2000-2100 bound rejects and a shift by ``shift_ms`` keeps, else None."""
    try:
        shifted = decode_shifted_event(line, shift_ms).ts
    except InvalidEvent:
        return None
    ts = shifted - shift_ms
    side = "before 2000" if ts < MIN_TS_MS else "from 2100 on"
    return (
        f"`ts` {ts} is {rfc3339(ts)}, {side}: --rebase-time would shift it to {rfc3339(shifted)} "
        "with the rest of the file, keeping the gaps"
    )


def replay_check(events: Iterable[Event], scan: FileScan, bad: list[tuple[int, str]], shift_ms: int) -> dict:
    """``--dry-run``'s summary of a replay file, once ``events`` (the second pass) are used up.

    ``first_ts`` and ``last_ts`` are the times the events would be produced
    with, after ``shift_ms``; ``bad_lines`` lists the first bad lines.
    """
    valid = 0
    users: set[str] = set()
    types: Counter[str] = Counter()
    first_ms = last_ms = None
    for event in events:
        valid += 1
        users.add(event.user_id)
        types[event.type] += 1
        first_ms = event.ts if first_ms is None else min(first_ms, event.ts)
        last_ms = event.ts if last_ms is None else max(last_ms, event.ts)
    return {
        "lines": scan.lines,
        "valid": valid,
        "bad": len(bad),
        "blank": scan.blank,
        "users": len(users),
        "types": dict(sorted(types.items())),
        "first_ts": None if first_ms is None else rfc3339(first_ms),
        "last_ts": None if last_ms is None else rfc3339(last_ms),
        "shift_ms": shift_ms,
        "bad_lines": [{"line": number, "reason": reason} for number, reason in bad[:MAX_LISTED_BAD_LINES]],
    }


def replay_remark(bad: list[tuple[int, str]], shift_ms: int) -> str:
    """What a replay's summary line adds: the shift and the bad lines ('' for neither)."""
    remark = f"; times shifted by {shift_ms / 86_400_000:+,.1f} days" if shift_ms else ""
    if bad:
        remark += f"; {len(bad)} bad line(s) skipped"
    return remark


def report_bad_lines(bad: list[tuple[int, str]], path: Path, out=None, *, allowed: bool = False) -> None:
    """List the skipped lines (the first `MAX_LISTED_BAD_LINES`) and what they do to the exit status."""
    out = out or sys.stderr
    if not bad:
        return
    print(f"tailor replay: {len(bad)} bad line(s) in {path} were skipped:", file=out)
    for number, reason in bad[:MAX_LISTED_BAD_LINES]:
        print(f"  line {number}: {reason}", file=out)
    if len(bad) > MAX_LISTED_BAD_LINES:
        print(f"  ... and {len(bad) - MAX_LISTED_BAD_LINES} more", file=out)
    if not allowed:
        print("tailor replay: exit status 1 for the skipped lines; pass --allow-bad-lines to accept them", file=out)


def rfc3339(ts_ms: int) -> str:
    """Epoch milliseconds as RFC 3339 in UTC, e.g. 2026-01-01T00:00:00.000Z (the number where no date fits)."""
    try:
        moment = ts_to_datetime(ts_ms)
    except (ValueError, OverflowError, OSError):
        return f"epoch ms {ts_ms}"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- shared plumbing --------------------------------------------------------


def parse_start(text: str) -> int:
    """``--start`` as epoch ms: RFC 3339 with a time zone, or epoch milliseconds."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--start {text!r} is not RFC 3339, e.g. 2026-01-01T09:00:00Z") from None
    if moment.tzinfo is None:
        raise ValueError(f"--start {text!r} needs a time zone, e.g. 2026-01-01T09:00:00Z")
    return int(moment.timestamp() * 1000)


class _Tally:
    """Counts records as they pass and moves the progress bar in steps."""

    STEP = 1000

    def __init__(self, bar: tqdm):
        self.count = 0
        self._bar = bar

    def through(self, records: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
        for record in records:
            yield record
            self.count += 1
            if self.count % self.STEP == 0:
                self._bar.update(self.STEP)


def _deliver(
    settings: Settings,
    records: Iterable[tuple[bytes, bytes]],
    out: str | None,
    *,
    command: str,
    source: str,
    total: int | None,
    remark: Callable[[], str] | None = None,
) -> int:
    """Send records to a JSONL file or Kafka, with progress and a summary line.

    ``remark`` is asked once the records are used up, so what it adds to the
    summary can depend on how far the stream got.
    """
    if out is None and not settings.kafka.brokers:
        print(
            f"{command}: no Kafka broker configured; set TAILOR_BROKERS=host:port, "
            "or run `tailor up` for the embedded one",
            file=sys.stderr,
        )
        return 2
    bar = tqdm(total=total, unit="ev", file=sys.stderr, disable=total is None, leave=False, mininterval=0.5)
    tally = _Tally(bar)
    started = time.monotonic()
    code = 0
    try:
        if out is not None:
            _write_jsonl(out, tally.through(records))
            failed = 0
        else:
            failed = _produce(settings, tally.through(records))
    except KeyboardInterrupt:
        # Ctrl-C is how an endless run ends: still flush and summarise.
        failed = 0
        code = 0 if total is None else 130
    except RuntimeError as exc:  # no broker answers, a topic cannot be created
        bar.close()
        print(f"{command}: {exc}", file=sys.stderr)
        return 1
    bar.close()
    seconds = time.monotonic() - started
    rate = tally.count / seconds if seconds > 0 else 0.0
    target = out or f"topic {settings.kafka.topic}"
    line = f"{command}: {tally.count} events from {source} to {target} in {seconds:.2f} s ({rate:,.0f} events/s)"
    if remark is not None:
        line += remark()
    if failed:
        line += f"; {failed} failed delivery"
        code = code or 1
    print(line, file=sys.stderr)
    return code


def _write_jsonl(path: str, records: Iterable[tuple[bytes, bytes]]) -> None:
    with open(path, "wb") as f:
        for _, value in records:
            f.write(value)
            f.write(b"\n")


def _produce(settings: Settings, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Produce to the events topic; returns how many messages the broker refused."""
    from flows.kafka import ensure_topics, make_producer, produce_all

    ensure_topics(settings.kafka.brokers, [settings.kafka.topic, settings.kafka.dlq_topic], settings.kafka.partitions)
    failures: list[str] = []

    def on_delivery(err, _msg) -> None:
        if err is not None:
            failures.append(str(err))

    producer = make_producer(settings.kafka.brokers, on_delivery=on_delivery)
    try:
        produce_all(producer, settings.kafka.topic, records)
    finally:
        unsent = producer.flush(30)
    if failures:
        print(f"first delivery error: {failures[0]}", file=sys.stderr)
    return len(failures) + unsent
