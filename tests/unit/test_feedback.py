"""``tailor feedback export``: the point-in-time join of served_copy copy and outcomes, its weights, and its I/O (files)."""

from __future__ import annotations

import json

import msgspec
import pyarrow.parquet as pq
import pytest

from cli.main import main
from config.settings import Settings
from engine.features.events import Event, encode_event
from engine.learning.feedback import FeedbackJoin, engagement_weights, parse_cutoff, training_set
from jobs.feedback import FEEDBACK_SCHEMA, METADATA_KEY, run_feedback
from tests.support import (
    HOUR,
    MIN,
    T0,
    click,
    feedback_export_args,
    feedback_row,
    point_in_time_events,
    purchase,
    read_feedback_rows,
    served_copy,
)

# -- the join ---------------------------------------------------------------------------------------------------


def test_nothing_after_the_cutoff_counts():
    rows, summary = training_set(point_in_time_events(), cutoff_ms=T0 + 2 * HOUR)
    assert rows == [feedback_row("Half price today", impressions=1, clickers=1, converters=0, value=0.0, weight=1.0)]
    assert (summary.exposures, summary.exposures_after_cutoff) == (1, 1)
    assert (summary.outcomes_counted, summary.outcomes_after_cutoff) == (1, 2)
    # A later cut-off sees the purchase and the second copy.
    rows, summary = training_set(point_in_time_events(), cutoff_ms=T0 + 4 * HOUR)
    # Engaged users per impression 2 and 1, overall 3 / 2; with the prior of 20 impressions: 32 / 21 and 31 / 21.
    assert rows == [
        feedback_row(
            "Half price today", impressions=1, clickers=1, converters=1, value=50.0, weight=pytest.approx(32 / 31.5)
        ),
        feedback_row(
            "Deals end soon",
            impressions=1,
            clickers=1,
            weight=pytest.approx(31 / 31.5),
            first_ms=T0 + 3 * HOUR,
            last_ms=T0 + 3 * HOUR,
        ),
    ]
    assert summary.outcomes_counted == 3 and summary.outcomes_after_cutoff == 0


def test_outcomes_count_only_inside_the_window():
    events = [
        served_copy("x1", "u1", T0, "Half price today"),
        served_copy("x2", "u2", T0, "Half price today"),
        click("c1", "u1", T0 + HOUR),  # exactly at the end of a 1 h window: counts
        click("c2", "u2", T0 + HOUR + 1),  # 1 ms later: does not
        purchase("p1", "u2", T0 + 2 * HOUR, 20.0),  # nor does this
        purchase("p2", "u3", T0 + MIN, 5.0),  # u3 was never exposed
    ]
    rows, summary = training_set(events, cutoff_ms=T0 + 5 * HOUR, window_ms=HOUR)
    assert rows == [feedback_row("Half price today", impressions=2, clickers=1, weight=1.0)]
    assert (summary.outcomes_counted, summary.outcomes_outside_window, summary.outcomes_unattributed) == (1, 2, 1)


def test_attribution_picks_the_exposure_the_rules_name():
    events = [
        served_copy("x1", "u1", T0, "Old headline"),
        served_copy("x2", "u1", T0 + MIN, "Other test", experiment="footer"),
        served_copy("x3", "u1", T0 + 2 * MIN, "New headline"),
        click("c1", "u1", T0 + 3 * MIN, exposure_id="x1"),  # the exposure it names, though older
        click("c2", "u2", T0 + 3 * MIN, exposure_id="x1"),  # someone else's exposure: not counted
        click("c3", "u1", T0 + MIN + 1, experiment="hero"),  # latest hero exposure before it: x1
        purchase("p1", "u1", T0 + 90_000, 10.0),  # latest of any experiment: x2
        purchase("p2", "u1", T0 + 90_000, 7.0, experiment="hero"),  # latest hero: x1
        click("c4", "u1", T0 - 1, experiment="hero"),  # before any exposure
    ]
    rows, summary = training_set(events, cutoff_ms=T0 + HOUR)
    by_text = {r.text: r for r in rows}
    assert (by_text["Old headline"].clickers, by_text["Old headline"].converters, by_text["Old headline"].value) == (
        1,
        1,
        7.0,
    )
    assert (by_text["Other test"].clickers, by_text["Other test"].converters, by_text["Other test"].value) == (
        0,
        1,
        10.0,
    )
    assert (by_text["New headline"].clickers, by_text["New headline"].converters) == (0, 0)
    assert (summary.outcomes_counted, summary.outcomes_unattributed) == (4, 2)


