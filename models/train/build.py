"""``tailor train``: a small GPT-2-style copy model, from scratch or from a local base.

Build side only (torch, transformers, tokenizers; the `train` extra). From the
corpus (`models/train/corpus.py`) it trains a byte-level BPE tokenizer whose special
tokens include every control token (``<seg=...> <slot=...> <tone=...>``), then a
GPT-2 language model on ``control prefix + copy + <|endoftext|>``, so one
model serves every segment, slot and tone. With ``--base DIR`` (any local
Hugging Face causal LM) it keeps the base's tokenizer, adds the control tokens
and fine-tunes instead.

The prompt is the control codes and the item's facts (`engine.content.grounding.copy_prompt`).
The holdout is split by item (unseen products); the evaluation written beside
the model has perplexity per segment and slot, how often generated copy obeys its
control codes (tone vocabulary, length limit per slot), its fact precision (greedy and
sampled: every fact-like token from the item's facts) and how often it names the item.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import msgspec
import torch
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from engine.content.grounding import NEW_TOKENS, copy_prompt, grounding_problem, mentions_item
from models.train.corpus import (
    CONTROL_TOKENS,
    CopyRecord,
    build_corpus,
    corpus_hash,
    obeys_length,
    obeys_tone,
    split_holdout,
    training_text,
)

EOS = "<|endoftext|>"
PAD = "<pad>"
#: Model sizes: "tiny" for tests (seconds), "small" the default (minutes on a laptop CPU).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 192, "vocab_size": 1000},
    "small": {"n_layer": 4, "n_embd": 192, "n_head": 4, "n_positions": 192, "vocab_size": 4000},
}
EVALUATION = "evaluation.json"
TRAINING = "training.json"


class TrainConfig(msgspec.Struct, frozen=True, kw_only=True):
    size: str = "small"
    epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
    holdout: float = 0.1
    #: Use at most this many training records (0: all); for quick runs.
    max_records: int = 0
    #: Generated samples per (segment, slot, tone) for the obedience check.
    eval_samples: int = 2
    base: str | None = None
    #: Where torch trains and evaluates: "auto" (a CUDA GPU when torch sees one, else the CPU), "cpu", "cuda".
    device: str = "auto"

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, got {self.size!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch_size must be at least 1, lr positive")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be a fraction in (0, 1), got {self.holdout}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")


def torch_device(name: str) -> torch.device:
    """The torch device of a `TrainConfig.device`: "auto" is CUDA when torch sees a GPU; "cuda" without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda: torch sees no CUDA GPU (a CPU build of torch, or no driver); use --device cpu"
        )
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer; every control token is one special token."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS, PAD, *CONTROL_TOKENS], show_progress=False
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        # Not token_type_ids: GPT-2 would add an embedding for them that training never saw.
        model_input_names=["input_ids", "attention_mask"],
        bos_token=EOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(CONTROL_TOKENS),
    )


def load_base(base: str | Path) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast]:
    """A local Hugging Face causal LM and its tokenizer, with Tailor's control tokens added."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(base)
    if not (folder / "config.json").is_file():
        raise ValueError(f"--base {folder} is not a Hugging Face model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    added = tokenizer.add_special_tokens({"additional_special_tokens": list(CONTROL_TOKENS)})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD})
        added += 1
    if added:
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def train(
    out_dir: str | Path,
    config: TrainConfig,
    records: list[CopyRecord] | None = None,
    *,
    progress: bool = True,
    segment_styles: dict[str, str] | None = None,
) -> dict:
    """Train (or fine-tune) and save model + tokenizer + evaluation into ``out_dir``; returns the evaluation."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    records = records if records is not None else build_corpus(config.seed)
    train_set, holdout = split_holdout(records, config.holdout, seed=config.seed)
    if config.max_records and len(train_set) > config.max_records:
        train_set = random.Random(config.seed).sample(train_set, config.max_records)
    size = SIZES[config.size]
    if config.base:
        model, tokenizer = load_base(config.base)
    else:
        tokenizer = train_tokenizer([training_text(r) for r in train_set], size["vocab_size"])
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=len(tokenizer),
                n_positions=size["n_positions"],
                n_embd=size["n_embd"],
                n_layer=size["n_layer"],
                n_head=size["n_head"],
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model.to(torch_device(config.device))
    started = time.perf_counter()
    losses = _fit(model, tokenizer, train_set, config, progress)
    seconds = time.perf_counter() - started
    model.eval()
    evaluation = evaluate(model, tokenizer, holdout, samples=config.eval_samples, seed=config.seed)
    evaluation["training"] = {
        "records": len(train_set),
        "holdout_records": len(holdout),
        "seconds": round(seconds, 1),
        "final_loss": round(losses[-1], 4) if losses else None,
        "parameters": model.num_parameters(),
        "device": str(model.device),
        "config": msgspec.structs.asdict(config),
        "corpus_hash": corpus_hash(records),
        "segment_styles": segment_styles or {},
    }
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / EVALUATION).write_text(json.dumps(evaluation, indent=2))
    return evaluation


