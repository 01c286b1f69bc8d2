"""Pseudonyms (keyed, stable, one-way) and consent decisions."""

import base64
import hashlib
import hmac

import msgspec
import pytest

from engine.privacy import PURPOSES, ConsentBook, ConsentRecord, Pseudonymizer, is_pseudonym

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NOW = 1_767_225_600_000
USER = "p_aaaaaaaaaaaaaaaaaaaaaaaa"


def test_pseudonym_is_the_documented_hmac():
    expected = hmac.new(KEY, b"user-42", hashlib.sha256).digest()[:15]
    assert Pseudonymizer(KEY).pseudonym("user-42") == "p_" + base64.b32encode(expected).decode().lower()


def test_pseudonym_is_stable_for_a_key_and_differs_across_keys():
    a, a_again, b = Pseudonymizer(KEY), Pseudonymizer(KEY), Pseudonymizer(OTHER_KEY)
    assert a.pseudonym("user-42") == a.pseudonym("user-42") == a_again.pseudonym("user-42")
    assert a.pseudonym("user-42") != b.pseudonym("user-42")
    assert a.pseudonym("user-42") != a.pseudonym("user-43")


def test_str_key_is_its_utf8_bytes():
    assert Pseudonymizer("k" * 32).pseudonym("u1") == Pseudonymizer(KEY).pseudonym("u1")


@pytest.mark.parametrize("user_id", ["u", "user-42", "alice@example.com", "ünïcødé-用户", "x" * 256, "p_" + "a" * 24])
def test_pseudonym_format_and_no_trace_of_the_raw_id(user_id):
    value = Pseudonymizer(KEY).pseudonym(user_id)
    assert len(value) == 26 and value.startswith("p_") and value == value.lower()
    assert is_pseudonym(value) and Pseudonymizer.is_pseudonym(value)
    assert user_id.lower() not in value or len(user_id) <= 2


def test_no_collisions_among_many_ids():
    p = Pseudonymizer(KEY)
    assert len({p.pseudonym(f"user-{i}") for i in range(20_000)}) == 20_000


@pytest.mark.parametrize(
    "value",
    [
        "user-42",
        "p_",
        "p_" + "a" * 23,
        "p_" + "a" * 25,
        "P_" + "a" * 24,
        "p_" + "a" * 23 + "1",
        "p_" + "a" * 23 + "8",
        "",
        None,
        42,
        b"p_" + b"a" * 24,
    ],
)
def test_is_pseudonym_rejects_other_forms(value):
    assert not is_pseudonym(value)


@pytest.mark.parametrize("key", [b"", b"x" * 15, "fifteen chars!!"])
def test_short_key_says_how_to_make_one(key):
    with pytest.raises(ValueError, match=r"fewer than 16; generate one with: .*secrets\.token_hex\(32\)"):
        Pseudonymizer(key)


def test_key_of_wrong_type():
    with pytest.raises(TypeError, match="bytes or str"):
        Pseudonymizer(12345678901234567890)


def test_key_never_shows_but_its_fingerprint_does():
    p = Pseudonymizer(KEY)
    assert p.key_fingerprint == hashlib.sha256(KEY).hexdigest()[:8]
    assert "k" * 16 not in repr(p) and p.key_fingerprint in repr(p)
    assert not hasattr(p, "key") and not hasattr(p, "__dict__")
    assert Pseudonymizer(OTHER_KEY).key_fingerprint != p.key_fingerprint
    with pytest.raises(AttributeError):
        p.key_fingerprint = "00000000"


@pytest.mark.parametrize(
    ("user_id", "reason"),
    [("", "empty"), ("   ", "blank"), ("x" * 257, "at most 256"), ("u\ud800", "lone surrogate")],
)
def test_bad_user_ids(user_id, reason):
    with pytest.raises(ValueError, match=reason):
        Pseudonymizer(KEY).pseudonym(user_id)


def test_non_str_user_id():
    with pytest.raises(TypeError, match="must be a str"):
        Pseudonymizer(KEY).pseudonym(42)


# -- consent -------------------------------------------------------------------


def test_opt_in_denies_until_granted():
    book = ConsentBook(policy="opt_in")
    assert not any(book.allows(USER, purpose) for purpose in PURPOSES)
    record = book.grant(USER, "personalization", "analytics", now_ms=NOW)
    assert record == ConsentRecord(user_id=USER, granted=("personalization", "analytics"), updated_ms=NOW)
    assert book.allows(USER, "personalization") and book.allows(USER, "analytics")
    assert not book.allows(USER, "experiments")
    book.revoke(USER, "analytics", now_ms=NOW + 1)
    assert not book.allows(USER, "analytics") and book.allows(USER, "personalization")


def test_opt_out_allows_until_revoked():
    book = ConsentBook(policy="opt_out")
    assert all(book.allows(USER, purpose) for purpose in PURPOSES)
    record = book.revoke(USER, "experiments", now_ms=NOW)
    assert record.revoked == ("experiments",) and record.granted == ()
    assert not book.allows(USER, "experiments") and book.allows(USER, "analytics")
    book.grant(USER, "experiments", now_ms=NOW + 1)
    assert book.allows(USER, "experiments")
    assert book.get(USER) == ConsentRecord(user_id=USER, granted=("experiments",), updated_ms=NOW + 1)


def test_decisions_are_per_user():
    book = ConsentBook()
    book.grant(USER, "analytics", now_ms=NOW)
    assert not book.allows("p_bbbbbbbbbbbbbbbbbbbbbbbb", "analytics")


