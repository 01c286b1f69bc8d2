"""``tailor audit verify`` and ``tailor audit list``: the hash-chained audit log of admin and privacy actions.

Both read the log the API writes (`store.audit.open_audit`: the SQLite file
``TAILOR_AUDIT_DB``, or Redis with ``TAILOR_REDIS_URL``). ``verify`` re-computes every
record's hash and link and exits 0 when the chain is intact, 1 naming the first broken
record (its seq and why), 2 when the log cannot be read or an option is wrong. ``list``
prints the records as JSON lines, oldest first.
"""

from __future__ import annotations

import json
import sys

from cli.arguments import non_negative_int, positive_int


def add_parser(subparsers) -> None:
    audit = subparsers.add_parser("audit", help="the audit log: verify its hash chain, list its records")
    audit_sub = audit.add_subparsers(dest="action", required=True)
    audit_sub.add_parser("verify", help="check the hash chain: exit 0 intact, 1 broken (which record, why), 2 error")
    listing = audit_sub.add_parser("list", help="print records as JSON lines, oldest first")
    listing.add_argument("--action", dest="kind", metavar="ACTION", help="only this action, e.g. template.create")
    listing.add_argument("--actor", help="only this actor: an API key's fingerprint, cli or system")
    listing.add_argument("--target", help="only records about this template, experiment, model version ...")
    listing.add_argument("--since", help="from this time on (RFC 3339 or epoch ms)")
    listing.add_argument("--until", help="before this time (RFC 3339 or epoch ms)")
    listing.add_argument("--after-seq", type=non_negative_int, default=0, metavar="N", help="records after seq N")
    listing.add_argument("--limit", type=positive_int, default=100, metavar="N", help="at most N records (default 100)")


def run(settings, args) -> int:
    import msgspec

    from engine.audit import check_action, check_actor, parse_time
    from store.audit import open_audit
    from store.redis_guard import StoreUnavailable

    name = f"tailor audit {args.action}"
    try:
        audit = open_audit(settings)
    except Exception as exc:  # noqa: BLE001 - a file that cannot be opened: said, exit 2
        print(f"{name}: cannot open the audit log: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    where = "Redis" if settings.redis.url else str(audit.path)
    try:
        if args.action == "verify":
            count, broken = audit.verify()
            verdict = {
                "ok": broken is None,
                "records": count,
                "first_broken": None if broken is None else {"seq": broken.seq, "reason": broken.reason},
            }
            print(json.dumps(verdict))
            if broken is not None:
                print(f"{name}: the chain breaks at record {broken.seq}: {broken.reason} ({where})", file=sys.stderr)
                return 1
            print(f"{name}: intact, {count} records ({where})", file=sys.stderr)
            return 0
        try:
            filters = {
                "action": None if args.kind is None else check_action(args.kind),
                "actor": None if args.actor is None else check_actor(args.actor),
                "since": None if args.since is None else parse_time(args.since),
                "until": None if args.until is None else parse_time(args.until),
            }
        except ValueError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 2
        records = audit.records(**filters, target=args.target, after_seq=args.after_seq, limit=args.limit)
        for record in records:
            print(msgspec.json.encode(record).decode())
        return 0
    except StoreUnavailable as exc:
        print(f"{name}: {exc.detail}", file=sys.stderr)
        return 2
    finally:
        audit.close()
