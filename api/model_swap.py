"""Hot swap: the API serves a newly promoted copy model's copy without a restart.

`tailor retrain` promotes a version by pointing ``TAILOR_MODEL_DIR`` (a symlink
into the registry then) at it in one atomic rename. `ModelWatcher` checks every
``TAILOR_MODEL_RELOAD_S`` where the directory resolves to and its manifest's
version; when they change it reads the new manifest (the API loads no ONNX
session: the background generator writes the copy) and `CopyWriter.serve` makes it
the served one in a single assignment. Copy keys carry the model version, so from
then on requests read the new model's copy as the generator writes it (it re-warms
the catalog on the same promotion), and default copy for keys it has not reached
yet. A directory that cannot be read (half-written, corrupt, the old prompt) is
logged once and the old model keeps serving.

Given the audit log (``audit``, `store.audit`), each replica records the swap
(``model.swap`` by ``system``) before it serves the new model; while the log cannot
be written the old model keeps serving and the swap is tried again at the next check,
so no replica changes models unaudited.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from pathlib import Path

from models.serve.manifest import MANIFEST, ModelDirError
from store.redis_guard import StoreUnavailable

log = logging.getLogger("tailor.api")


def model_identity(model_dir: str | Path) -> tuple[str, int] | None:
    """(resolved path, manifest mtime in ns) of ``model_dir``, or None while it has no manifest."""
    try:
        real = os.path.realpath(model_dir)
        return real, os.stat(os.path.join(real, MANIFEST)).st_mtime_ns
    except OSError:
        return None


class ModelWatcher:
    def __init__(self, model_dir: str | Path, writer, audit=None):
        self.model_dir = Path(model_dir)
        self.writer = writer
        self.audit = audit
        self._unaudited: tuple[str, int] | None = None  # the model a failed audit write holds back (logged once)
        self.seen = model_identity(model_dir) if writer.current is not None else None
        self._failed: tuple[str, int] | None = None
        self.swaps = 0

    async def check(self) -> bool:
        """Swap if the model directory now holds another model; True if it swapped."""
        identity = model_identity(self.model_dir)
        if identity is None or identity == self.seen or identity == self._failed:
            return False
        from api.personalize import read_served_model

        try:
            model = await asyncio.get_running_loop().run_in_executor(None, read_served_model, identity[0])
        except (ModelDirError, OSError, ValueError) as exc:
            log.warning(
                "not swapping to the model in %s: %s (still serving %s)", identity[0], exc, self.writer.model_version
            )
            self._failed = identity
            return False
        if model.version == self.writer.model_version:
            self.seen = identity
            return False  # the same model re-exported in place, or re-pointed to itself
        if self.audit is not None:
            try:
                detail = {
                    "from": self.writer.model_version,
                    "dir": identity[0],
                    "host": f"{socket.gethostname()}:{os.getpid()}",
                }
                await asyncio.get_running_loop().run_in_executor(
                    None, self.audit.append, "system", "model.swap", model.version, detail
                )
            except StoreUnavailable as exc:
                if self._unaudited != identity:
                    self._unaudited = identity
                    log.warning(
                        "not swapping to %s yet: %s (still serving %s)",
                        model.version,
                        exc.detail,
                        self.writer.model_version,
                    )
                return False  # tried again at the next check
        self.seen = identity
        self.writer.serve(model)
        self.swaps += 1
        return True

    async def run(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.check()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad check
                log.warning("model check failed", exc_info=True)