def test_erase_forgets_and_says_whether_anything_was_known():
    book = ConsentBook(policy="opt_out")
    book.revoke(USER, *PURPOSES, now_ms=NOW)
    assert len(book) == 1 and not book.allows(USER, "analytics")
    assert book.erase(USER) is True
    assert book.get(USER) is None and len(book) == 0
    assert book.allows(USER, "analytics")  # the policy answers again: documented
    assert book.erase(USER) is False


def test_records_round_trip_through_json():
    book = ConsentBook()
    book.grant(USER, "analytics", "personalization", now_ms=NOW)
    book.revoke("p_bbbbbbbbbbbbbbbbbbbbbbbb", "experiments", now_ms=NOW)
    data = msgspec.json.encode(book.records())
    restored = ConsentBook(records=msgspec.json.decode(data, type=list[ConsentRecord]))
    assert restored.records() == book.records()
    assert restored.allows(USER, "analytics") and not restored.allows(USER, "experiments")


def test_record_keeps_purposes_in_order_without_repeats():
    record = ConsentRecord(user_id=USER, granted=("analytics", "personalization", "analytics"))
    assert record.granted == ("personalization", "analytics")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b'{"user_id": "p_x", "granted": ["marketing"]}', "Invalid enum value 'marketing'"),
        (b'{"user_id": "p_x", "granted": ["analytics"], "revoked": ["analytics"]}', "both granted and revoked"),
        (b'{"user_id": "p_x", "updated_ms": -1}', "updated_ms"),
        (b'{"user_id": "p_x", "colour": 1}', "colour"),
        (b'{"user_id": ""}', "user_id"),
    ],
)
def test_bad_records_are_rejected(data, reason):
    with pytest.raises(msgspec.ValidationError, match=reason):
        msgspec.json.decode(data, type=ConsentRecord)


def test_unknown_purpose_or_policy_is_a_clear_error():
    book = ConsentBook()
    with pytest.raises(ValueError, match="unknown consent purpose 'marketing'; use one of personalization"):
        book.grant(USER, "marketing", now_ms=NOW)
    with pytest.raises(ValueError, match="unknown consent purpose"):
        book.allows(USER, "marketing")
    with pytest.raises(ValueError, match="at least one consent purpose"):
        book.revoke(USER, now_ms=NOW)
    with pytest.raises(ValueError, match="opt_in, opt_out"):
        ConsentBook(policy="opt-in")
    with pytest.raises(ValueError, match="unknown consent purpose"):
        ConsentRecord(user_id=USER, revoked=("marketing",))
    with pytest.raises(ValueError, match="now_ms"):
        book.grant(USER, "analytics", now_ms=-5)
    assert len(book) == 0


# -- consent decisions on the events topic, and the flow's gate -----------------------------------


def test_a_consent_event_round_trips_and_bad_ones_say_why():
    import pickle

    from engine.features.events import InvalidEvent, decode_event
    from engine.privacy import ConsentGate, consent_change, consent_props

    props = consent_props(granted=["experiments"], revoked=["analytics", "personalization"])
    assert consent_change(props) == (("experiments",), ("personalization", "analytics"))
    good = b'{"event_id": "c1", "type": "consent", "user_id": "u1", "ts": 1700000000000, "props": %s}'
    assert decode_event(good % msgspec.json.encode(props)).props == props
    for bad, words in (
        (None, "needs props"),
        ({"granted": "analytics", "why": "x"}, "not 'why'"),
        ({"granted": 1}, "not int"),
        ({"granted": "analytics", "revoked": "analytics"}, "grants and revokes analytics"),
        ({"revoked": "cookies"}, "unknown purpose 'cookies'"),
    ):
        with pytest.raises(ValueError, match=words):
            consent_change(bad)
        body = {"event_id": "c1", "type": "consent", "user_id": "u1", "ts": 1700000000000}
        if bad is not None:
            body["props"] = bad
        with pytest.raises(InvalidEvent, match=words):
            decode_event(msgspec.json.encode(body))
    gate = ConsentGate("opt_in", granted=["analytics"])
    gate.apply(["experiments"], ["analytics"])
    again = pickle.loads(pickle.dumps(gate))
    assert (again.policy, again.granted, again.revoked) == ("opt_in", {"experiments"}, {"analytics"})
    assert not again.allows("analytics") and again.allows("experiments") and not again.allows("personalization")
    with pytest.raises(ValueError, match="opt_in, opt_out"):
        ConsentGate("maybe")


def test_the_flow_gate_applies_decisions_in_order_and_keeps_no_state_without_one():
    from engine.features.events import Event
    from engine.privacy import consent_props
    from flows.features import ConsentLogic

    def ev(eid, kind="click", **props):
        return Event(eid, kind, USER, NOW, props=consent_props(**props) if kind == "consent" else None)

    undecided = ConsentLogic("opt_out", None)
    kept, discard = undecided.on_batch([ev("a"), ev("b")])
    assert [(e.event_id, exp) for e, exp in kept] == [("a", True), ("b", True)] and discard
    logic = ConsentLogic("opt_in", None)
    batch = [ev("x"), ev("c1", "consent", granted=["analytics"]), ev("y"), ev("c2", "consent", revoked=["analytics"])]
    kept, discard = logic.on_batch(batch + [ev("z")])
    assert [(e.event_id, exp) for e, exp in kept] == [("y", False)] and not discard
    # A snapshot taken under one policy follows the policy of the run that resumes it.
    resumed = ConsentLogic("opt_out", logic.snapshot())
    assert resumed.gate.allows("experiments") and not resumed.gate.allows("analytics")