#: Batches whose records are sorted by length together: a batch pads to its longest text, so
#: batches of like lengths waste less work (descriptions are four times as long as calls to action).
BUCKET_BATCHES = 32


def _batches(tokenizer, records: list[CopyRecord], batch_size: int, rng: random.Random, max_len: int):
    """(token batch, labels) in random order; the loss counts the copy only, not the prompt (facts are given)."""
    order = list(range(len(records)))
    rng.shuffle(order)
    span = batch_size * BUCKET_BATCHES
    groups = []
    for start in range(0, len(order), span):
        bucket = sorted(order[start : start + span], key=lambda i: len(training_text(records[i])))
        groups += [bucket[b : b + batch_size] for b in range(0, len(bucket), batch_size)]
    rng.shuffle(groups)
    for group in groups:
        chunk = [records[i] for i in group]
        texts = [training_text(r) + EOS for r in chunk]
        # Right padding whatever the tokenizer was saved with: the prompt is each row's start.
        batch = tokenizer(
            texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt", padding_side="right"
        )
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        prompts = tokenizer([copy_prompt(r.segment, r.slot, r.tone, r.item) for r in chunk]).input_ids
        for row, prompt in enumerate(prompts):
            labels[row, : len(prompt)] = -100
        yield batch, labels


def _copy_loss(model, batch, labels):
    """Mean cross-entropy of the copy tokens.

    For a GPT-2 the vocabulary projection runs on the copy positions only: the prompt
    (about two thirds of each text) would cost a third of the training time in logits
    nobody scores. Other models (``--base``) take the usual path.
    """
    if not isinstance(model, GPT2LMHeadModel):
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss
    hidden = model.transformer(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    targets = labels[:, 1:]
    scored = targets != -100
    logits = model.lm_head(hidden[:, :-1][scored])
    return torch.nn.functional.cross_entropy(logits, targets[scored])


def _fit(model, tokenizer, records, config: TrainConfig, progress: bool) -> list[float]:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    steps = config.epochs * math.ceil(len(records) / config.batch_size)
    # Warm up over a tenth of the steps (at least two: OneCycleLR needs a rising phase).
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=max(steps, 4), pct_start=min(0.5, max(0.1, 2 / max(steps, 4)))
    )
    rng = random.Random(config.seed)
    losses: list[float] = []
    bar = tqdm(total=steps, desc="training", unit="batch", file=sys.stderr, disable=not progress, mininterval=0.5)
    max_len = model.config.n_positions
    device = model.device
    for _ in range(config.epochs):
        for batch, labels in _batches(tokenizer, records, config.batch_size, rng, max_len):
            batch, labels = batch.to(device), labels.to(device)
            loss = _copy_loss(model, batch, labels)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    return losses


