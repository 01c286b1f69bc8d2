"""``tailor catalog load``: the simulator's catalog into the store, once (loading again changes nothing)."""

from __future__ import annotations

from cli.main import main
from engine.content.catalog import CATALOG_SEED, build_catalog
from store.catalog import SQLiteCatalog


def test_load_writes_the_simulators_catalog_and_again_changes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TAILOR_REDIS_URL", raising=False)
    monkeypatch.setenv("TAILOR_CATALOG_DB", str(tmp_path / "catalog.db"))
    assert main(["catalog", "load", "--items", "40", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"loaded 40 items (seed {CATALOG_SEED}) into the catalog in {tmp_path / 'catalog.db'}")
    assert "40 created, 0 updated, 0 unchanged; 40 items in all" in out
    assert main(["catalog", "load", "--items", "40"]) == 0
    assert "0 created, 0 updated, 40 unchanged" in capsys.readouterr().out
    store = SQLiteCatalog(tmp_path / "catalog.db")
    try:
        assert store.list(limit=100) == list(build_catalog(CATALOG_SEED, 40).items)
    finally:
        store.close()
    assert main(["catalog", "load", "--items", "50", "--seed", "3", "--quiet"]) == 0
    assert "50 items in all" in capsys.readouterr().out  # another seed: the same ids, rewritten
