"""``tailor samples``: what a model writes, per segment, slot and tone, about held-out products (Markdown or JSON).

Runs on the serving runtime (ONNX Runtime, no torch), so it shows exactly what
the API would get: the prompt carries the item's facts as the background
generator writes it (`engine.content.grounding.copy_prompt`), and each row says
whether the copy states only those facts and names the item.
models/README.md's table is this command's output.
"""

from __future__ import annotations

import json
import sys

from engine.content.catalog import CATALOG_SEED, build_catalog
from engine.content.grounding import NEW_TOKENS, PROMPT_FORMAT, copy_prompt, grounding_problem, mentions_item
from models.serve.manifest import ModelDirError
from models.train.corpus import SEGMENT_STYLES, SLOTS, TONES, obeys_length, obeys_tone

#: Products the rows are about (besides the generic rows, for no item).
SAMPLE_ITEMS = 7


def sample_items(manifest) -> list[dict | None]:
    """A few products the model never trained on, then None (generic copy).

    The held-out products of its evaluation (``holdout_items`` in the manifest's
    metrics) where they are items of the shared catalog; else items of a larger
    catalog of the same seed, beyond the 400 the default corpus is written for.
    """
    catalog = build_catalog(CATALOG_SEED)
    by_id = {i.item_id: i for i in catalog.items}
    held = [by_id[i] for i in (manifest.metrics or {}).get("holdout_items") or () if i in by_id]
    if len(held) >= SAMPLE_ITEMS:
        step = len(held) // SAMPLE_ITEMS
        chosen = held[::step][:SAMPLE_ITEMS]
    else:
        chosen = list(build_catalog(CATALOG_SEED, len(catalog.items) + SAMPLE_ITEMS).items[-SAMPLE_ITEMS:])
    return [i.facts() for i in chosen] + [None]


def sample_rows(generator, *, greedy: bool = True, seed: int = 0) -> list[dict]:
    """One generated text per (segment, slot, tone), about a held-out item (one combination in eight: no item)."""
    keys = [(seg, slot, tone) for seg in SEGMENT_STYLES for slot in SLOTS for tone in TONES]
    items = sample_items(generator.manifest)
    cases = [(key, items[n % len(items)]) for n, key in enumerate(keys)]
    rows = []
    for slot in SLOTS:  # one batch per slot, with its own token budget, as the background generator runs
        mine = [(key, item) for key, item in cases if key[1] == slot]
        results = generator.generate(
            [copy_prompt(*key, item) for key, item in mine],
            greedy=greedy,
            seed=seed,
            max_new_tokens=NEW_TOKENS[slot],
            top_p=0.9,
            temperature=0.8,
        )
        for ((seg, _, tone), item), r in zip(mine, results):
            text = r.text.strip()
            rows.append(
                {
                    "segment": seg,
                    "slot": slot,
                    "tone": tone,
                    "item": item["title"] if item else None,
                    "item_id": item["item_id"] if item else None,
                    "text": text,
                    "fits_slot": obeys_length(text, slot) if text else False,
                    "uses_tone": obeys_tone(text, tone),
                    "grounded": grounding_problem(text, item) is None,
                    "problem": grounding_problem(text, item),
                    # Only headlines and descriptions must name their item; None where not asked.
                    "mentions_item": mentions_item(text, item)
                    if item and slot in ("headline", "description")
                    else None,
                }
            )
    order = {k: n for n, k in enumerate(keys)}
    return sorted(rows, key=lambda r: order[(r["segment"], r["slot"], r["tone"])])


def markdown(rows: list[dict], manifest) -> str:
    mark = {True: "✓", False: "✗", None: "-"}
    lines = [
        f"Model `{manifest.version}` ({'int8' if manifest.quantized else 'fp32'} ONNX, base {manifest.base}), "
        "greedy decoding, one sample per segment, slot and tone, about a product it never trained on "
        "(or none: generic copy). ✓ = within the slot's length / uses the tone's words / states only the "
        "item's facts / names the item (headlines and descriptions).",
        "",
        "| segment | slot | tone | item | generated copy | fits | tone | grounded | names item |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        text = r["text"].replace("|", "\\|") or "(empty)"
        lines.append(
            f"| {r['segment']} | {r['slot']} | {r['tone']} | {r['item'] or '(none)'} | {text} | "
            f"{mark[r['fits_slot']]} | {mark[r['uses_tone']]} | {mark[r['grounded']]} | {mark[r['mentions_item']]} |"
        )
    n = len(rows)
    fits = sum(r["fits_slot"] for r in rows) / n
    tone = sum(r["uses_tone"] for r in rows) / n
    grounded = sum(r["grounded"] for r in rows) / n
    asked = [r["mentions_item"] for r in rows if r["mentions_item"] is not None]
    named = f", {sum(asked) / len(asked):.0%} of the headlines and descriptions name their item" if asked else ""
    lines += [
        "",
        f"{n} samples: {fits:.0%} fit their slot, {tone:.0%} use their tone's words, "
        f"{grounded:.0%} state only the item's facts{named}.",
    ]
    return "\n".join(lines)


def run_samples(settings, args) -> int:
    from models.serve.runtime import Generator

    try:
        generator = Generator(args.model)
    except ModelDirError as exc:
        print(f"tailor samples: {exc}", file=sys.stderr)
        return 2
    if generator.manifest.prompt_format != PROMPT_FORMAT:
        print(
            f"tailor samples: the model in {args.model} ({generator.version}) was trained for prompt format "
            f"{generator.manifest.prompt_format}, without the item's facts: build a new one with "
            "`tailor train && tailor export --quantize`",
            file=sys.stderr,
        )
        return 2
    rows = sample_rows(generator, greedy=not args.sample, seed=args.seed)
    if args.json:
        print(json.dumps(rows))
    else:
        print(markdown(rows, generator.manifest))
    return 0