@torch.no_grad()
def evaluate(
    model, tokenizer, holdout: list[CopyRecord], *, samples: int = 2, seed: int = 0, max_records: int = 2000
) -> dict:
    """Holdout perplexity per segment and slot (copy tokens only), and control-code obedience.

    Perplexity is measured on at most ``max_records`` holdout records (a fixed sample).
    """
    model.eval()
    combinations = sorted({(r.segment, r.slot, r.tone) for r in holdout})
    held_items = sorted({r.item_id for r in holdout if r.item is not None})
    if len(holdout) > max_records:
        holdout = random.Random(seed).sample(holdout, max_records)
    nll: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for start in range(0, len(holdout), 64):
        chunk = holdout[start : start + 64]
        # No trailing space: byte-level BPE glues a word's leading space to the word.
        prefixes = [copy_prompt(r.segment, r.slot, r.tone, r.item) for r in chunk]
        texts = [p + " " + r.text + EOS for p, r in zip(prefixes, chunk)]
        batch = tokenizer(texts, padding=True, return_tensors="pt", padding_side="right").to(model.device)
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        for i, p in enumerate(prefixes):  # score the copy, not the prompt
            labels[i, : len(tokenizer(p).input_ids)] = -100
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none"
        )
        counted = (labels[:, 1:] != -100).sum(1)
        for r, loss, n in zip(chunk, losses.sum(1).tolist(), counted.tolist()):
            total = nll[(r.segment, r.slot)]
            total[0] += loss
            total[1] += n
    perplexity = {f"{seg}/{slot}": round(math.exp(s / n), 3) for (seg, slot), (s, n) in sorted(nll.items()) if n}
    all_loss = sum(s for s, _ in nll.values())
    all_tokens = sum(n for _, n in nll.values())
    items = {}
    for r in holdout:  # one held-out item per combination, for the obedience prompts
        items.setdefault((r.segment, r.slot, r.tone), r.item)
    obedience = control_obedience(model, tokenizer, combinations, samples=samples, seed=seed, items=items)
    grounding = fact_precision(model, tokenizer, holdout, seed=seed)
    return {
        "holdout_perplexity": round(math.exp(all_loss / max(all_tokens, 1)), 3),
        "perplexity_by_segment_slot": perplexity,
        **obedience,
        **grounding,
        # Which products the figures are about: `tailor samples` shows copy for some of them.
        "holdout_items": held_items,
    }


#: Prompts per slot and decoding for the fact-precision evaluation (held-out items; a few generic ones).
FACT_PROMPTS_PER_SLOT = 96
GENERIC_PROMPTS_PER_SLOT = 16


def _generate(model, tokenizer, prompts: list[str], *, slot: str, greedy: bool) -> list[str]:
    """Copy for ``prompts`` as the background generator writes it: greedy, or sampled as it samples."""
    sampling = {} if greedy else {"top_p": 0.9, "temperature": 0.8}
    out = []
    for start in range(0, len(prompts), 64):
        batch = tokenizer(prompts[start : start + 64], padding=True, return_tensors="pt", padding_side="left")
        batch = batch.to(model.device)
        generated = model.generate(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,  # no token_type_ids: GPT-2 would add an embedding for them
            do_sample=not greedy,
            max_new_tokens=NEW_TOKENS[slot],
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **sampling,
        )
        texts = tokenizer.batch_decode(generated[:, batch.input_ids.shape[1] :], skip_special_tokens=True)
        out += [t.strip() for t in texts]
    return out


@torch.no_grad()
def fact_precision(model, tokenizer, holdout: list[CopyRecord], *, seed: int = 0) -> dict:
    """Share of generated copy whose every fact-like token comes from the prompt's facts, greedy and sampled.

    Prompts: per slot, up to `FACT_PROMPTS_PER_SLOT` held-out (item, segment, tone)
    combinations, each with the facts its record's prompt had, and
    `GENERIC_PROMPTS_PER_SLOT` with no item (copy that must name no product). Item
    mention: the share of headlines and descriptions for an item that name it.
    """
    model.eval()
    torch.manual_seed(seed)
    rng = random.Random(f"facts-{seed}")
    by_slot: dict[str, dict[str, float]] = {"greedy": {}, "sampled": {}}
    mention_by_slot: dict[str, dict[str, float]] = {"greedy": {}, "sampled": {}}
    passed = {"greedy": 0, "sampled": 0}
    mentioned = {"greedy": 0, "sampled": 0}
    mention_total = total = 0
    segments = sorted({r.segment for r in holdout})
    tones = sorted({r.tone for r in holdout})
    for slot in sorted({r.slot for r in holdout}):
        candidates = [r for r in holdout if r.slot == slot and r.item is not None]
        rng.shuffle(candidates)
        seen, cases = set(), []
        for r in candidates:
            if (r.item_id, r.segment, r.tone) not in seen and len(cases) < FACT_PROMPTS_PER_SLOT:
                seen.add((r.item_id, r.segment, r.tone))
                cases.append((r.segment, r.tone, r.item))
        cases += [(rng.choice(segments), rng.choice(tones), None) for _ in range(GENERIC_PROMPTS_PER_SLOT)]
        prompts = [copy_prompt(seg, slot, tone, item) for seg, tone, item in cases]
        total += len(prompts)
        asked = slot in ("headline", "description")
        if asked:
            mention_total += sum(item is not None for _, _, item in cases)
        for mode in ("greedy", "sampled"):
            texts = _generate(model, tokenizer, prompts, slot=slot, greedy=mode == "greedy")
            ok = sum(grounding_problem(t, item) is None for t, (_, _, item) in zip(texts, cases))
            passed[mode] += ok
            by_slot[mode][slot] = round(ok / len(prompts), 4)
            if asked:
                named = [mentions_item(t, item) for t, (_, _, item) in zip(texts, cases) if item is not None]
                mention_by_slot[mode][slot] = round(sum(named) / max(len(named), 1), 4)
                mentioned[mode] += sum(named)
    return {
        "fact_precision_greedy": round(passed["greedy"] / max(total, 1), 4),
        "fact_precision_sampled": round(passed["sampled"] / max(total, 1), 4),
        "fact_precision_by_slot": by_slot,
        "fact_outputs": total,
        "item_mention_rate": round(mentioned["greedy"] / max(mention_total, 1), 4),
        "item_mention_rate_sampled": round(mentioned["sampled"] / max(mention_total, 1), 4),
        "item_mention_by_slot": mention_by_slot,
        "item_mention_outputs": mention_total,
    }


