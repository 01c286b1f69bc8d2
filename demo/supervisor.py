"""``tailor up``'s children: starting, watching and stopping the processes the demo runs.

Each child runs in its own process group with its output in a log file; stopping one
sends SIGINT (Bytewax stops cleanly on it), then SIGTERM, then SIGKILL to the whole group.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from config.settings import Settings, settings_env

#: How long a child has to stop after SIGINT, then after SIGTERM, before SIGKILL.
STOP_GRACE_S = 10.0
#: Lines of a dead child's log shown with the error.
LOG_TAIL_LINES = 20
#: Longest the demo waits for the flow to be ready (a busy 2-core machine imports Feast slowly).
FLOW_READY_TIMEOUT_S = 180.0


class ChildDied(RuntimeError):
    """A process the demo depends on exited while the demo was running."""


class Child:
    """A child process in its own process group, with its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        self.ready_file: Path | None = None  # the flow's TAILOR_READY_FILE
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.pid = self.proc.pid

    def check(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise ChildDied(
                f"the {self.name} (pid {self.pid}) exited with code {code}; "
                f"last lines of {self.log_path}:\n{tail(self.log_path)}"
            )

    def stop(self) -> None:
        """SIGINT (Bytewax stops cleanly on it), then SIGTERM, then SIGKILL; the whole group."""
        for sig, wait_s in ((signal.SIGINT, STOP_GRACE_S), (signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
            if self.proc.poll() is not None:
                break
            _signal_group(self.pid, sig)
            try:
                self.proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait()
        # Anything the child left behind in its group goes with it.
        _signal_group(self.pid, signal.SIGKILL)


def start_flow(settings: Settings, recovery: Path, log_path: Path, stack: contextlib.ExitStack) -> Child:
    from flows.features import flow_command, init_recovery

    init_recovery(recovery)
    ready_file = recovery.parent / "flow.ready"
    ready_file.unlink(missing_ok=True)  # a killed run's: not this flow's readiness
    settings = settings.replace(ready_file=str(ready_file))
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    flow = Child("flow", flow_command(settings, str(recovery)), env, log_path)
    flow.ready_file = ready_file
    stack.callback(flow.stop)
    return flow


def wait_ready(flow: Child, timeout_s: float = FLOW_READY_TIMEOUT_S) -> None:
    """Wait for the flow's ready file (Feast loaded, online store open, consumers fetching)."""
    say("waiting for the flow to load Feast and start reading ...")
    started = time.monotonic()
    while not flow.ready_file.is_file():
        flow.check()
        if time.monotonic() - started > timeout_s:
            raise ChildDied(
                f"the flow (pid {flow.pid}) was not ready after {timeout_s:.0f} s; "
                f"last lines of {flow.log_path}:\n{tail(flow.log_path)}"
            )
        time.sleep(0.05)
    say(f"flow ready after {time.monotonic() - started:.1f} s")


def start_api(settings: Settings, port: int, log_path: Path, stack: contextlib.ExitStack) -> Child:
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    api = Child("API", [sys.executable, "-m", "cli.main", "api", "--port", str(port)], env, log_path)
    stack.callback(api.stop)
    return api


class Probe:
    """Whether the API answers yet; asked at most every few seconds, never blocking the view for long."""

    def __init__(self, url: str, every_s: float = 2.0):
        self.url = url
        self.every_s = every_s
        self.ready_after_s: float | None = None
        self._started = time.monotonic()
        self._asked = float("-inf")

    def state(self) -> str:
        import urllib.request

        now = time.monotonic()
        if self.ready_after_s is None and now - self._asked >= self.every_s:
            self._asked = now
            try:
                with urllib.request.urlopen(self.url, timeout=0.2) as response:
                    if response.status == 200:
                        self.ready_after_s = now - self._started
            except OSError:
                pass
        if self.ready_after_s is None:
            return "API starting"
        return f"API ready after {self.ready_after_s:.0f} s"


def start_model_build(settings: Settings, log_path: Path, stack: contextlib.ExitStack) -> Child | None:
    """Build the copy model in the background if ``TAILOR_MODEL_DIR`` holds none fit to serve (first run: minutes).

    The demo does not wait: the API serves the templates' default copy meanwhile, and
    once the model lands (`demo.model_build` moves it into place whole) the API and the
    background generator pick it up as they pick up a promotion. None when there is
    nothing to build, or the build cannot run here.
    """
    from engine.content.grounding import PROMPT_FORMAT
    from models.serve.manifest import ModelDirError, read_manifest

    try:
        if getattr(read_manifest(settings.generation.model_dir), "prompt_format", 1) == PROMPT_FORMAT:
            return None
        why = "holds a model trained for the old prompt"
    except ModelDirError:
        why = "holds none"
    try:
        import torch  # noqa: F401 - only to know whether the build can run here
    except ImportError:
        say(
            f"{settings.generation.model_dir} {why}, and the build needs the train extra (pip install -e '.[train]'): "
            "serving the templates' default copy"
        )
        return None
    model_dir = Path(settings.generation.model_dir)
    say(
        f"copy model: {model_dir} {why}; building one in the background (first run only; about 15 minutes on "
        f"2 cores; log {log_path}). Default copy until then; the API and the generator switch to it when it lands."
    )
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    build = Child("model build", [sys.executable, "-m", "demo.model_build", str(model_dir)], env, log_path)
    stack.callback(build.stop)
    return build


def start_generator(settings: Settings, log_path: Path, stack: contextlib.ExitStack) -> Child:
    """The background copy generator (`tailor copy generate`): copy for the catalog, templates and misses."""
    env = {**os.environ, **settings_env(settings), "PYTHONUNBUFFERED": "1"}
    generator = Child("copy generator", [sys.executable, "-m", "cli.main", "copy", "generate"], env, log_path)
    stack.callback(generator.stop)
    return generator


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"  (could not read it: {exc})"
    return "\n".join("  " + line for line in text.rstrip().splitlines()[-lines:]) or "  (empty)"


def say(line: str) -> None:
    print(f"tailor up: {line}" if line and not line.startswith(" ") else line, flush=True)


class StopSignals:
    """SIGINT and SIGTERM raise KeyboardInterrupt, once: clean-up is not interrupted."""

    def __init__(self):
        self.stopping = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum, _frame) -> None:
        if self.stopping:
            return
        self.stopping = True
        raise KeyboardInterrupt

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
