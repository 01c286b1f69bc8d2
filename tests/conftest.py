"""Shared fixtures: real services on free ports, an isolated Feast repo per test."""

from __future__ import annotations

import shutil
import time
import uuid
import warnings
from pathlib import Path

import pytest

from config.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
#: The API tests' pseudonym key and API keys (a serving key and an admin key).
KEY = "0123456789abcdef0123456789abcdef"
SERVE = {"X-API-Key": "server"}
ADMIN = {"X-API-Key": "boss"}
warnings.filterwarnings("ignore", message=".*experimental.*")


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
    """A tiny copy model trained on 6,000 corpus records (about a minute): (folder, evaluation)."""
    pytest.importorskip("torch")
    from models.train.build import TrainConfig, train
    from models.train.corpus import build_corpus

    out = tmp_path_factory.mktemp("trained")
    records = build_corpus(seed=1)
    evaluation = train(
        out, TrainConfig(size="tiny", max_records=6000, lr=5e-3, seed=1, eval_samples=1), records, progress=False
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


@pytest.fixture
def api_settings(make_settings, exported):
    """Settings for an API on the session broker, a fresh Feast repo and the tiny copy model (10 s budget)."""

    def make(**overrides):
        values = {
            "pseudonym_key": KEY,
            "api_keys": "server=ingest+serve,boss=admin",
            "model_dir": str(exported[0]),
            "generation_budget_ms": 10_000.0,
        }
        return make_settings(**(values | overrides))

    return make


def now_ms() -> int:
    return int(time.time() * 1000)
