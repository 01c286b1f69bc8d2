"""Hot swap: a promoted model's copy is served without a restart and without a failed request."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import msgspec
import pytest
from litestar.testing import AsyncTestClient, TestClient

from api.app import create_app
from models.serve.manifest import read_manifest, write_manifest
from tests.support import ADMIN, ITEM, SERVE, write_queued_copy

pytestmark = [pytest.mark.integration, pytest.mark.model]


def registry_with(exported: Path, root: Path, versions: list[str]) -> Path:
    """A registry whose versions are copies of the test model, each with its own version in the manifest."""
    for version in versions:
        folder = root / "versions" / version
        shutil.copytree(exported, folder, ignore=shutil.ignore_patterns("trained"))
        write_manifest(folder, msgspec.structs.replace(read_manifest(folder), version=version))
    return root


def point(link: Path, target: Path) -> None:
    """What promotion does: a new symlink renamed over the old one (atomic)."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.symlink_to(target)
    os.replace(tmp, link)


def test_a_promoted_model_is_swapped_in_under_load_and_no_request_fails(api_settings, exported, tmp_path):
    registry = registry_with(exported[0], tmp_path / "registry", ["v-old", "v-new"])
    served = tmp_path / "served"
    served.symlink_to(registry / "versions" / "v-old")
    settings = api_settings(model_dir=str(served), model_registry=str(registry), model_reload_s=0.05)

    async def main() -> list[dict]:
        async with AsyncTestClient(app=create_app(settings)) as client:

            async def one(n: int) -> dict:
                # A new item per request: a cache miss, queued for the generator under the version served.
                body = {
                    "user_id": f"u{n % 7}",
                    "slot": "headline",
                    "items": [{"item_id": f"item-{n}", "title": "Trail Shoe", "category": "shoes"}],
                }
                r = await client.post("/v1/personalize", json=body, headers=SERVE)
                assert r.status_code == 200, r.text
                return r.json()

            answers, n = [], 0
            flipped = None
            while True:
                answers += await asyncio.gather(*(one(n + i) for i in range(16)))
                n += 16
                if flipped is None and n >= 64:
                    point(served, registry / "versions" / "v-new")  # mid-stream
                    flipped = time.monotonic()
                if flipped is not None and answers[-1]["model_version"] == "v-new":
                    break
                assert flipped is None or time.monotonic() - flipped < 30, "the new model was never picked up"
            return answers + list(await asyncio.gather(*(one(n + i) for i in range(16))))

    answers = asyncio.run(main())
    versions = [a["model_version"] for a in answers]
    assert versions[0] == "v-old" and set(versions[-16:]) == {"v-new"}
    # Once swapped, never back; and no request failed: each missed, answered at once, and said why.
    assert "v-old" not in versions[versions.index("v-new") :]
    reasons = {f["reason"][:17] for a in answers for f in a["explanation"]["fallbacks"]}
    assert reasons == {"not generated yet"}, reasons


def test_a_broken_promotion_keeps_the_old_model_serving(api_settings, exported, tmp_path):
    registry = registry_with(exported[0], tmp_path / "registry", ["v-old", "v-broken"])
    (registry / "versions" / "v-broken" / "tokenizer.json").unlink()
    served = tmp_path / "served"
    served.symlink_to(registry / "versions" / "v-old")
    settings = api_settings(model_dir=str(served), model_registry=str(registry), model_reload_s=0.05)
    with TestClient(app=create_app(settings)) as client:
        point(served, registry / "versions" / "v-broken")
        time.sleep(0.5)  # ten checks
        r = client.post("/v1/personalize", json={"user_id": "u1", "slot": "headline"}, headers=SERVE)
        assert r.status_code == 200 and r.json()["model_version"] == "v-old"
        assert client.get("/readyz").json()["model"] == "ok"


def test_an_arm_can_generate_with_another_model_version(api_settings, exported, tmp_path):
    """An arm's model_version keys its copy under that version; the generator loads it from the registry."""
    registry = registry_with(exported[0], tmp_path / "registry", ["v-old", "v-new"])
    served = tmp_path / "served"
    served.symlink_to(registry / "versions" / "v-old")
    settings = api_settings(model_dir=str(served), model_registry=str(registry))
    body = {
        "id": "models",
        "slot": "headline",
        "arms": [{"name": "current"}, {"name": "next", "model_version": "v-new"}],
    }

    def round_of(client) -> list[dict]:
        return [
            client.post(
                "/v1/personalize", json={"user_id": f"u{n}", "slot": "headline", "items": [ITEM]}, headers=SERVE
            ).json()
            for n in range(12)
        ]

    with TestClient(app=create_app(settings)) as client:
        assert client.post("/v1/experiments", json=body, headers=ADMIN).status_code == 201
        assert client.post("/v1/experiments/models/start", headers=ADMIN).status_code == 200
        first = round_of(client)
        assert {(a["variant"], a["model_version"]) for a in first} == {("current", "v-old"), ("next", "v-new")}
        assert all(not a["cached"] for a in first)
        write_queued_copy(client, settings)
        again = round_of(client)
        assert all(a["cached"] for a in again), [a["explanation"]["fallbacks"] for a in again]
        assert {(a["variant"], a["model_version"]) for a in again} == {("current", "v-old"), ("next", "v-new")}