def test_weights_follow_engagement_with_mean_one():
    events = []
    plan = {"Copy A": (10, 5), "Copy B": (10, 0), "Copy C": (100, 10)}  # impressions, clicking users
    for text, (shown, clicked) in plan.items():
        for i in range(shown):
            events.append(served_copy(f"{text}-x{i}", f"{text}-u{i}", T0 + i, text))
            if i < clicked:
                events.append(click(f"{text}-c{i}", f"{text}-u{i}", T0 + i + MIN))
    rows, _ = training_set(events, cutoff_ms=T0 + HOUR)
    assert [r.text for r in rows] == ["Copy A", "Copy C", "Copy B"]
    assert [round(r.weight, 4) for r in rows] == [1.7143, 0.7143, 0.5714]
    # (k + m p) / (n + m) with p = 15 / 120 and m = 20, over the mean of those rates
    assert rows[0].weight == pytest.approx((5 + 2.5) / 30 / ((7.5 / 30 + 2.5 / 30 + 12.5 / 120) / 3))
    assert sum(r.weight for r in rows) / len(rows) == pytest.approx(1.0)
    assert all(r.weight > 0 for r in rows)
    # Leaving out rarely served_copy copy re-normalises over what is kept.
    rows, summary = training_set(events, T0 + HOUR, min_impressions=50)
    assert [(r.text, r.weight) for r in rows] == [("Copy C", 1.0)] and summary.rows_below_min_impressions == 2


def test_weights_without_any_engagement_are_one_and_bad_priors_are_refused():
    assert engagement_weights([5, 1], [0, 0]).tolist() == [1.0, 1.0]
    assert engagement_weights([], []).tolist() == []
    with pytest.raises(ValueError, match="prior_impressions"):
        engagement_weights([1], [1], prior_impressions=0)


def test_duplicates_by_event_id_count_once():
    events = [
        served_copy("x1", "u1", T0, "Half price today"),
        served_copy("x1", "u1", T0, "Half price today"),
        purchase("p1", "u1", T0 + MIN, 50.0),
        purchase("p1", "u1", T0 + MIN, 50.0),
    ]
    rows, summary = training_set(events, cutoff_ms=T0 + HOUR)
    assert rows == [feedback_row("Half price today", impressions=1, converters=1, value=50.0, weight=1.0)]
    assert summary.duplicates == 2 and summary.events == 4


def test_default_copy_and_feed_impressions_are_counted_not_trained_on():
    events = [
        served_copy("x1", "u1", T0, "Half price today"),
        served_copy("x2", "u1", T0 + MIN, "Welcome", generated=False),  # the template's default copy
        click("c1", "u1", T0 + 2 * MIN),  # credited to x2, the latest
        Event("f1", "impression", "u1", T0, item_id="sku-1"),  # a feed impression: no served_copy copy
        Event("f2", "click", "u1", T0 + MIN, item_id="sku-1"),  # a click on the feed, not on content
    ]
    rows, summary = training_set(events, cutoff_ms=T0 + HOUR)
    assert rows == [feedback_row("Half price today", impressions=1, weight=1.0)]
    assert (summary.exposures, summary.exposures_generated, summary.exposures_default_copy) == (2, 1, 1)
    assert (summary.outcomes_counted, summary.outcomes_on_default_copy) == (0, 1)
    assert (summary.impressions_without_copy, summary.clicks_not_on_content) == (1, 1)


