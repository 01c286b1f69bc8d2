"""The model registry (atomic promotion, run records) and `tailor retrain` against tiny models built here."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from models.serve.manifest import Manifest, ModelDirError, read_manifest, write_manifest
from models.serve.registry import (
    RUNS,
    TRAINED,
    RegistryError,
    RunRecord,
    current_version,
    promote,
    record_run,
    runs,
    trained_weights,
    version_dir,
    versions,
)
from tests.support import retrain_config, write_feedback


def _fake_model(folder: Path, version: str, *, created: str = "", trained: str = "") -> Path:
    """A directory `read_manifest` accepts (no real weights: promotion never loads them)."""
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx")
    (folder / "tokenizer.json").write_text("{}")
    write_manifest(
        folder,
        Manifest(
            version=version,
            base="scratch",
            corpus_hash="00",
            eos_token_id=0,
            pad_token_id=1,
            vocab_size=10,
            created=created or version,
            trained=trained,
        ),
    )
    return folder


def _fake_weights(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


# -- the registry (no torch) ----------------------------------------------------


def test_promote_flips_atomically_while_readers_resolve_and_read(tmp_path):
    registry = tmp_path / "registry"
    targets = [_fake_model(version_dir(registry, v), v) for v in ("v1", "v2")]
    model_dir = tmp_path / "serve" / "onnx"
    promote(model_dir, targets[0])  # no model directory yet: the link is created
    seen, failures, stop = set(), [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(read_manifest(os.path.realpath(model_dir)).version)  # as the API polls
                read_manifest(model_dir)  # and through the link itself
            except Exception as exc:  # noqa: BLE001 - any failure is what this test looks for
                failures.append(repr(exc))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    try:
        for i in range(400):
            promote(model_dir, targets[i % 2])
    finally:
        stop.set()
        for r in readers:
            r.join()
    assert failures == [] and seen == {"v1", "v2"}
    assert model_dir.is_symlink() and current_version(model_dir) == "v2"
    assert not os.path.isabs(os.readlink(model_dir))  # relative: the tree can move
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["onnx"]  # no temporary links left behind


def test_first_promotion_moves_the_real_directory_into_the_registry_with_its_weights(tmp_path):
    registry = tmp_path / "registry"
    models = tmp_path / "models"
    model_dir = _fake_model(models / "onnx", "v0", created="2026-01-01")
    _fake_weights(models / TRAINED)  # found as <model_dir>/../trained
    (models / TRAINED / "model.safetensors").write_bytes(b"w")
    new = _fake_model(version_dir(registry, "v1"), "v1", created="2026-02-01")
    failures, stop = [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                read_manifest(model_dir)
            except ModelDirError as exc:
                failures.append(str(exc))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert promote(model_dir, new) == new.resolve()
    finally:
        stop.set()
        reader.join()
    assert failures == []
    assert model_dir.is_symlink() and current_version(model_dir) == "v1"
    old = version_dir(registry, "v0")
    assert read_manifest(old).version == "v0" and (old / TRAINED / "model.safetensors").read_bytes() == b"w"
    assert versions(registry) == ["v0", "v1"]
    assert trained_weights(old) == old / TRAINED
    promote(model_dir, old)  # and back: rollback is a promotion
    assert current_version(model_dir) == "v0"


def test_promote_refuses_what_cannot_be_served_and_a_stale_expectation(tmp_path):
    registry = tmp_path / "registry"
    model_dir = tmp_path / "onnx"
    v1 = _fake_model(version_dir(registry, "v1"), "v1")
    v2 = _fake_model(version_dir(registry, "v2"), "v2")
    broken = version_dir(registry, "broken")
    broken.mkdir()
    promote(model_dir, v1)
    with pytest.raises(ModelDirError, match="no manifest.json"):
        promote(model_dir, broken)
    with pytest.raises(RegistryError, match="another run promoted meanwhile"):
        promote(model_dir, v2, expect_current="v0")
    with pytest.raises(RegistryError, match="not in a registry"):
        promote(model_dir, _fake_model(tmp_path / "elsewhere", "v3"))
    assert current_version(model_dir) == "v1"
    promote(model_dir, v2, expect_current="v1")
    assert current_version(model_dir) == "v2" and versions(registry) == ["v1", "v2"]  # "broken" is no version
    with pytest.raises(RegistryError, match="cannot name"):
        version_dir(registry, "../x")


def test_a_real_directory_whose_version_is_already_in_the_registry_is_left_alone(tmp_path):
    registry = tmp_path / "registry"
    model_dir = _fake_model(tmp_path / "onnx", "v1")
    _fake_model(version_dir(registry, "v1"), "v1")
    v2 = _fake_model(version_dir(registry, "v2"), "v2")
    with pytest.raises(RegistryError, match="already exists"):
        promote(model_dir, v2)
    assert not model_dir.is_symlink() and current_version(model_dir) == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["onnx", "registry"]


def test_current_version_and_trained_weights_lookup(tmp_path):
    assert current_version(tmp_path / "none") is None
    models = tmp_path / "models"
    named = _fake_weights(tmp_path / "named")
    model_dir = _fake_model(models / "onnx", "v1", trained=str(named))
    assert current_version(model_dir) == "v1"
    assert trained_weights(model_dir) == named  # the manifest's path first
    inside = _fake_weights(model_dir / TRAINED)
    shutil.rmtree(named)
    assert trained_weights(model_dir) == inside  # then <dir>/trained
    shutil.rmtree(inside)
    beside = _fake_weights(models / TRAINED)
    assert trained_weights(model_dir) == beside  # then <dir>/../trained
    shutil.rmtree(beside)
    assert trained_weights(model_dir) is None


def test_run_records_append_and_read_back(tmp_path):
    first = RunRecord(
        run_id="a",
        started="2026-01-01T00:00:00+00:00",
        trigger="drift",
        reason="drift: x",
        metrics={"current": {"holdout_perplexity": 3.0}},
        decision="refused: ...",
    )
    second = RunRecord(run_id="b", started="2026-01-02T00:00:00+00:00", promoted=True)
    assert runs(tmp_path) == []
    record_run(tmp_path, first)
    record_run(tmp_path, second)
    assert runs(tmp_path) == [first, second]
    lines = (tmp_path / RUNS).read_bytes().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["trigger"] == "drift"
    with open(tmp_path / RUNS, "ab") as f:
        f.write(b"{not json\n")
    with pytest.raises(RegistryError, match=r"runs.jsonl:3 is not a run record"):
        runs(tmp_path)


# -- tailor retrain (tiny models) -----------------------------------------------


@pytest.fixture
def served(weak, tmp_path):
    """A copy of the weak model as a real TAILOR_MODEL_DIR (its manifest names the weights), and a registry."""
    model_dir = tmp_path / "models" / "onnx"
    shutil.copytree(weak.onnx, model_dir)
    return SimpleNamespace(model_dir=model_dir, registry=tmp_path / "registry")


@pytest.mark.model
def test_retrain_promotes_a_better_model(weak, served):
    from models.serve.runtime import Generator
    from models.train.retrain import retrain

    # A two-layer model after a few dozen steps samples tone words about as often as chance
    # (~0.15, noise about +-0.05 on 128 texts), so obedience gets a wide tolerance here; the
    # rule itself is tested in test_retrain_policy.py. Perplexity must fall a lot.
    record = retrain(
        served.model_dir,
        served.registry,
        feedback=weak.good,
        reason="weekly feedback",
        config=retrain_config(metric_tolerance=0.1),
        records=weak.records,
        progress=False,
    )
    current, candidate = record.metrics["current"], record.metrics["candidate"]
    print(json.dumps(record.metrics))
    assert record.promoted and record.decision.startswith("promoted: ") and record.error == ""
    assert candidate["holdout_perplexity"] < 0.7 * current["holdout_perplexity"]
    assert current["holdout_records"] == candidate["holdout_records"] > 600  # the same holdout, feedback rows added
    assert record.current_version == "weak-1" and record.trigger == "manual" and record.reason == "weekly feedback"
    assert record.data.rows == 1500 and record.data.feedback_draws + record.data.replay_rows == 800
    assert record.data.sha256 == hashlib.sha256(weak.good.read_bytes()).hexdigest()
    assert record.data.cutoff_ms == 1_800_000_000_000 and record.data.holdout_rows > 0  # the export's summary

    # The model directory now resolves to the new version, exported like the old one, weights inside.
    new = version_dir(served.registry, record.candidate_version)
    assert served.model_dir.is_symlink() and Path(os.path.realpath(served.model_dir)) == new.resolve()
    manifest = read_manifest(served.model_dir)
    assert manifest.version == record.candidate_version and manifest.quantized and manifest.trained == TRAINED
    assert manifest.metrics["holdout_perplexity"] == candidate["holdout_perplexity"]
    assert trained_weights(served.model_dir) == new.resolve() / TRAINED
    # The first promotion moved the old directory into the registry.
    assert versions(served.registry) == ["weak-1", record.candidate_version]
    assert (trained_weights(version_dir(served.registry, "weak-1")) / "model.safetensors").is_file()
    assert runs(served.registry) == [record]
    # What the API loads: the new version generates.
    result = Generator(served.model_dir).generate(["<seg=bargain_hunter> <slot=cta> <tone=urgent>"], max_new_tokens=8)[
        0
    ]
    assert result.tokens


@pytest.mark.model
def test_retrain_refuses_a_worse_model_and_leaves_the_served_one(weak, served):
    from models.train.retrain import retrain

    before = sorted(p.name for p in served.model_dir.iterdir())
    record = retrain(
        served.model_dir,
        served.registry,
        feedback=weak.garbage,
        trigger="drift",
        reason="drift: x",
        config=retrain_config(replay=0.0),
        records=weak.records,
        progress=False,
    )
    current, candidate = record.metrics["current"], record.metrics["candidate"]
    print(json.dumps(record.metrics))
    assert not record.promoted and record.candidate_version == "" and record.error == ""
    assert record.decision.startswith("refused: ") and "holdout perplexity" in record.decision
    assert candidate["holdout_perplexity"] > current["holdout_perplexity"]
    assert record.data.replay_rows == 0 and record.trigger == "drift"
    assert not served.model_dir.is_symlink() and current_version(served.model_dir) == "weak-1"
    assert sorted(p.name for p in served.model_dir.iterdir()) == before
    assert versions(served.registry) == [] and runs(served.registry) == [record]
    assert [p.name for p in served.registry.iterdir() if p.name.startswith(".staging")] == []


@pytest.mark.model
def test_dry_run_evaluates_but_never_promotes(weak, served):
    from models.train.retrain import retrain

    record = retrain(
        served.model_dir,
        served.registry,
        feedback=weak.good,
        records=weak.records,
        progress=False,
        config=retrain_config(max_records=200, epochs=1, dry_run=True, metric_tolerance=1.0),
    )
    assert record.decision.startswith("dry run, would ") and not record.promoted
    assert set(record.metrics) == {"current", "candidate"}
    assert not served.model_dir.is_symlink() and versions(served.registry) == []


@pytest.mark.model
def test_missing_trained_weights_is_a_clear_recorded_error(weak, tmp_path):
    from models.train.retrain import RetrainError, retrain

    model_dir = tmp_path / "onnx"
    shutil.copytree(weak.onnx, model_dir)
    write_manifest(model_dir, msgspec.structs.replace(read_manifest(model_dir), trained="/nowhere/trained"))
    registry = tmp_path / "registry"
    with pytest.raises(RetrainError, match="no torch weights for model weak-1") as info:
        retrain(model_dir, registry, feedback=weak.good, config=retrain_config(), progress=False)
    (record,) = runs(registry)
    assert record == info.value.record and "no torch weights" in record.error and "/nowhere/trained" in record.error
    assert not record.promoted and record.current_version == "weak-1" and record.finished


@pytest.mark.model
def test_unusable_feedback_and_missing_model_are_clear_errors(weak, served, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from models.train.corpus import CopyRecord
    from models.train.retrain import RetrainError, read_feedback, retrain

    no_weight = tmp_path / "no-weight.parquet"
    pq.write_table(
        pa.table({"style": ["email_driven"], "slot": ["cta"], "tone": ["urgent"], "text": ["Hurry"]}), no_weight
    )
    with pytest.raises(RetrainError, match="lacks the feedback column.s. weight"):
        retrain(served.model_dir, served.registry, feedback=no_weight, config=retrain_config(), progress=False)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(RetrainError, match="is not a Parquet feedback file"):
        read_feedback(junk)
    odd = write_feedback(tmp_path / "odd.parquet", [], [])
    with pytest.raises(RetrainError, match="no usable feedback rows"):
        read_feedback(odd)
    rows = [
        CopyRecord("email_driven", "cta", "urgent", "x", "Hurry, see picks"),
        CopyRecord("nobody", "cta", "urgent", "x", "Hurry"),
        CopyRecord("email_driven", "cta", "urgent", "x", " "),
        CopyRecord("email_driven", "cta", "urgent", "x", "Shop now"),
    ]
    mixed = read_feedback(write_feedback(tmp_path / "mixed.parquet", rows, [2.0, 1.0, 1.0, 0.0]))
    assert [r.text for r in mixed.records] == ["Hurry, see picks"] and mixed.weights == [2.0]
    assert mixed.skipped == 3 and mixed.cutoff_ms == 1_700_000_000_003  # no summary: the newest last_ms
    with pytest.raises(RetrainError, match="no model directory"):
        retrain(tmp_path / "nothing", served.registry, config=retrain_config(), progress=False)
    assert [bool(r.error) for r in runs(served.registry)] == [True, True]


@pytest.mark.model
def test_cli_prints_the_record_and_exits_2_on_user_errors(weak, tmp_path, monkeypatch, capsys):
    from cli.main import main

    monkeypatch.setenv("TAILOR_MODEL_DIR", str(tmp_path / "nothing"))
    monkeypatch.setenv("TAILOR_MODEL_REGISTRY", str(tmp_path / "registry"))
    assert main(["retrain", "--feedback", str(tmp_path / "missing.parquet")]) == 2
    assert "no feedback file at" in capsys.readouterr().err
    assert main(["retrain", "--reason", "try"]) == 2
    out, err = capsys.readouterr()
    record = json.loads(out)
    assert record["reason"] == "try" and "no model directory" in record["error"]
    assert "no model directory" in err and "Traceback" not in err
    monkeypatch.setenv("TAILOR_RETRAIN_PPL_TOLERANCE", "-1")
    assert main(["retrain"]) == 2
    assert "TAILOR_RETRAIN_PPL_TOLERANCE" in capsys.readouterr().err
