"""``tailor export``: a trained model to ONNX with a manifest (models/train/export.py)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    export = subparsers.add_parser("export", help="export a trained model to ONNX (Optimum) with a manifest")
    export.add_argument("model", nargs="?", default="models/artifacts/trained", help="trained model folder")
    export.add_argument("--out", default="models/artifacts/onnx", help="output folder (default models/artifacts/onnx)")
    export.add_argument("--quantize", action="store_true", help="also int8 dynamic quantization; serve that file")
    export.add_argument("--version", help="model version (default: time stamp and corpus hash)")


def run(settings, args) -> int:
    from models.train.export import run_export

    return run_export(settings, args)