def test_every_slot_of_an_exposure_is_a_row_and_shares_its_outcomes():
    both = served_copy("x1", "u1", T0, "Half price today", more={"copy.cta": "Grab it"})
    rows, _ = training_set([both, click("c1", "u1", T0 + MIN)], cutoff_ms=T0 + HOUR)
    assert sorted((r.slot, r.text, r.clickers) for r in rows) == [
        ("cta", "Grab it", 1),
        ("headline", "Half price today", 1),
    ]


def test_cutoff_parsing():
    assert parse_cutoff("2026-01-01T02:00:00Z") == parse_cutoff("2026-01-01T03:00:00+01:00") == T0 + 2 * HOUR
    assert parse_cutoff(str(T0)) == T0
    for text, says in [("yesterday", "RFC 3339"), ("2026-01-01T02:00:00", "time zone"), ("1767225600", "seconds")]:
        with pytest.raises(ValueError, match=says):
            parse_cutoff(text)


# -- the command: JSONL, Kafka, bad input --------------------------------------------------------------------------


def test_export_from_a_jsonl_file(tmp_path, capsys):
    events = tmp_path / "events.jsonl"
    lines = [encode_event(e) for e in point_in_time_events()]
    lines[2:2] = [b"", b'{"event_id": "bad", "type": "clik", "user_id": "u1", "ts": 1767225600000}', b"not json"]
    events.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out" / "feedback.parquet"
    assert (
        main(["feedback", "export", "--events", str(events), "--cutoff", "2026-01-01T02:00:00Z", "--out", str(out)])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert read_feedback_rows(out) == [feedback_row("Half price today", impressions=1, clickers=1, weight=1.0)]
    assert pq.read_schema(out).remove_metadata() == FEEDBACK_SCHEMA
    assert summary["rows"] == 1 and summary["exposures"] == 1 and summary["outcomes_counted"] == 1
    assert summary["outcomes_after_cutoff"] == 2 and summary["exposures_after_cutoff"] == 1
    assert summary["bad_events"] == 2 and summary["bad_reasons"][0].startswith("line 4: Invalid enum value 'clik'")
    assert summary["cutoff"] == "2026-01-01T02:00:00Z" and summary["cutoff_ms"] == T0 + 2 * HOUR
    assert summary["window_h"] == 24 and summary["path"] == str(out)
    assert json.loads(pq.read_schema(out).metadata[METADATA_KEY]) == summary


def test_export_joins_each_rows_item_facts_from_the_catalog(tmp_path, capsys):
    from engine.content.catalog import Item
    from models.train.retrain import _feedback_item
    from store.catalog import SQLiteCatalog

    shell = Item("i-1", "Acme Rain Shell", "Acme", "outerwear", 120.0, 25)
    catalog_db = tmp_path / "catalog.db"
    store = SQLiteCatalog(str(catalog_db))
    store.upsert([shell])
    store.close()
    events = [
        served_copy("x1", "u1", T0, "Acme Rain Shell, now 90.00"),
        served_copy("x2", "u2", T0 + MIN, "Acme Rain Shell, now 90.00"),  # same text, no item: its own row
        served_copy("x3", "u3", T0 + 2 * MIN, "Gone, now 5.00"),  # an item the catalog no longer holds
    ]
    events[0] = msgspec.structs.replace(events[0], item_id="i-1")
    events[2] = msgspec.structs.replace(events[2], item_id="i-404")
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(encode_event(e) for e in events) + b"\n")
    out = tmp_path / "feedback.parquet"
    settings = Settings.of(brokers="", catalog_db=str(catalog_db))
    args = feedback_export_args("--events", str(path), "--cutoff", "2026-01-01T02:00:00Z", "--out", str(out))
    assert run_feedback(settings, args) == 0
    summary = json.loads(capsys.readouterr().out)
    table = {(r["text"], r["item_id"]): r["item"] for r in pq.read_table(out).to_pylist()}
    assert set(table) == {
        ("Acme Rain Shell, now 90.00", "i-1"),
        ("Acme Rain Shell, now 90.00", ""),
        ("Gone, now 5.00", "i-404"),
    }
    assert _feedback_item(table["Acme Rain Shell, now 90.00", "i-1"]) == shell.facts()
    assert table["Acme Rain Shell, now 90.00", ""] is None and table["Gone, now 5.00", "i-404"] is None
    assert summary["rows"] == 3 and summary["items_not_in_catalog"] == 1


