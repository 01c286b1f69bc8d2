"""``tailor up`` end to end: broker, Feast, flow and traffic start, features flow, all stops."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest

from tests.support import ROOT, up_env

pytestmark = pytest.mark.integration


def processes_mentioning(text: str) -> list[str]:
    """Processes other than this one whose command line or environment contains ``text``."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            seen = " ".join(proc.info["cmdline"] or []) + " ".join(proc.environ().values())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if text in seen:
            found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'] or [])}")
    return found


def lifetime_events(output: str) -> list[int]:
    return [int(n) for n in re.findall(r"lifetime_events=(\d+)", output)]


def personalized_while_up(port: int, key: str, stop: threading.Event, found: list) -> None:
    """Ask the demo's API for a simulated user's content until it reflects the user's events.

    It names the template, so the demo experiment on the slot leaves it out: the copy is the model's.
    """
    body = json.dumps({"user_id": "u000003", "slot": "headline", "template_id": "headline-ai"}).encode()
    while not stop.wait(0.5):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/personalize",
            data=body,
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                answer = json.loads(response.read())
        except OSError:
            continue
        if answer["explanation"]["features"]["lifetime_events"]:
            found.append(answer)
            return


@pytest.mark.integration
@pytest.mark.model
def test_up_runs_the_pipeline_end_to_end_and_leaves_nothing_behind(feature_repo, exported):
    from dev.services import free_port

    port = free_port()
    env = up_env(feature_repo) | {"TAILOR_MODEL_DIR": str(exported[0]), "TAILOR_API_KEYS": "t3st=admin"}
    stop, found = threading.Event(), []
    poller = threading.Thread(target=personalized_while_up, args=(port, "t3st", stop, found))
    poller.start()
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "up",
                "--seconds",
                "30",
                "--users",
                "50",
                "--rate",
                "100",
                "--api-port",
                str(port),
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,  # a busy machine: the flow alone took 67 s
        )
    finally:
        stop.set()
        poller.join()
    report = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert result.returncode == 0, report
    assert "snapshot |" in result.stdout, report  # not a terminal: plain snapshots, no Live view
    assert any(n > 0 for n in lifetime_events(result.stdout)), f"no features came back through Feast\n{report}"
    assert "first features after" in result.stdout, report  # read back an event sent during this run
    # The API ran beside the flow, and a simulated user's content came with their live features.
    assert f"http://127.0.0.1:{port}/v1/personalize" in result.stdout, report
    assert found and found[0]["model_version"] == "test-1" and found[0]["content"]["text"], report
    assert found[0]["experiment"] is None, report
    # The demo experiment ran: the storefront served headlines, and the flow counted the exposed users.
    assert "experiment    demo-headline" in result.stdout, report
    last = re.findall(r"experiment demo-headline \(([\d,]+) headlines served[^)]*\): (.*)", result.stdout)[-1]
    counted = [int(n) for n in re.findall(r"(\d+) users/", last[1])]
    assert int(last[0].replace(",", "")) > 0 and len(counted) == 3 and sum(counted) > 0, report
    generator_pid = int(re.search(r"generator +pid (\d+)", result.stdout).group(1))
    assert not psutil.pid_exists(generator_pid) or psutil.Process(generator_pid).status() == psutil.STATUS_ZOMBIE
    api_pid = int(re.search(r"api +http\S+ \(pid (\d+)", result.stdout).group(1))
    assert not psutil.pid_exists(api_pid) or psutil.Process(api_pid).status() == psutil.STATUS_ZOMBIE
    flow_pid = int(re.search(r"flow +pid (\d+)", result.stdout).group(1))
    assert not psutil.pid_exists(flow_pid) or psutil.Process(flow_pid).status() == psutil.STATUS_ZOMBIE
    assert processes_mentioning(str(feature_repo)) == []
    # The embedded broker's events are gone with it: the next run starts a fresh recovery dir.
    assert (feature_repo / "data" / "recovery").is_dir()
    # The background generator wrote the copy the storefront's sessions asked for: the experiment's
    # generated arm served generated copy, not only default copy.
    shares = [int(n) for n in re.findall(r"generated arm: (\d+)% generated copy", result.stdout)]
    assert shares and max(shares) > 0, report


@pytest.mark.integration
def test_sigterm_stops_everything_cleanly(feature_repo):
    from dev.services import free_port

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "up",
            "--users",
            "20",
            "--rate",
            "50",
            "--no-model",
            "--api-port",
            str(free_port()),
        ],
        env=up_env(feature_repo),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Stop as soon as the flow and the broker are both running (the flow line is printed then);
        # `tailor up` itself waits up to 180 s for the flow to be ready.
        deadline = time.monotonic() + 200
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "stop          Ctrl-C" in line:
                break
        if not any("flow          pid" in line for line in lines):
            # Stopped before reading its stderr (a live process would block the read), by SIGTERM so that
            # it stops its broker, flow and API too (SIGKILL would leave them running).
            proc.terminate()
            pytest.fail("".join(lines) + proc.communicate(timeout=60)[1])
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped after" in err
    assert processes_mentioning(str(feature_repo)) == []


# -- the demo's API keys: the least scope each use needs (issue 13) ------------------------------


@pytest.mark.integration
def test_the_storefront_serves_with_the_serve_key_and_sets_up_with_the_admin_key(make_settings, tmp_path):
    import contextlib

    from demo.storefront import Storefront
    from demo.supervisor import start_api
    from dev.services import free_port

    settings = make_settings(
        pseudonym_key="0123456789abcdef0123456789abcdef",
        model_dir=str(tmp_path / "no-model"),
        api_keys="front=serve,boss=admin",
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with contextlib.ExitStack() as stack:
        api = start_api(settings, port, tmp_path / "api.log", stack)
        # Without the admin key the experiment cannot be set up: the serve key is refused there.
        alone = Storefront(base, "front")
        stack.callback(alone.stop)
        alone.start()
        deadline = time.monotonic() + 90
        while alone.state == "waiting for the API" and time.monotonic() < deadline and api.proc.poll() is None:
            time.sleep(0.2)
        assert alone.state.startswith("not started: creating it answered 403"), (alone.state, api.log_path)
        front = Storefront(base, "front", setup_key="boss")
        stack.callback(front.stop)
        front.start()
        while front.state != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert front.state == "running", front.state
        assert front._setup_key is None  # dropped once the experiment runs
        front.session_started("u000001")
        while front.served + front.failed == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (front.served, front.failed) == (1, 0)