@torch.no_grad()
def control_obedience(model, tokenizer, combinations, *, samples: int, seed: int, items=None) -> dict:
    """Sample copy for each (segment, slot, tone); share within the slot's length and using the tone's words.

    ``items``: (segment, slot, tone) -> the item to prompt that combination with; none there: generic copy.
    """
    torch.manual_seed(seed)
    tone_ok = length_ok = total = 0
    by_tone: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    items = items or {}
    for slot in sorted({slot for _, slot, _ in combinations}):
        mine = [combo for combo in combinations if combo[1] == slot for _ in range(samples)]
        texts = _generate(model, tokenizer, [copy_prompt(*c, items.get(c)) for c in mine], slot=slot, greedy=False)
        for (_, _, tone), text in zip(mine, texts):
            ok_tone, ok_len = obeys_tone(text, tone), obeys_length(text, slot)
            tone_ok += ok_tone
            length_ok += ok_len
            total += 1
            by_tone[tone][0] += ok_tone
            by_tone[tone][1] += 1
    return {
        "control_samples": total,
        "tone_obedience": round(tone_ok / max(total, 1), 3),
        "length_obedience": round(length_ok / max(total, 1), 3),
        "tone_obedience_by_tone": {t: round(a / b, 3) for t, (a, b) in sorted(by_tone.items())},
    }


def stored_segment_styles(settings) -> dict[str, str]:
    """Live segment label -> copy style, from the segment profiles in Feast (empty if none yet)."""
    from models.train.corpus import segment_style_for_label

    if not settings.audience.segments:
        return {}
    try:
        from store.feast import open_store, read_profiles

        profiles = read_profiles(open_store(settings), settings.audience.segments)
    except Exception as exc:  # noqa: BLE001 - no store or nothing applied yet: train without them
        print(
            f"tailor train: no stored segment profiles ({type(exc).__name__}); styles map at serving time",
            file=sys.stderr,
        )
        return {}
    return {p.label: segment_style_for_label(p.label) for p in profiles}


def run_train(settings, args) -> int:
    try:
        torch_device(args.device)  # before the corpus, the tokenizer and the model are built
    except RuntimeError as exc:
        print(f"tailor train: {exc}", file=sys.stderr)
        return 2
    config = TrainConfig(
        size=args.size,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        max_records=args.max_records,
        base=args.base,
        device=args.device,
    )
    styles = stored_segment_styles(settings)
    if styles:
        print(f"tailor train: segment profiles found: {styles}", file=sys.stderr)
    evaluation = train(args.out, config, segment_styles=styles)
    print(json.dumps({k: v for k, v in evaluation.items() if k != "perplexity_by_segment_slot"}))
    print(f"tailor train: model and tokenizer in {args.out}; next: tailor export {args.out}", file=sys.stderr)
    return 0
