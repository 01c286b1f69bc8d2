"""The background copy generator: copy written ahead of need, off the request path (``tailor copy generate``).

The API never generates (api/personalize.py): it serves what this process wrote into
the copy store (store/copies.py) and queues the keys it found missing. Each round
(`CopyGenerator.step`) this process takes:

1. the queued misses, oldest first: a request is waiting for those;
2. else the warm plan's keys the store lacks: for the served model, every live
   template with AI copy × every segment style it serves × its tone (the template's,
   else the style's usual one) × every catalog item, and no item (generic copy).

The plan is made again whenever what it depends on moved: the model in
``TAILOR_MODEL_DIR`` (a promotion: a new version, so every key is new), the template
store's revision (a template created or edited: a new version) or the catalog's (an
item upserted, the webhook: new facts give a new key). Diffing the plan against the
store is the whole mechanism; nothing is sent to this process.

Prompts carry the item's facts (`engine.content.grounding.copy_prompt`); one ONNX
Runtime batch holds prompts of one slot (one token budget), on CUDA when a GPU is
usable. Each text is checked as the API will check it (the item's facts, the brand
rules); one that fails is sampled again, up to ``TAILOR_GENERATOR_ATTEMPTS`` (the last
greedy), and the last is kept when none passes, so the API serves default copy and
says why instead of asking again and again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from config.settings import Settings
from engine.content.brand import check
from engine.content.grounding import NEW_TOKENS, PROMPT_FORMAT, STYLES, copy_prompt, grounding_problem
from engine.content.personalize import STYLE_TONES
from models.serve.manifest import MANIFEST, ModelDirError
from store.copies import CopyJob, copy_key, open_copies

log = logging.getLogger("tailor.generator")

SNIPPETS = Counter("tailor_generator_snippets_total", "Snippets the background generator wrote, by source.", ["source"])
BATCHES = Counter("tailor_generator_batches_total", "ONNX Runtime batches the background generator ran.")
BATCH_SECONDS = Histogram(
    "tailor_generator_batch_seconds",
    "Time to generate one batch (all its attempts).",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
QUEUE_DEPTH = Gauge("tailor_generator_queue_depth", "Missed keys waiting in the copy store's queue.")
WARM_REMAINING = Gauge("tailor_generator_warm_remaining", "Keys of the warm plan not written yet.")
REJECTED = Counter(
    "tailor_generator_rejected_total",
    "Snippets that failed the fact or brand checks on every attempt (kept; the API serves default copy).",
    ["reason"],
)

#: Sampling: varied copy per item; the store keeps what was written, so what is served is stable.
SAMPLING = {"top_p": 0.9, "temperature": 0.8}
#: How often the model, templates and catalog are looked at for changes.
CHECK_S = 0.5
#: Other model versions (experiment arms) kept loaded.
OTHER_VERSIONS = 4
#: Items read per catalog page while planning.
PAGE = 1000


def model_identity(model_dir: str | Path) -> tuple[str, int] | None:
    """(resolved path, manifest mtime in ns) of ``model_dir``, or None while it holds no manifest."""
    try:
        real = os.path.realpath(model_dir)
        return real, os.stat(os.path.join(real, MANIFEST)).st_mtime_ns
    except OSError:
        return None


def open_generator(folder: str | Path):
    """The ONNX generator of an exported model folder, refused unless it was trained for the facts prompt.

    Every CPU this process may use; CUDA when a GPU is usable (`models.serve.runtime.choose_providers`).
    """
    from models.serve.runtime import Generator

    generator = Generator(folder, intra_op_threads=len(os.sched_getaffinity(0)))
    if getattr(generator.manifest, "prompt_format", 1) != PROMPT_FORMAT:
        raise ModelDirError(
            f"the copy model in {folder} ({generator.manifest.version}) was trained for the old prompt, without the "
            "item's facts: retrain it with `tailor train` and `tailor export --quantize`"
        )
    return generator


class CopyGenerator:
    """Fills the copy store: queued misses first, then the warm plan of the served model.

    ``generator``: a ready `models.serve.runtime.Generator` (tests); default, the model
    in ``TAILOR_MODEL_DIR``, followed across promotions. ``catalog`` and ``templates``
    default to the stores ``settings`` name.
    """

    def __init__(self, settings: Settings, *, generator=None, copies=None, catalog=None, templates=None):
        from store.brand import brand_rules
        from store.catalog import open_catalog
        from store.templates import open_template_store

        self.settings = settings
        self.copies = copies if copies is not None else open_copies(settings)
        self.catalog = catalog if catalog is not None else open_catalog(settings)
        self.templates = templates if templates is not None else open_template_store(settings)
        self.rules = brand_rules(settings)
        self.batch = settings.generation.generator_batch
        self.attempts = settings.generation.generator_attempts
        self.generator = generator
        self._fixed = generator is not None  # an injected generator is never swapped
        self._identity = None if generator is None else model_identity(settings.generation.model_dir)
        self._refused: tuple[str, int] | None = None
        self._others: OrderedDict[str, Any] = OrderedDict()
        self._state: tuple | None = None  # (model version, template revision, catalog revision) planned for
        self._todo: list[CopyJob] = []  # planned keys the store lacked, not written yet
        self._checked = float("-inf")
        self.rejected = 0
        if generator is None:
            self._follow_model()

    @property
    def model_version(self) -> str | None:
        return self.generator.version if self.generator is not None else None

    # -- what to write -------------------------------------------------------------------------

    def plan(self) -> list[CopyJob]:
        """Every key the served model should have copy for (see the module docstring); [] without a model."""
        version = self.model_version
        if version is None:
            return []
        items: list[dict | None] = [None]
        after = ""
        while True:
            page = self.catalog.list(after, PAGE)
            items += [item.facts() for item in page]
            if len(page) < PAGE:
                break
            after = page[-1].item_id
        jobs = []
        for template in self.templates.list():
            ai = template.fields.ai
            if not ai:
                continue
            tagged = [s for s in STYLES if s in template.segments]
            # A template for any segment, or tagged with segment labels only, may serve any style: warm them all.
            styles = tagged or list(STYLES)
            for style in styles:
                tone = template.tone or STYLE_TONES.get(style, "informative")
                for slot in ai:
                    for item in items:
                        key = copy_key(version, template.template_id, template.version, style, slot, tone, item)
                        jobs.append(
                            CopyJob(
                                key=key,
                                model_version=version,
                                template_id=template.template_id,
                                template_version=template.version,
                                style=style,
                                slot=slot,
                                tone=tone,
                                item=item,
                            )
                        )
        return jobs

    def missing(self, jobs: list[CopyJob]) -> list[CopyJob]:
        """The jobs whose keys the store has no copy for."""
        have: set[str] = set()
        for start in range(0, len(jobs), 2000):
            have |= self.copies.get_many([j.key for j in jobs[start : start + 2000]]).keys()
        return [j for j in jobs if j.key not in have]

    # -- one round -----------------------------------------------------------------------------

    def step(self) -> int:
        """Write one batch: queued misses first, then warm work; how many snippets were written."""
        now = time.monotonic()
        if now - self._checked >= CHECK_S:
            self._checked = now
            self._refresh()
        jobs = self.copies.take(self.batch)
        QUEUE_DEPTH.set(self.copies.queued() if jobs else 0)
        source = {j.key: "miss" for j in jobs}
        if len(jobs) < self.batch and self._todo:
            taken = {j.key for j in jobs}
            while self._todo and len(jobs) < self.batch:
                job = self._todo.pop()
                if job.key not in taken:
                    jobs.append(job)
                    source.setdefault(job.key, "warm")
            WARM_REMAINING.set(len(self._todo))
            if not self._todo:
                log.info("warm plan done for model %s", self.model_version)
        if not jobs:
            return 0
        texts: dict[str, str] = {}
        by_batch: dict[tuple[str, str], list[CopyJob]] = {}
        for job in jobs:
            by_batch.setdefault((job.model_version, job.slot), []).append(job)
        for (version, slot), group in by_batch.items():
            generator = self._generator_for(version)
            if generator is None:
                continue  # an unknown version: nothing to write with (the API keeps default copy)
            texts.update(self._write(generator, slot, group))
        self.copies.put_many(texts)
        for key in texts:
            SNIPPETS.labels(source[key]).inc()
        return len(texts)

    def _write(self, generator, slot: str, jobs: list[CopyJob]) -> dict[str, str]:
        """Texts for ``jobs`` (one slot): sampled, checked, sampled again where a check failed."""
        started = time.perf_counter()
        out: dict[str, str] = {}
        pending = list(jobs)
        for attempt in range(self.attempts):
            if not pending:
                break
            greedy = attempt == self.attempts - 1 and attempt > 0
            results = generator.generate(
                [copy_prompt(j.style, j.slot, j.tone, j.item) for j in pending],
                max_new_tokens=NEW_TOKENS[slot],
                greedy=greedy,
                **({} if greedy else SAMPLING),
            )
            failed = []
            for job, result in zip(pending, results):
                text = result.text.strip()
                out[job.key] = text
                if self._problem(text, job) is not None:
                    failed.append(job)
            pending = failed
        for job in pending:  # failed every attempt: kept, so the API says why instead of asking again
            self.rejected += 1
            REJECTED.labels(self._problem(out[job.key], job) or "other").inc()
        BATCHES.inc()
        BATCH_SECONDS.observe(time.perf_counter() - started)
        return out

    def _problem(self, text: str, job: CopyJob) -> str | None:
        if not text:
            return "empty"
        if grounding_problem(text, job.item) is not None:
            return "ungrounded"
        if check(self.rules, text, slot=job.slot, tone=job.tone):
            return "brand"
        return None

    # -- following the model, the templates and the catalog ------------------------------------

    def _refresh(self) -> None:
        if not self._fixed:
            self._follow_model()
        state = (self.model_version, self.templates.revision(), self.catalog.revision())
        if state != self._state and self.model_version is not None:
            started = time.perf_counter()
            self._todo = self.missing(self.plan())[::-1]  # popped from the end: planned order
            self._state = state
            WARM_REMAINING.set(len(self._todo))
            if self._todo:
                log.info(
                    "warming %d snippets for model %s (planned in %.2f s)",
                    len(self._todo),
                    self.model_version,
                    time.perf_counter() - started,
                )

    def _follow_model(self) -> None:
        """Load the model ``TAILOR_MODEL_DIR`` points at when it changed (a promotion, or a first build)."""
        identity = model_identity(self.settings.generation.model_dir)
        if identity is None or identity == self._identity or identity == self._refused:
            return
        try:
            generator = open_generator(identity[0])
        except (ModelDirError, OSError, RuntimeError, ValueError) as exc:
            log.error("not generating with the model in %s: %s", identity[0], exc)
            self._refused = identity
            return
        old = self.model_version
        self.generator, self._identity = generator, identity
        if generator.version != old:
            log.info("generating with copy model %s (was %s) on %s", generator.version, old, generator.provider)

    def _generator_for(self, version: str):
        if version == self.model_version:
            return self.generator
        if version in self._others:
            self._others.move_to_end(version)
            return self._others[version]
        from models.serve.registry import version_dir

        try:
            generator = open_generator(version_dir(self.settings.retrain.model_registry, version))
        except Exception as exc:  # noqa: BLE001 - that version's keys stay default copy; logged
            log.warning("cannot generate with copy model version %s: %s", version, exc)
            generator = None
        self._others[version] = generator
        if len(self._others) > OTHER_VERSIONS:
            self._others.popitem(last=False)
        return generator

    @property
    def warm_left(self) -> int:
        """Keys of the warm work not written yet."""
        return len(self._todo)

    def prime(self, jobs: list[CopyJob]) -> None:
        """Make ``jobs`` (written in order) the warm work, as if just planned: `step` writes them first."""
        self._todo = jobs[::-1]  # popped from the end: planned order
        self._state = (self.model_version, self.templates.revision(), self.catalog.revision())
        self._checked = time.monotonic()
        WARM_REMAINING.set(len(self._todo))

    # -- running -------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Rounds until ``stop`` is set; idle, it sleeps ``TAILOR_GENERATOR_POLL_S``; an error is logged, not fatal."""
        poll = self.settings.generation.generator_poll_s
        waiting_logged = False
        failures = 0
        while not stop.is_set():
            try:
                written = self.step()
                failures = 0
            except Exception:  # noqa: BLE001 - a generator that dies quietly is the worst outcome
                failures += 1
                log.exception("a generator round failed (%d in a row); going on", failures)
                stop.wait(min(30.0, poll * 2**failures))
                continue
            if self.generator is None and not waiting_logged:
                log.warning(
                    "no copy model in %s yet: waiting for one (tailor train && tailor export --quantize)",
                    self.settings.generation.model_dir,
                )
                waiting_logged = True
            if not written:
                stop.wait(poll)

    def close(self) -> None:
        self.copies.close()
        self.catalog.close()
        self.templates.close()


