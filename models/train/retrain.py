"""``tailor retrain``: fine-tune the served copy model on feedback; promote it only if it is no worse.

Build side (torch). One run:

1. loads the torch weights the served model (``TAILOR_MODEL_DIR``) was exported from
   (`models.serve.registry.trained_weights`);
2. builds the fine-tuning set: feedback rows (``tailor feedback export``'s Parquet) drawn
   with replacement in proportion to their ``weight``, mixed with a replay sample of the
   original corpus (``replay`` corpus rows per feedback row) so the model keeps what it
   knew;
3. evaluates the served model, fine-tunes, evaluates the candidate, both on the same
   holdout (the corpus's unseen items, split as at training time, plus held-out feedback
   rows): perplexity, tone and length obedience, and the share of sampled copy that passes
   the brand rules;
4. promotes the candidate only if no figure is worse beyond its tolerance
   (`engine.learning.retrain_policy.promotion_decision`): exported like the served model (int8 when
   it is) into ``<registry>/versions/<version>/`` with its weights in ``trained/``, then
   `models.serve.registry.promote` repoints the model directory atomically;
5. appends a `RunRecord` to ``<registry>/runs.jsonl`` whatever happened.

Given the audit log (``audit``, `store.audit`), a promotion is recorded there
(``model.promote``, by ``cli`` for a manual run, ``system`` for a triggered one); a log
that cannot be written refuses the promotion, so a model is never promoted unaudited.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import torch
from tqdm import tqdm

from engine.content.brand import DEFAULT_RULES, BrandRules, check
from engine.content.grounding import copy_prompt, grounding_problem
from engine.learning.retrain_policy import promotion_decision
from models.serve.manifest import ModelDirError, read_manifest
from models.serve.registry import (
    TRAINED,
    RegistryError,
    RunRecord,
    Trigger,
    promote,
    record_run,
    trained_weights,
    version_dir,
)
from models.train.build import EVALUATION, SIZES, TrainConfig, _fit, evaluate
from models.train.corpus import (
    SEGMENT_STYLES,
    SLOTS,
    TONES,
    CopyRecord,
    build_corpus,
    corpus_hash,
    obeys_length,
    obeys_tone,
    split_holdout,
)

#: Columns a feedback file must have (others, such as impressions or clickers, are ignored).
FEEDBACK_COLUMNS = ("style", "slot", "tone", "text", "weight")
#: Optional column: the item the copy was served about, as JSON (its facts as `Item.facts()` has them; null: none).
FEEDBACK_ITEM = "item"
#: Parquet metadata key of the export's summary (jobs/feedback.py; not imported: flows pulls Kafka in).
FEEDBACK_METADATA = b"tailor.feedback"
#: Corpus rows replayed when a run has no feedback (and no --max-records).
REPLAY_ONLY_ROWS = 2000


class RetrainError(Exception):
    """A retrain that cannot run as asked (no model, no weights, bad feedback); ``record`` is its run record."""

    record: RunRecord | None = None


class RetrainConfig(msgspec.Struct, frozen=True, kw_only=True):
    #: Passes over the fine-tuning set, peak learning rate, records per batch.
    epochs: int = 2
    lr: float = 3e-4
    batch_size: int = 32
    #: Most fine-tuning rows (feedback draws plus replay, shrunk in proportion); 0: no cap.
    max_records: int = 0
    #: Corpus rows replayed per feedback row drawn.
    replay: float = 1.0
    #: Share of the feedback rows held out for the evaluation (by a hash of the row).
    feedback_holdout: float = 0.1
    #: Corpus holdout records the perplexity is measured on (a fixed sample), and at most as many feedback rows.
    eval_records: int = 2000
    #: Generated samples per (segment, slot, tone) for obedience and brand rules.
    eval_samples: int = 4
    #: Promotion rule (engine/learning/retrain_policy.py): relative perplexity, absolute rates.
    ppl_tolerance: float = 0.02
    metric_tolerance: float = 0.02
    seed: int = 0
    #: Evaluate and decide, but never export or promote.
    dry_run: bool = False

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch_size must be at least 1, lr positive")
        if self.max_records < 0 or self.eval_records < 1 or self.eval_samples < 1:
            raise ValueError("max_records must be 0 or more, eval_records and eval_samples at least 1")
        if not (math.isfinite(self.replay) and self.replay >= 0):
            raise ValueError(f"replay must be 0 or more corpus rows per feedback row, got {self.replay}")
        if not 0 <= self.feedback_holdout < 1:
            raise ValueError(f"feedback_holdout must be a share in [0, 1), got {self.feedback_holdout}")
        if self.ppl_tolerance < 0 or self.metric_tolerance < 0:
            raise ValueError("tolerances must be 0 or more")


class Feedback(msgspec.Struct, kw_only=True):
    """The usable rows of a feedback file, their weights, and what identifies the file."""

    path: str
    records: list[CopyRecord]
    weights: list[float]
    skipped: int
    sha256: str
    cutoff_ms: int


def read_feedback(path: str | Path) -> Feedback:
    """Rows of a feedback Parquet file as copy records with weights; `RetrainError` if it cannot be used.

    Rows whose style, slot or tone the model does not know, whose text is blank or whose
    weight is not a positive number are skipped (and counted), and so are rows whose copy
    states a fact its item (the optional ``item`` column) does not back: without that
    column, any product name, attribute, price or percentage.
    """
    import pyarrow.parquet as pq

    file = Path(path)
    try:
        data = file.read_bytes()
        table = pq.read_table(file)
    except OSError as exc:
        raise RetrainError(
            f"cannot read the feedback file {file}: {exc}; write one with `tailor feedback export`"
        ) from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a bad file
        raise RetrainError(
            f"{file} is not a Parquet feedback file ({exc}); write one with `tailor feedback export`"
        ) from None
    missing = [c for c in FEEDBACK_COLUMNS if c not in table.column_names]
    if missing:
        raise RetrainError(
            f"{file} lacks the feedback column(s) {', '.join(missing)}: "
            f"it needs {', '.join(FEEDBACK_COLUMNS)} (see `tailor feedback export`)"
        )
    columns = table.select(list(FEEDBACK_COLUMNS)).to_pydict()
    items = table.column(FEEDBACK_ITEM).to_pylist() if FEEDBACK_ITEM in table.column_names else None
    records, weights, skipped = [], [], 0
    for n, (style, slot, tone, text, weight) in enumerate(zip(*(columns[c] for c in FEEDBACK_COLUMNS))):
        item = _feedback_item(items[n]) if items is not None else None
        usable = (
            style in SEGMENT_STYLES
            and slot in SLOTS
            and tone in TONES
            and isinstance(text, str)
            and text.strip()
            and isinstance(weight, (int, float))
            and math.isfinite(weight)
            and weight > 0
        )
        # Copy is trained with the facts it was written from; copy that states a fact they do not back (without
        # an item column: any name or price) would teach the prompt to invent it, so it is left out (skipped).
        if not usable or grounding_problem(text, item) is not None:
            skipped += 1
            continue
        records.append(CopyRecord(style, slot, tone, "feedback", text.strip(), item))
        weights.append(float(weight))
    if not records:
        raise RetrainError(
            f"{file} has no usable feedback rows ({skipped} skipped: unknown style, slot or tone, "
            f"blank text, weight not > 0, or copy stating facts its item column does not back)"
        )
    return Feedback(
        path=str(file),
        records=records,
        weights=weights,
        skipped=skipped,
        sha256=hashlib.sha256(data).hexdigest(),
        cutoff_ms=_cutoff_ms(table),
    )


def _feedback_item(value) -> dict | None:
    """A feedback row's item (JSON text or a mapping); None for none or one that cannot be read."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return dict(value) if isinstance(value, dict) and value else None