def test_since_leaves_out_older_events_in_the_join():

    join = FeedbackJoin(cutoff_ms=T0 + 4 * HOUR, window_ms=24 * HOUR, since_ms=T0 + 2 * HOUR)
    for event in point_in_time_events():
        join.add(event)
    rows, summary = join.result()
    # x1 and c1 are older than since; so is nothing else: x2 and c2 make the one feedback_row, p1 has no exposure.
    assert [r.text for r in rows] == ["Deals end soon"] and rows[0].clickers == 1
    assert (summary.events, summary.events_before_since, summary.outcomes_unattributed) == (5, 2, 1)
    with pytest.raises(ValueError, match="before the cut-off"):
        FeedbackJoin(cutoff_ms=T0, since_ms=T0 + 1)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--events", "/nonexistent/events.jsonl"], "cannot read '/nonexistent/events.jsonl'"),
        (["--events", "/tmp"], "not a file"),
        (["--cutoff", "yesterday"], "neither RFC 3339"),
        (["--cutoff", "1767225600"], "seconds? multiply by 1000"),
    ],
)
def test_bad_input_is_a_clear_error_with_code_2(argv, says, capsys):
    assert run_feedback(Settings.of(brokers=""), feedback_export_args(*argv)) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and err.count("\n") == 1


def test_unreadable_or_unwritable_files_are_code_2(tmp_path, capsys, monkeypatch):
    events = tmp_path / "events.jsonl"
    events.write_bytes(encode_event(served_copy("x1", "u1", T0, "Hi")) + b"\n")

    def refuse(*_args, **_kw):
        raise PermissionError(13, "Permission denied")

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = run_feedback(
        Settings.of(brokers=""), feedback_export_args("--events", str(events), "--out", str(blocker / "x.parquet"))
    )
    assert code == 2 and "cannot write" in capsys.readouterr().err
    monkeypatch.setattr("jobs.feedback.events_of_file", refuse)
    assert run_feedback(Settings.of(brokers=""), feedback_export_args("--events", str(events))) == 2
    assert "Permission denied" in capsys.readouterr().err


def test_no_broker_and_no_file_says_what_to_do(capsys):
    assert run_feedback(Settings.of(brokers=""), feedback_export_args()) == 2
    assert "--events FILE" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        feedback_export_args("--window-h", "0")
    assert exit_.value.code == 2


def test_the_join_uses_no_event_of_a_user_without_analytics_consent():
    from engine.privacy import consent_props

    def consent(eid, user, ts, **purposes):
        return Event(eid, "consent", user, ts, props=consent_props(**purposes))

    def shown(eid, user, ts):
        return Event(eid, "impression", user, ts, experiment="hero", props={"generated": True, "copy.headline": "Hi"})

    events = [
        shown("a1", "ann", T0),  # before her revocation: used
        consent("c1", "ann", T0 + 1, revoked=["analytics"]),
        shown("a2", "ann", T0 + 2),
        shown("b1", "bob", T0 + 3),
        consent("c2", "cat", T0 + 4, granted=["analytics"]),
        shown("k1", "cat", T0 + 5),
    ]
    for policy, used, without in (("opt_out", 3, 1), ("opt_in", 1, 3)):
        join = FeedbackJoin(cutoff_ms=T0 + HOUR, consent_policy=policy)
        for event in events:
            join.add(event)
        _, summary = join.result()
        assert (summary.exposures, summary.without_consent, summary.consent_decisions) == (used, without, 2), policy
    with pytest.raises(ValueError, match="opt_in, opt_out"):
        FeedbackJoin(cutoff_ms=T0 + HOUR, consent_policy="never")