def warm(settings: Settings, *, progress: bool = True) -> dict:
    """``tailor copy warm``: write every missing key of the warm plan now, with a progress bar; a summary."""
    import sys

    from tqdm import tqdm

    writer = CopyGenerator(settings)
    try:
        if writer.generator is None:
            raise ModelDirError(
                f"no copy model to generate with in {settings.generation.model_dir}: build one with "
                "`tailor train && tailor export --quantize`"
            )
        started = time.perf_counter()
        planned = writer.plan()
        todo = writer.missing(planned)
        bar = tqdm(total=len(todo), desc="copy", unit="snippet", file=sys.stderr, disable=not progress, mininterval=0.5)
        writer.prime(todo)
        generated = 0
        while writer.warm_left or writer.copies.queued():
            written = writer.step()
            generated += written
            bar.update(written)
            if not written and not writer.warm_left:
                break
        bar.close()
        seconds = time.perf_counter() - started
        return {
            "model_version": writer.model_version,
            "provider": writer.generator.provider,
            "planned": len(planned),
            "already": len(planned) - len(todo),
            "generated": generated,
            "rejected": writer.rejected,
            "seconds": round(seconds, 2),
            "snippets_per_s": round(generated / seconds, 1) if seconds > 0 else None,
        }
    finally:
        writer.close()
