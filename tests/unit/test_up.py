"""``tailor up`` without starting it: a missing feature repo, the live view's rows and values, the demo's API keys."""

from __future__ import annotations

import subprocess
import sys

from demo.live import format_value, pick_watched
from tests.support import ROOT, up_env


def test_up_without_a_feature_repo_says_what_to_do(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "up", "--seconds", "1"],
        env=up_env(tmp_path / "nowhere"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "no feature_store.yaml" in result.stderr and "TAILOR_FEATURE_REPO" in result.stderr


def test_watched_users_keep_their_rows_until_idle():
    seen = {"u1": 10.0, "u2": 50.0, "u3": 40.0, "u4": 95.0}
    assert pick_watched([], seen, 3, now=100.0) == ["u4", "u2", "u3"]
    # u1 has been idle for 90 s: its row goes to the most recently active unwatched user.
    assert pick_watched(["u1", "u2"], seen, 2, now=100.0, idle_s=60) == ["u4", "u2"]
    # Nobody better: an idle user stays rather than leaving an empty row.
    assert pick_watched(["u1"], {"u1": 0.0}, 1, now=100.0, idle_s=60) == ["u1"]


def test_values_are_formatted_for_people():
    assert format_value("spend_24h", 3.14159) == "3.14"
    assert format_value("seconds_since_last_event", None) == "-"
    assert format_value("ctr_24h", float("nan")) == "-"
    assert format_value("lifetime_events", 12) == "12"


# -- the demo's API keys: the least scope each use needs (issue 13) ------------------------------


def test_the_demo_serves_with_a_serve_only_key_and_keeps_admin_for_the_setup(tmp_path):
    from api.app import parse_api_keys
    from config.settings import Settings
    from demo.up import _demo_keys, demo_api_keys

    settings = _demo_keys(Settings(), tmp_path)
    keys = parse_api_keys(settings.api.api_keys)
    serving, setup = demo_api_keys(settings.api.api_keys)
    assert keys[serving] == {"serve"} and "admin" in keys[setup]
    assert _demo_keys(Settings(), tmp_path).api.api_keys == settings.api.api_keys  # kept between runs
    assert (tmp_path / "demo-api-keys").stat().st_mode & 0o077 == 0
    # An older demo's file held one admin key: it gets a serve key, and the admin key stays.
    old = tmp_path / "old"
    old.mkdir()
    (old / "demo-api-keys").write_text("demo-0123=admin")
    upgraded = _demo_keys(Settings(), old).api.api_keys
    serving, setup = demo_api_keys(upgraded)
    assert setup == "demo-0123" and parse_api_keys(upgraded)[serving] == {"serve"}
    assert (old / "demo-api-keys").read_text() == upgraded
    # Keys the user set are used as given, each use taking the least scope among them.
    assert demo_api_keys("boss=admin,in=ingest,both=ingest+serve,front=serve") == ("front", "boss")


def test_the_demo_loads_the_simulators_catalog_once(tmp_path, capsys):
    from config.settings import Settings
    from demo.up import load_demo_catalog
    from engine.content.catalog import CATALOG_SEED, build_catalog
    from store.catalog import SQLiteCatalog

    settings = Settings.of(feature_repo=str(tmp_path), catalog_db=str(tmp_path / "catalog.db"), redis_url="")
    load_demo_catalog(settings)
    assert "demo catalog: 400 simulated items (400 new), 400 in the catalog" in capsys.readouterr().out
    load_demo_catalog(settings)  # the next demo run: the same items, nothing new
    assert "(0 new), 400 in the catalog" in capsys.readouterr().out
    store = SQLiteCatalog(tmp_path / "catalog.db")
    try:
        assert store.get_many(["sku-000000"]) == {"sku-000000": build_catalog(CATALOG_SEED).items[0]}
    finally:
        store.close()
