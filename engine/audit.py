"""The hash-chained audit log: who did which administrative or privacy action, in records an edit cannot hide.

Each action (a template created, an experiment started, a model promoted, a user's
consent changed, an erasure requested or completed) is one `AuditRecord`. A record's
``hash`` is the SHA-256 of the canonical JSON (`canonical`) of every other field, its
``prev_hash`` among them: the previous record's ``hash``, or `GENESIS` for the first.
Editing a stored record, dropping one or moving one therefore breaks the chain at that
point, and `verify` names the first record where it breaks and why. The chain has no
secret: it shows tampering with stored rows, not a whole log rewritten with every hash
recomputed (keep copies elsewhere for that).

The actor is never an API key: `fingerprint` keeps the first 8 hex digits of its
SHA-256, enough to tell a deployment's keys apart and useless to call the API with;
``"cli"`` and ``"system"`` name the command line and the processes' own actions.
Storage (SQLite, Redis, appends that never fork the chain) is `store.audit`.

Examples
--------
>>> first = chain(None, "cli", "template.create", "cta-soft", {"version": 1}, ts="2026-03-02T09:00:00.000Z")
>>> first.seq, first.prev_hash == GENESIS, len(first.hash)
(1, True, 64)
>>> second = chain(first, fingerprint("k3y"), "template.archive", "cta-soft", ts="2026-03-02T09:01:00.000Z")
>>> second.seq, second.actor, second.prev_hash == first.hash
(2, 'a49b1287', True)
>>> verify([first, second]) is None
True
>>> import msgspec
>>> verify([first, msgspec.structs.replace(second, target="cta-loud")])
Broken(seq=2, reason='its hash does not match its contents: the record was edited')
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import msgspec

#: The ``prev_hash`` of the first record.
GENESIS = "0" * 64
#: The actions Tailor records (others of the form ``<resource>.<verb>`` are accepted too).
ACTIONS = (
    "template.create",
    "template.update",
    "template.archive",
    "experiment.create",
    "experiment.start",
    "experiment.stop",
    "experiment.reallocate",
    "experiment.update",
    "model.promote",
    "model.swap",
    "consent.change",
    "erasure.request",
    "erasure.complete",
    # Written by the log itself: Redis lost records, and the chain goes on from the last one known.
    "audit.lost",
)
#: Actors that are not API keys: the command line and the processes themselves.
NAMED_ACTORS = ("cli", "system")
#: Longest ``target`` and largest ``detail`` (its JSON), so that a record stays small.
MAX_TARGET_CHARS = 256
MAX_DETAIL_BYTES = 16_384

_ACTION = re.compile(r"[a-z][a-z_]*\.[a-z][a-z_]*")
_FINGERPRINT = re.compile(r"[0-9a-f]{8}")
# Canonical JSON: struct fields and dict keys sorted, no whitespace, msgspec's shortest floats.
_CANONICAL = msgspec.json.Encoder(order="sorted")


class AuditRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One action in the log; ``hash`` covers every other field (see the module docstring)."""

    #: Position in the log: 1, 2, 3 ... with no gaps.
    seq: int
    #: When it was appended, RFC 3339 in UTC to the millisecond (``2026-03-02T09:00:00.123Z``).
    ts: str
    #: `fingerprint` of the API key, or one of `NAMED_ACTORS`.
    actor: str
    #: What was done, ``<resource>.<verb>`` (`ACTIONS`).
    action: str
    #: What it was done to: a template id, an experiment id, a model version, a pseudonym.
    target: str
    #: A few small JSON values saying how (a version, a status, weights).
    detail: dict[str, Any]
    #: The previous record's ``hash`` (`GENESIS` for the first).
    prev_hash: str
    #: SHA-256 (hex) of `canonical` of this record.
    hash: str


class Broken(NamedTuple):
    """Where a chain breaks first: the record's ``seq`` and why, in one sentence."""

    seq: int
    reason: str


def fingerprint(api_key: str) -> str:
    """The actor an API key is recorded as: the first 8 hex digits of its SHA-256, never the key.

    >>> fingerprint("boss")
    'a5e7c002'
    """
    return hashlib.sha256(api_key.encode()).hexdigest()[:8]


def canonical(record: AuditRecord) -> bytes:
    """What ``hash`` is computed over: every field but ``hash``, as JSON with sorted keys and no spaces.

    >>> r = chain(None, "cli", "model.promote", "v2", {"from": "v1"}, ts="2026-03-02T09:00:00.000Z")
    >>> canonical(r)[:60]
    b'{"action":"model.promote","actor":"cli","detail":{"from":"v1'
    """
    fields = msgspec.structs.asdict(record)
    del fields["hash"]
    return _CANONICAL.encode(fields)


def record_hash(record: AuditRecord) -> str:
    """The hash ``record`` should carry: SHA-256 (hex) of `canonical`."""
    return hashlib.sha256(canonical(record)).hexdigest()


def check_action(action: str) -> str:
    """``action`` if it has the form ``<resource>.<verb>`` (lower case); a `ValueError` otherwise.

    >>> check_action("experiment.start")
    'experiment.start'
    >>> check_action("Start")
    Traceback (most recent call last):
    ...
    ValueError: audit action 'Start' must be <resource>.<verb> in lower case, e.g. 'template.create'
    """
    if not isinstance(action, str) or not _ACTION.fullmatch(action):
        raise ValueError(f"audit action {action!r} must be <resource>.<verb> in lower case, e.g. 'template.create'")
    return action


