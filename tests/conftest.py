"""Shared fixtures: real services on free ports, an isolated Feast repo per test."""

from __future__ import annotations

import random
import shutil
import uuid
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

from config.settings import Settings
from tests.support import KEY, ROOT, write_feedback

warnings.filterwarnings("ignore", message=".*experimental.*")
#: Fixtures that train or export a copy model: a test that asks for one is a `model` test.
MODEL_FIXTURES = {"trained", "exported", "weak", "tiny"}


def pytest_collection_modifyitems(items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


@pytest.fixture(scope="session")
def broker():
    """One Tansu broker (memory storage) for the session; tests use their own topics."""
    from dev.services import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def redis_server():
    from dev.services import RedisServer

    with RedisServer() as r:
        yield r


@pytest.fixture
def feature_repo(tmp_path) -> Path:
    """A copy of feature_repo/feature_store.yaml in a temporary folder (data lands there)."""
    repo = tmp_path / "feature_repo"
    repo.mkdir()
    shutil.copy(ROOT / "feature_repo" / "feature_store.yaml", repo)
    return repo


@pytest.fixture
def make_settings(broker, feature_repo):
    """Settings on the session broker with fresh topics and an applied Feast repo."""

    def make(**overrides) -> Settings:
        from flows.kafka import ensure_topics
        from store.feast import apply_definitions, open_store

        tag = uuid.uuid4().hex[:8]
        values = {
            "brokers": broker.address,
            "topic": f"events-{tag}",
            "dlq_topic": f"dlq-{tag}",
            "drift_topic": f"drift-{tag}",
            "feature_repo": str(feature_repo),
            "partitions": 3,
        }
        values.update(overrides)
        settings = Settings.of(**values)
        apply_definitions(open_store(settings))
        ensure_topics(
            settings.kafka.brokers,
            [settings.kafka.topic, settings.kafka.dlq_topic, settings.kafka.drift_topic],
            settings.kafka.partitions,
        )
        return settings

    return make


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny copy model trained on 24,000 corpus records, two epochs (about 2.5 minutes): (folder, evaluation).

    Measured: holdout perplexity 1.93, tone obedience 0.86, greedy fact precision 0.52 and item
    mention 0.67 (6,000 records, one epoch: 84.9, 0.09, 0.61 and 0.0, and it ignored the tone token).
    """
    pytest.importorskip("torch")
    from models.train.build import TrainConfig, train
    from models.train.corpus import build_corpus

    out = tmp_path_factory.mktemp("trained")
    records = build_corpus(seed=1)
    evaluation = train(
        out,
        TrainConfig(size="tiny", max_records=24000, epochs=2, lr=5e-3, seed=1, eval_samples=1),
        records,
        progress=False,
    )
    return out, evaluation


@pytest.fixture(scope="session")
def exported(request, tmp_path_factory):
    """``trained`` exported to ONNX with int8 quantization: (folder, manifest).

    Set TAILOR_TEST_MODEL to a folder to keep it between runs (built there once).
    """
    import os

    from models.serve.manifest import ModelDirError, read_manifest
    from models.train.export import export

    keep = os.environ.get("TAILOR_TEST_MODEL")
    if keep:
        try:
            return Path(keep), read_manifest(keep)
        except ModelDirError:
            pass
    out = Path(keep) if keep else tmp_path_factory.mktemp("onnx")
    manifest = export(request.getfixturevalue("trained")[0], out, quantize=True, version="test-1")
    return out, manifest


@pytest.fixture(scope="module")
def weak(tmp_path_factory):
    """A deliberately undertrained tiny model (300 records, one epoch), exported int8, and feedback files.

    Its catalog has 40 items: a 7,680-record corpus, where the holdout split by item works as on the full one.
    """
    pytest.importorskip("torch")
    from engine.content.catalog import build_catalog
    from models.serve.registry import TRAINED
    from models.train.build import TrainConfig, train
    from models.train.corpus import CopyRecord, build_corpus, split_holdout
    from models.train.export import export

    root = tmp_path_factory.mktemp("weak")
    records = build_corpus(seed=1, catalog=build_catalog(seed=1, n_items=40))
    train(
        root / TRAINED,
        TrainConfig(size="tiny", max_records=300, lr=5e-3, seed=1, eval_samples=1),
        records,
        progress=False,
    )
    export(root / TRAINED, root / "onnx", quantize=True, version="weak-1")
    corpus_train, _ = split_holdout(records, 0.1, seed=1)
    good = random.Random(0).sample(corpus_train, 1500)
    rng = random.Random(1)
    # Letters only: no number, capital or product word, so the fact check keeps every row.
    words = ["zq" + "".join(chr(97 + (i // 26**k) % 26) for k in range(3)) for i in range(3000)]
    garbage = [CopyRecord(r.segment, r.slot, r.tone, r.item_id, " ".join(rng.choices(words, k=8))) for r in good]
    summary = {b"tailor.feedback": b'{"rows": 1500, "cutoff_ms": 1800000000000}'}
    return SimpleNamespace(
        records=records,
        trained=root / TRAINED,
        onnx=root / "onnx",
        good=write_feedback(root / "good.parquet", good, metadata=summary),
        garbage=write_feedback(root / "garbage.parquet", garbage),
    )


@pytest.fixture
def api_settings(make_settings, exported):
    """Settings for an API on the session broker, a fresh Feast repo and the tiny copy model."""

    def make(**overrides):
        values = {
            "pseudonym_key": KEY,
            "api_keys": "server=ingest+serve,boss=admin",
            "model_dir": str(exported[0]),
        }
        return make_settings(**(values | overrides))

    return make
