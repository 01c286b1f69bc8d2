"""The background copy generator against the real stores and the tiny exported model.

Warming fills the plan; an upserted item (the webhook) gets its copy; a promotion re-warms;
a request's miss is written before warm work; a model of the old prompt is refused.
"""

from __future__ import annotations

import os
import shutil
import threading
import time

import msgspec
import pytest

from engine.content.catalog import build_catalog
from jobs.copy_generator import CopyGenerator
from models.serve.manifest import read_manifest, write_manifest
from store.catalog import open_catalog
from store.copies import CopyJob, copy_key, open_copies

pytestmark = [pytest.mark.integration, pytest.mark.model]

ITEMS = build_catalog(seed=1, n_items=3).items


@pytest.fixture
def settings(make_settings, exported, tmp_path):
    served = tmp_path / "served"
    served.symlink_to(exported[0])
    settings = make_settings(model_dir=str(served), generator_batch=16)
    catalog = open_catalog(settings)
    catalog.upsert(ITEMS)
    catalog.close()
    return settings


def version_copy(exported, folder, version: str):
    shutil.copytree(exported, folder, ignore=shutil.ignore_patterns("trained"))
    write_manifest(folder, msgspec.structs.replace(read_manifest(folder), version=version))
    return folder


def until(condition, timeout_s: float = 60.0, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every_s)


def test_warming_writes_the_whole_plan_and_nothing_twice(settings):
    writer = CopyGenerator(settings)
    try:
        planned = writer.plan()
        # Every live template with AI copy x its styles x the 3 items and no item.
        assert planned and {j.item["item_id"] if j.item else None for j in planned} == {
            None,
            *(i.item_id for i in ITEMS),
        }
        assert {j.model_version for j in planned} == {"test-1"}
        written = 0
        while step := writer.step():
            written += step
        assert written == len(planned) and writer.copies.count() == len(planned)
        assert writer.missing(planned) == [] and writer.step() == 0
    finally:
        writer.close()


def test_a_miss_is_written_before_warm_work(settings):
    writer = CopyGenerator(settings)
    copies = open_copies(settings)
    try:
        item = {"item_id": "x-1", "title": "Zephyr Jacket", "price": 59.5}
        key = copy_key("test-1", "cta-ai", 1, "email_driven", "cta", "playful", item)
        miss = CopyJob(
            key=key,
            model_version="test-1",
            template_id="cta-ai",
            template_version=1,
            style="email_driven",
            slot="cta",
            tone="playful",
            item=item,
            requested_ms=1,
        )
        assert copies.enqueue([miss]) == 1
        assert writer.step() > 0
        assert copies.get_many([key]), "the queued miss was not in the first batch"
        assert copies.queued() == 0
    finally:
        copies.close()
        writer.close()


def test_an_upserted_item_and_a_promotion_are_warmed_by_the_running_generator(settings, exported, tmp_path):
    stop = threading.Event()
    writer = CopyGenerator(settings)
    runner = threading.Thread(target=writer.run, args=(stop,))
    runner.start()
    copies = open_copies(settings)
    catalog = open_catalog(settings)
    try:
        until(lambda: writer._state is not None and not writer._todo)
        # The webhook: an item's price changes. Its facts change, so its keys are new, and written.
        changed = msgspec.structs.replace(ITEMS[0], price=ITEMS[0].price + 10)
        catalog.upsert([changed])
        key = copy_key("test-1", "headline-ai", 1, "bargain_hunter", "headline", "urgent", changed.facts())
        until(lambda: copies.get_many([key]))
        # A promotion: the served directory now points at another version; every key is new, and warmed.
        new = version_copy(exported[0], tmp_path / "v-new", "v-new")
        link = tmp_path / "served"
        tmp_link = tmp_path / ".served"
        tmp_link.symlink_to(new)
        os.replace(tmp_link, link)
        until(lambda: writer.model_version == "v-new")
        until(lambda: writer._state is not None and writer._state[0] == "v-new" and not writer._todo, 120)
        assert copies.get_many([key.replace("test-1|", "v-new|", 1)])
    finally:
        stop.set()
        runner.join(30)
        copies.close()
        catalog.close()
        writer.close()


def test_a_model_of_the_old_prompt_is_refused(make_settings, exported, tmp_path):
    old = version_copy(exported[0], tmp_path / "old", "old-1")
    write_manifest(old, msgspec.structs.replace(read_manifest(old), prompt_format=1))
    writer = CopyGenerator(make_settings(model_dir=str(old)))
    try:
        assert writer.generator is None and writer.plan() == [] and writer.step() == 0
    finally:
        writer.close()