def check_actor(actor: str) -> str:
    """``actor`` if it is an API key's `fingerprint` or one of `NAMED_ACTORS`; a `ValueError` otherwise.

    A raw API key is refused, so that no key ever lands in the log.

    >>> check_actor("cli"), check_actor(fingerprint("boss"))
    ('cli', 'a5e7c002')
    """
    if not isinstance(actor, str) or not (actor in NAMED_ACTORS or _FINGERPRINT.fullmatch(actor)):
        raise ValueError(
            f"audit actor must be an API key's fingerprint (8 hex digits: engine.audit.fingerprint) "
            f"or one of {NAMED_ACTORS}, not a {len(actor) if isinstance(actor, str) else 0}-character value"
        )
    return actor


def chain(
    prev: AuditRecord | None,
    actor: str,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
    *,
    ts: str,
) -> AuditRecord:
    """The record that follows ``prev`` (None: the first one), its hash computed.

    ``detail`` is normalized through JSON (what is stored is what was hashed); an invalid
    actor or action, a target over `MAX_TARGET_CHARS` or a detail over `MAX_DETAIL_BYTES`
    is a `ValueError`.

    >>> r = chain(None, "system", "model.swap", "v2", {"weights": {"b": 1, "a": 0.5}}, ts="2026-03-02T09:00:00.000Z")
    >>> r.detail, r.hash == record_hash(r)
    ({'weights': {'b': 1, 'a': 0.5}}, True)
    """
    check_actor(actor)
    check_action(action)
    if not isinstance(target, str) or len(target) > MAX_TARGET_CHARS:
        raise ValueError(f"audit target must be text of at most {MAX_TARGET_CHARS} characters")
    raw = msgspec.json.encode(detail or {})
    if len(raw) > MAX_DETAIL_BYTES:
        raise ValueError(f"audit detail is {len(raw)} bytes of JSON; at most {MAX_DETAIL_BYTES}")
    normalized = msgspec.json.decode(raw)
    if not isinstance(normalized, dict):
        raise ValueError("audit detail must be a JSON object (a dict)")
    record = AuditRecord(
        seq=1 if prev is None else prev.seq + 1,
        ts=ts,
        actor=actor,
        action=action,
        target=target,
        detail=normalized,
        prev_hash=GENESIS if prev is None else prev.hash,
        hash="",
    )
    return msgspec.structs.replace(record, hash=record_hash(record))


def verify(records: Iterable[AuditRecord], *, appended: int | None = None) -> Broken | None:
    """The first record where the chain breaks, with why; None when it is intact.

    ``records`` in the order stored. A record's own hash is checked first (an edited
    record), then that its ``seq`` follows the previous one's (a dropped or moved one),
    then that its ``prev_hash`` is the previous record's hash (one replaced or edited
    with its hash recomputed). ``appended``, the store's count of appends, also catches
    records dropped from the end.

    Examples
    --------
    >>> ts = "2026-03-02T09:00:00.000Z"
    >>> a = chain(None, "cli", "experiment.create", "hero", ts=ts)
    >>> b = chain(a, "cli", "experiment.start", "hero", ts=ts)
    >>> c = chain(b, "cli", "experiment.stop", "hero", ts=ts)
    >>> verify([a, c])
    Broken(seq=3, reason='record 2 is missing: dropped from the log')
    >>> verify([a, c, b])
    Broken(seq=3, reason='out of order: record 2 should come before it')
    >>> verify([a, b], appended=3)
    Broken(seq=3, reason='the log ends at record 2 but 3 were appended: the records after it were dropped')
    """
    listed = list(records)
    seqs = {r.seq for r in listed}
    prev: AuditRecord | None = None
    for record in listed:
        expected = 1 if prev is None else prev.seq + 1
        if record_hash(record) != record.hash:
            return Broken(record.seq, "its hash does not match its contents: the record was edited")
        if record.seq != expected:
            if expected in seqs:
                return Broken(record.seq, f"out of order: record {expected} should come before it")
            if record.seq > expected:
                which = (
                    f"record {expected} is"
                    if record.seq == expected + 1
                    else f"records {expected}-{record.seq - 1} are"
                )
                return Broken(record.seq, f"{which} missing: dropped from the log")
            return Broken(record.seq, f"out of order: it comes after record {prev.seq if prev else 0}")
        if record.prev_hash != (GENESIS if prev is None else prev.hash):
            return Broken(
                record.seq, f"its prev_hash is not record {expected - 1}'s hash: a record before it was replaced"
            )
        prev = record
    last = prev.seq if prev is not None else 0
    if appended is not None and appended > last:
        return Broken(
            last + 1,
            f"the log ends at record {last} but {appended} were appended: the records after it were dropped",
        )
    return None


def parse_time(text: str | int) -> str:
    """An RFC 3339 time with a timezone, or epoch milliseconds, as a record's ``ts`` is written (UTC, ms).

    Records' times compare as text in that form, so a filter on them is a string comparison.

    >>> parse_time("2026-03-02T10:00:00+01:00"), parse_time(1772445600000)
    ('2026-03-02T09:00:00.000Z', '2026-03-02T10:00:00.000Z')
    >>> parse_time("yesterday")
    Traceback (most recent call last):
    ...
    ValueError: 'yesterday' is not an RFC 3339 time with a timezone (2026-03-02T09:00:00Z) nor epoch milliseconds
    """
    what = f"{text!r} is not an RFC 3339 time with a timezone (2026-03-02T09:00:00Z) nor epoch milliseconds"
    try:
        if isinstance(text, int) or (isinstance(text, str) and text.isdigit()):
            moment = datetime.fromtimestamp(int(text) / 1000, UTC)
        else:
            moment = datetime.fromisoformat(text)
            if moment.tzinfo is None:
                raise ValueError(what)
    except (ValueError, TypeError, OverflowError, OSError):
        raise ValueError(what) from None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
