"""The model registry: exported versions, which one is served, and the record of every retrain.

No torch here: the API and the retrain watcher read it. Layout (``TAILOR_MODEL_REGISTRY``)::

    registry/versions/<version>/          an exported ONNX model directory (manifest.json, model*.onnx, ...)
    registry/versions/<version>/trained/  the torch weights it was exported from (the next fine-tune starts there)
    registry/runs.jsonl                   one `RunRecord` per retrain run, appended

What the API serves is ``TAILOR_MODEL_DIR``: a plain exported directory, or a symlink
to one of the versions. `promote` repoints it atomically (a new symlink renamed over
the old one), so a reader that resolves the path always finds a whole model directory.
Versions are never deleted here, so a reader that resolved an old version keeps a
valid directory too.

Examples
--------
>>> import tempfile
>>> registry = Path(tempfile.mkdtemp())
>>> record_run(registry, RunRecord(run_id="r1", started="2026-01-01T00:00:00+00:00", trigger="manual"))
>>> [(r.run_id, r.promoted) for r in runs(registry)]
[('r1', False)]
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import msgspec

from models.serve.manifest import ModelDirError, read_manifest

VERSIONS = "versions"
RUNS = "runs.jsonl"
#: Folder of the torch weights inside a registry version (and the fallback beside a model dir).
TRAINED = "trained"
_LOCK = ".lock"

Trigger = Literal["manual", "drift", "threshold"]


class RegistryError(Exception):
    """The registry or the served model directory cannot do what was asked; the message says why."""


class RunData(msgspec.Struct, kw_only=True):
    """What a retrain run fine-tuned on."""

    #: The feedback Parquet file (``tailor feedback export``); "" when the run had none.
    feedback: str = ""
    #: Feedback rows read, and how many of them were held out for the evaluation.
    rows: int = 0
    holdout_rows: int = 0
    #: Rows left out as unusable (unknown style, slot or tone; blank text; weight not > 0).
    skipped_rows: int = 0
    #: The feedback's point-in-time cutoff (epoch ms; 0 when unknown).
    cutoff_ms: int = 0
    #: Rows drawn from the feedback (with replacement, by weight) and replayed from the corpus.
    feedback_draws: int = 0
    replay_rows: int = 0
    #: sha256 of the feedback file's bytes ("" without one) ...
    sha256: str = ""
    #: ... and of the fine-tuning set actually used (as `models.train.corpus.corpus_hash` computes it).
    train_sha256: str = ""


class RunRecord(msgspec.Struct, kw_only=True):
    """One retrain run, as one line of ``runs.jsonl``."""

    run_id: str
    started: str
    finished: str = ""
    trigger: Trigger = "manual"
    #: Why the run started: the user's words, the drift alert, the threshold breach.
    reason: str = ""
    data: RunData = msgspec.field(default_factory=RunData)
    #: Version served when the run started, and the version the candidate got ("" if never exported).
    current_version: str = ""
    candidate_version: str = ""
    #: {"current": {...}, "candidate": {...}}: the same figures on the same holdout.
    metrics: dict[str, dict] = msgspec.field(default_factory=dict)
    promoted: bool = False
    #: Why the candidate was promoted or refused.
    decision: str = ""
    #: What went wrong ("" when nothing did).
    error: str = ""


_run_encoder = msgspec.json.Encoder()
_run_decoder = msgspec.json.Decoder(RunRecord)


def current_version(model_dir: str | Path) -> str | None:
    """The version ``model_dir`` serves now; None when there is no model directory there.

    A directory that exists but cannot be served raises `ModelDirError`.
    """
    path = Path(model_dir)
    if not path.exists():  # follows a symlink: a dangling one counts as no model
        return None
    return read_manifest(os.path.realpath(path)).version


def trained_weights(model_dir: str | Path) -> Path | None:
    """The torch weights ``model_dir`` was exported from, or None when none are found.

    Looks at the manifest's ``trained`` (relative to the model directory, or absolute),
    then ``<dir>/trained``, then ``<dir>/../trained``; a candidate counts when it holds
    a ``config.json``. The model directory is resolved first, so a registry symlink
    finds its version's own weights.
    """
    folder = Path(os.path.realpath(model_dir))
    candidates = []
    try:
        named = read_manifest(folder).trained
    except ModelDirError:
        named = ""
    if named:
        candidates.append(folder / named)  # an absolute `named` replaces the folder
    candidates += [folder / TRAINED, folder.parent / TRAINED]
    return next((c for c in candidates if (c / "config.json").is_file()), None)


def versions(registry: str | Path) -> list[str]:
    """The servable versions in ``registry``, oldest first (by the manifest's ``created``, then name)."""
    folder = Path(registry) / VERSIONS
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        if child.name.startswith("."):
            continue
        try:
            found.append((read_manifest(child).created, child.name))
        except ModelDirError:
            continue  # a half-written or foreign folder is not a version
    return [name for _, name in sorted(found)]


def version_dir(registry: str | Path, version: str) -> Path:
    """Where ``version`` lives (or would live) in ``registry``."""
    if not version or "/" in version or version.startswith("."):
        raise RegistryError(f"{version!r} cannot name a registry version: use letters, digits, '-' and '.'")
    return Path(registry) / VERSIONS / version


@contextmanager
def locked(registry: str | Path):
    """Hold the registry's lock (one promotion or run-record append at a time, across processes)."""
    folder = Path(registry)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / _LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_ANY = object()


def promote(model_dir: str | Path, version_dir: str | Path, *, expect_current=_ANY) -> Path:
    """Point ``model_dir`` at ``version_dir`` (a registry version) atomically; returns the version dir.

    A symlink at ``model_dir`` is replaced by a new one in one rename. A real directory
    there (the first promotion) is moved into ``<registry>/versions/<its version>/`` (its
    torch weights copied into its ``trained/`` when they lived elsewhere) and the symlink
    takes its place in the same atomic exchange where the system has one (Linux
    ``renameat2``). With ``expect_current``, the promotion is refused (`RegistryError`)
    when ``model_dir`` no longer serves that version (another run promoted meanwhile).
    """
    target = Path(version_dir).resolve()
    read_manifest(target)  # never point the API at a directory it cannot serve
    registry = target.parent.parent
    if target.parent.name != VERSIONS:
        raise RegistryError(f"{target} is not in a registry's {VERSIONS}/ folder: export the model there first")
    link = Path(model_dir)
    link = link.parent.resolve() / link.name  # the parent resolved, the link itself not
    with locked(registry):
        if expect_current is not _ANY and current_version(link) != expect_current:
            raise RegistryError(
                f"{link} now serves {current_version(link)!r}, not {expect_current!r}: "
                f"another run promoted meanwhile; retrain again against it"
            )
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.tmp")
        os.symlink(os.path.relpath(target, link.parent), tmp)
        try:
            if link.is_dir() and not link.is_symlink():
                _retire_directory(link, tmp, registry)
            else:
                os.replace(tmp, link)
        finally:
            if tmp.is_symlink():
                tmp.unlink()
    return target


def _retire_directory(link: Path, tmp_link: Path, registry: Path) -> None:
    """Swap the symlink in for the real directory at ``link`` and move that directory into the registry."""
    version = read_manifest(link).version
    dest = version_dir(registry, version)
    if dest.exists():
        raise RegistryError(
            f"{link} serves version {version}, but {dest} already exists: "
            f"remove one of them or re-export {link} with another --version"
        )
    weights = trained_weights(link)
    own_weights = weights is not None and _inside(weights, link)  # moves with the directory
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _exchange(tmp_link, link):
        parked = tmp_link  # the directory now sits where the temporary link was
    else:  # no atomic exchange here: a moment without a model directory, then the link
        parked = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}.old")
        os.rename(link, parked)
        os.replace(tmp_link, link)
    shutil.move(str(parked), str(dest))
    if weights is not None and not own_weights and not (dest / TRAINED).exists():
        shutil.copytree(weights, dest / TRAINED)


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(b))


def record_run(registry: str | Path, record: RunRecord) -> None:
    """Append ``record`` to ``<registry>/runs.jsonl`` (one JSON line, written whole)."""
    line = _run_encoder.encode(record) + b"\n"
    with locked(registry):
        fd = os.open(Path(registry) / RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


def runs(registry: str | Path) -> list[RunRecord]:
    """Every recorded run, oldest first; a line that is not a run record is a `RegistryError`."""
    path = Path(registry) / RUNS
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(_run_decoder.decode(line))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise RegistryError(f"{path}:{number} is not a run record ({exc}); fix or remove that line") from None
    return out
