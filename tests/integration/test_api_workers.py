"""``tailor api --workers N``: N API processes on one port, each a whole API on the same stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from config.settings import settings_env
from dev.services import free_port
from tests.support import KEY, ROOT, SERVE, seed_user

pytestmark = pytest.mark.integration


def test_two_workers_share_the_port_and_answer_alike(make_settings, tmp_path):
    settings = make_settings(pseudonym_key=KEY, api_keys="server=ingest+serve", model_dir=str(tmp_path / "no-model"))
    seed_user(settings, "ann")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "api", "--workers", "2", "--port", str(port)],
        env={**os.environ, **settings_env(settings)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the API never answered"
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        workers = psutil.Process(server.pid).children()
        assert len(workers) >= 2, workers  # uvicorn's worker processes (and maybe its resource tracker)
        answers = [
            httpx.post(
                f"{base}/v1/personalize", json={"user_id": "ann", "slot": "cta"}, headers=SERVE, timeout=10
            ).json()
            for _ in range(8)
        ]
        # Whichever worker answered, the same user's features and the same content.
        assert {a["explanation"]["features"]["clicks_1h"] for a in answers} == {3}
        assert {a["content"]["text"] for a in answers} == {"Shop now"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
