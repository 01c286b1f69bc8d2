"""``tailor export``: a trained model directory -> an ONNX model directory the runtime serves.

Optimum exports the decoder with past key values (``text-generation-with-past``:
one ``model.onnx`` that takes an empty cache on the first step); ``--quantize``
adds int8 dynamic quantization (onnxruntime.quantization) and serves that file.
The manifest records the version, the base, the corpus hash and the evaluation.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from engine.content.grounding import PROMPT_FORMAT
from models.serve.manifest import Manifest, write_manifest

QUANTIZED = "model.int8.onnx"


def export(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    quantize: bool = False,
    version: str | None = None,
    trained: str | None = None,
) -> Manifest:
    """Export ``model_dir`` (saved by `models.train.build.train`) to ``out_dir`` with a manifest.

    The manifest's ``trained`` names the torch weights for the next fine-tune: ``trained``
    when given (relative to ``out_dir``, or absolute), else ``model_dir``'s absolute path.
    """
    from optimum.exporters.onnx import main_export
    from transformers import AutoConfig, AutoTokenizer

    source, out = Path(model_dir), Path(out_dir)
    if not (source / "config.json").is_file():
        raise ValueError(f"{source} is not a trained model directory (no config.json): run `tailor train` first")
    main_export(str(source), str(out), task="text-generation-with-past", do_validation=False)
    onnx_name = "model.onnx"
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(out / "model.onnx"), str(out / QUANTIZED), weight_type=QuantType.QInt8)
        onnx_name = QUANTIZED
    evaluation_path = source / "evaluation.json"
    evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else {}
    training = evaluation.get("training", {})
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = AutoConfig.from_pretrained(source)
    now = datetime.now(UTC)
    corpus = training.get("corpus_hash", "unknown")
    manifest = Manifest(
        version=version or f"{now:%Y%m%d-%H%M%S}-{corpus[:8]}",
        base=(training.get("config") or {}).get("base") or "scratch",
        corpus_hash=corpus,
        onnx=onnx_name,
        quantized=quantize,
        control_tokens=[t for t in tokenizer.additional_special_tokens if t.startswith("<")],
        prompt_format=PROMPT_FORMAT,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        vocab_size=config.vocab_size,
        metrics={k: v for k, v in evaluation.items() if k != "training"},
        segment_styles=training.get("segment_styles") or {},
        created=now.isoformat(timespec="seconds"),
        trained=trained if trained is not None else str(source.resolve()),
    )
    write_manifest(out, manifest)
    return manifest


def run_export(settings, args) -> int:
    manifest = export(args.model, args.out, quantize=args.quantize, version=args.version)
    print(manifest.encode().decode())
    print(f"tailor export: {args.out} is ready to serve (version {manifest.version})", file=sys.stderr)
    return 0