def _cutoff_ms(table) -> int:
    """The export's cutoff: ``cutoff_ms`` of its summary (Parquet metadata ``tailor.feedback``, as
    `jobs.feedback` writes it), else the newest ``last_ms``; 0 if neither."""
    summary = (table.schema.metadata or {}).get(FEEDBACK_METADATA)
    if summary:
        try:
            return int(json.loads(summary)["cutoff_ms"])
        except (ValueError, KeyError, TypeError):
            pass
    if "last_ms" in table.column_names:
        values = [v for v in table.column("last_ms").to_pylist() if v is not None]
        return int(max(values)) if values else 0
    return 0


def _split_feedback(feedback: Feedback, fraction: float) -> tuple[list[int], list[int]]:
    """Indexes of (train, holdout) rows; a row's side depends only on its content."""
    train, holdout = [], []
    for i, r in enumerate(feedback.records):
        key = f"{r.segment}\x00{r.slot}\x00{r.tone}\x00{r.text}".encode()
        bucket = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
        (holdout if bucket < fraction else train).append(i)
    if not train:  # too few rows to hold any out
        return holdout, []
    return train, holdout


def fine_tuning_set(
    feedback: Feedback | None, train_idx: list[int], corpus_train: list[CopyRecord], config: RetrainConfig
) -> tuple[list[CopyRecord], int, int]:
    """(rows, feedback draws, replay rows): weighted draws of the feedback plus a corpus replay sample."""
    rng = random.Random(f"retrain-{config.seed}")
    n_feedback = len(train_idx) if feedback else 0
    n_replay = round(config.replay * n_feedback) if n_feedback else (config.max_records or REPLAY_ONLY_ROWS)
    if config.max_records and n_feedback + n_replay > config.max_records:
        share = config.max_records / (n_feedback + n_replay)
        n_feedback, n_replay = round(n_feedback * share), round(n_replay * share)
        if train_idx and feedback and n_feedback == 0:
            n_feedback, n_replay = 1, max(0, n_replay - 1)
    n_replay = min(n_replay, len(corpus_train))
    draws = []
    if n_feedback:
        draws = rng.choices(
            [feedback.records[i] for i in train_idx], weights=[feedback.weights[i] for i in train_idx], k=n_feedback
        )
    rows = draws + rng.sample(corpus_train, n_replay)
    rng.shuffle(rows)
    return rows, n_feedback, n_replay


