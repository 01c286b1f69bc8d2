"""``tailor samples``: what a model writes, per segment, slot and tone (Markdown or JSON).

Runs on the serving runtime (ONNX Runtime, no torch), so it shows exactly what
the API would get. models/README.md's table is this command's output.
"""

from __future__ import annotations

import json
import sys

from models.serve.manifest import ModelDirError
from models.train.corpus import SEGMENT_STYLES, SLOTS, TONES, control_prefix, obeys_length, obeys_tone


def sample_rows(generator, *, greedy: bool = True, seed: int = 0, max_new_tokens: int = 48) -> list[dict]:
    """One generated text per (segment, slot, tone), with whether it obeys its slot and tone."""
    keys = [(seg, slot, tone) for seg in SEGMENT_STYLES for slot in SLOTS for tone in TONES]
    results = generator.generate(
        [control_prefix(*k) for k in keys],
        greedy=greedy,
        seed=seed,
        max_new_tokens=max_new_tokens,
        top_p=0.9,
        temperature=0.8,
    )
    return [
        {
            "segment": seg,
            "slot": slot,
            "tone": tone,
            "text": r.text.strip(),
            "fits_slot": obeys_length(r.text.strip(), slot) if r.text.strip() else False,
            "uses_tone": obeys_tone(r.text, tone),
        }
        for (seg, slot, tone), r in zip(keys, results)
    ]


def markdown(rows: list[dict], manifest) -> str:
    lines = [
        f"Model `{manifest.version}` ({'int8' if manifest.quantized else 'fp32'} ONNX, base {manifest.base}), "
        "greedy decoding, one sample per segment, slot and tone. ✓ = within the slot's length / uses the tone's words.",
        "",
        "| segment | slot | tone | generated copy | fits | tone |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        text = r["text"].replace("|", "\\|") or "(empty)"
        lines.append(
            f"| {r['segment']} | {r['slot']} | {r['tone']} | {text} | "
            f"{'✓' if r['fits_slot'] else '✗'} | {'✓' if r['uses_tone'] else '✗'} |"
        )
    fits = sum(r["fits_slot"] for r in rows) / len(rows)
    tone = sum(r["uses_tone"] for r in rows) / len(rows)
    lines += ["", f"{len(rows)} samples: {fits:.0%} fit their slot, {tone:.0%} use their tone's words."]
    return "\n".join(lines)


def run_samples(settings, args) -> int:
    from models.serve.runtime import Generator

    try:
        generator = Generator(args.model)
    except ModelDirError as exc:
        print(f"tailor samples: {exc}", file=sys.stderr)
        return 2
    rows = sample_rows(generator, greedy=not args.sample, seed=args.seed)
    if args.json:
        print(json.dumps(rows))
    else:
        print(markdown(rows, generator.manifest))
    return 0