@torch.no_grad()
def sample_copy(
    model, tokenizer, combinations, *, samples: int, seed: int, progress: bool = False
) -> list[tuple[str, str, str, str]]:
    """(segment, slot, tone, text) for ``samples`` sampled texts per combination, as `control_obedience` samples."""
    torch.manual_seed(seed)
    model.eval()
    keys = [combo for combo in combinations for _ in range(samples)]
    out = []
    tokenizer.padding_side = "left"
    bar = tqdm(
        total=len(keys), desc="sampling copy", unit="text", file=sys.stderr, disable=not progress, mininterval=0.5
    )
    try:
        for start in range(0, len(keys), 64):
            chunk = keys[start : start + 64]
            batch = tokenizer([copy_prompt(*k, None) for k in chunk], padding=True, return_tensors="pt")
            generated = model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,  # no token_type_ids: GPT-2 would add an embedding for them
                do_sample=True,
                top_p=0.9,
                temperature=0.8,
                max_new_tokens=48,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            texts = tokenizer.batch_decode(generated[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
            out += [(*k, t.strip()) for k, t in zip(chunk, texts)]
            bar.update(len(chunk))
    finally:
        tokenizer.padding_side = "right"
        bar.close()
    return out


def measure(
    model, tokenizer, holdout: list[CopyRecord], rules: BrandRules, *, samples: int, seed: int, progress: bool = False
) -> dict:
    """The figures a promotion compares: holdout perplexity, tone and length obedience, brand-rule pass rate, fact precision.

    Obedience and brand rules are read from one set of sampled texts (``samples`` per
    segment, slot and tone, seeded), so both models are judged on equal terms.
    """
    figures = evaluate(model, tokenizer, holdout, samples=0, seed=seed, max_records=len(holdout))
    combinations = [(seg, slot, tone) for seg in SEGMENT_STYLES for slot in SLOTS for tone in TONES]
    texts = sample_copy(model, tokenizer, combinations, samples=samples, seed=seed, progress=progress)
    n = max(len(texts), 1)
    return {
        "holdout_perplexity": figures["holdout_perplexity"],
        "holdout_records": len(holdout),
        "tone_obedience": round(sum(obeys_tone(t, tone) for _, _, tone, t in texts) / n, 4),
        "length_obedience": round(sum(obeys_length(t, slot) for _, slot, _, t in texts) / n, 4),
        "brand_pass_rate": round(sum(not check(rules, t, slot=slot, tone=tone) for _, slot, tone, t in texts) / n, 4),
        # Copy that states only the prompt's facts, and names the item where it should (build.fact_precision):
        # compared by the promotion rule once it lists them (engine.learning.retrain_policy.RATES).
        "fact_precision_greedy": figures["fact_precision_greedy"],
        "fact_precision_sampled": figures["fact_precision_sampled"],
        "item_mention_rate": figures["item_mention_rate"],
        "samples": len(texts),
        "perplexity_by_segment_slot": figures["perplexity_by_segment_slot"],
    }


def _now() -> datetime:
    return datetime.now(UTC)


def _say(progress: bool, message: str) -> None:
    if progress:
        tqdm.write(f"tailor retrain: {message}", file=sys.stderr)


def retrain(
    model_dir: str | Path,
    registry: str | Path,
    *,
    feedback: str | Path | None = None,
    trigger: Trigger = "manual",
    reason: str = "",
    config: RetrainConfig = RetrainConfig(),
    brand_rules: BrandRules = DEFAULT_RULES,
    records: list[CopyRecord] | None = None,
    progress: bool = True,
    audit=None,
) -> RunRecord:
    """Fine-tune the model ``model_dir`` serves, evaluate, promote if no worse; returns the recorded run.

    ``records`` is the original corpus (default: `build_corpus` with the seed the served
    model was trained with). The run is appended to ``<registry>/runs.jsonl`` in every
    case; a run that cannot start or finish raises (`RetrainError` for what the user can
    fix) after recording, with the record on ``RetrainError.record``.
    """
    started = _now()
    record = RunRecord(
        run_id=f"{started:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}",
        started=started.isoformat(timespec="seconds"),
        trigger=trigger,
        reason=reason,
    )
    staging = Path(registry) / f".staging-{record.run_id}"
    try:
        _run(record, Path(model_dir), Path(registry), staging, feedback, config, brand_rules, records, progress, audit)
    except BaseException as exc:
        if isinstance(exc, (RetrainError, ModelDirError, RegistryError)):
            record.error = str(exc)
        else:
            record.error = f"{type(exc).__name__}: {exc}"
        record.finished = _now().isoformat(timespec="seconds")
        record_run(registry, record)
        if isinstance(exc, (ModelDirError, RegistryError)):
            exc = RetrainError(str(exc))
        if isinstance(exc, RetrainError):
            exc.record = record
            raise exc from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record.finished = _now().isoformat(timespec="seconds")
    record_run(registry, record)
    return record


def _run(
    record: RunRecord,
    model_dir: Path,
    registry: Path,
    staging: Path,
    feedback_path,
    config: RetrainConfig,
    rules: BrandRules,
    records: list[CopyRecord] | None,
    progress: bool,
    audit=None,
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = read_manifest(model_dir)
    record.current_version = manifest.version
    weights = trained_weights(model_dir)
    if weights is None:
        raise RetrainError(
            f"no torch weights for model {manifest.version} in {model_dir}: looked at the manifest's "
            f"'trained' ({manifest.trained or 'empty'}), {model_dir}/trained and "
            f"{model_dir}/../trained; re-export with `tailor export` from the trained folder"
        )
    if feedback_path:
        record.data.feedback = str(Path(feedback_path).resolve())
    feedback = read_feedback(feedback_path) if feedback_path else None
    training = _training_info(weights)
    seed, fraction = training["config"].get("seed", 0), training["config"].get("holdout", 0.1)
    if records is None:
        records = build_corpus(seed)
    expected = training.get("base_corpus_hash") or training.get("corpus_hash")
    if expected and expected != corpus_hash(records):
        _say(
            True, f"the corpus differs from the one {weights} was trained on: its holdout may hold items the model saw"
        )
    corpus_train, corpus_holdout = split_holdout(records, fraction, seed=seed)
    holdout = random.Random(f"eval-{seed}").sample(corpus_holdout, min(config.eval_records, len(corpus_holdout)))
    train_idx, held_idx = _split_feedback(feedback, config.feedback_holdout) if feedback else ([], [])
    held_idx = held_idx[: config.eval_records]  # the corpus keeps its weight in the perplexity
    holdout += [feedback.records[i] for i in held_idx]
    rows, n_feedback, n_replay = fine_tuning_set(feedback, train_idx, corpus_train, config)
    data = record.data
    data.feedback_draws, data.replay_rows, data.train_sha256 = n_feedback, n_replay, corpus_hash(rows)
    if feedback:
        data.rows, data.holdout_rows, data.skipped_rows = len(feedback.records), len(held_idx), feedback.skipped
        data.cutoff_ms, data.sha256 = feedback.cutoff_ms, feedback.sha256
    if not rows:
        raise RetrainError("nothing to fine-tune on: the feedback has no training rows and replay is 0")

    tokenizer = AutoTokenizer.from_pretrained(weights)
    model = AutoModelForCausalLM.from_pretrained(weights)
    _say(progress, f"evaluating the served model {manifest.version} on {len(holdout)} holdout records")
    current = measure(model, tokenizer, holdout, rules, samples=config.eval_samples, seed=seed, progress=progress)
    record.metrics = {"current": _summary(current)}
    _say(progress, f"fine-tuning on {len(rows)} rows ({n_feedback} feedback draws, {n_replay} corpus replay)")
    torch.manual_seed(config.seed)
    size = training["config"].get("size")
    fit_config = TrainConfig(
        size=size if size in SIZES else "small",
        epochs=config.epochs,
        lr=config.lr,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    losses = _fit(model, tokenizer, rows, fit_config, progress)
    _say(progress, "evaluating the candidate on the same holdout")
    candidate = measure(model, tokenizer, holdout, rules, samples=config.eval_samples, seed=seed, progress=progress)
    record.metrics["candidate"] = _summary(candidate)
    decision = promotion_decision(
        current, candidate, ppl_tolerance=config.ppl_tolerance, metric_tolerance=config.metric_tolerance
    )
    if config.dry_run:
        verdict = "would promote" if decision.promote else "would refuse"
        record.decision = f"dry run, {verdict}: {decision.reason.split(': ', 1)[1]}"
        return
    record.decision = decision.reason
    if not decision.promote:
        return

    _say(progress, "exporting the candidate")
    trained_out = staging / TRAINED
    model.save_pretrained(trained_out)
    tokenizer.save_pretrained(trained_out)
    evaluation = {
        **candidate,
        "training": {
            "records": len(rows),
            "final_loss": round(losses[-1], 4) if losses else None,
            "config": {**training["config"], "base": str(weights), "epochs": config.epochs, "lr": config.lr},
            "corpus_hash": record.data.train_sha256,
            "base_corpus_hash": expected or corpus_hash(records),
            "segment_styles": manifest.segment_styles,
            "retrain_run": record.run_id,
            "parent_version": manifest.version,
        },
    }
    (trained_out / EVALUATION).write_text(json.dumps(evaluation, indent=2))
    from models.train.export import export

    exported = export(trained_out, staging, quantize=manifest.quantized, trained=TRAINED)
    dest = version_dir(registry, exported.version)
    if dest.exists():
        raise RegistryError(f"{dest} already exists: another run exported version {exported.version}; retrain again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(dest)
    record.candidate_version = exported.version
    if promote_audited(record, model_dir, dest, manifest.version, audit):
        _say(progress, f"{model_dir} now serves {exported.version}")


def promote_audited(record: RunRecord, model_dir: Path, dest: Path, current: str, audit=None) -> bool:
    """Promote ``dest`` (the candidate) over ``current`` and record it in the audit log; True if promoted.

    ``record`` says what happened. A promotion is refused (``decision`` says why) when another run
    promoted meanwhile or when ``audit`` (`store.audit`) cannot be written: nothing is promoted
    unaudited. A log that fails between its check and the record leaves the promotion standing
    and says so in ``error``.
    """
    from store.redis_guard import StoreUnavailable

    try:
        if audit is not None:
            audit.check()
        promote(model_dir, dest, expect_current=current)
    except RegistryError as exc:
        record.decision = f"refused at promotion: {exc}"
        return False
    except StoreUnavailable as exc:
        record.decision = f"refused at promotion: {exc.detail}"
        return False
    record.promoted = True
    if audit is not None:
        actor = "cli" if record.trigger == "manual" else "system"
        detail = {"from": current, "run_id": record.run_id, "trigger": record.trigger}
        try:
            audit.append(actor, "model.promote", record.candidate_version, detail)
        except StoreUnavailable as exc:
            record.error = f"promoted, but the audit log could not record it: {exc.detail}"
            _say(True, record.error)
    return True


def _training_info(weights: Path) -> dict:
    """What the weights were trained with (seed, holdout share, corpus hash); defaults when not recorded."""
    path = weights / EVALUATION
    try:
        training = json.loads(path.read_text()).get("training") or {}
    except (OSError, ValueError):
        training = {}
    training.setdefault("config", {})
    return training


def _summary(figures: dict) -> dict:
    return {k: v for k, v in figures.items() if k != "perplexity_by_segment_slot"}
