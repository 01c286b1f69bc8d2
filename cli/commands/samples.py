"""``tailor samples``: what an exported model writes per segment, slot and tone (models/serve/samples.py)."""

from __future__ import annotations


def add_parser(subparsers) -> None:
    samples = subparsers.add_parser("samples", help="what an exported model writes per segment, slot and tone")
    samples.add_argument("model", nargs="?", default="models/artifacts/onnx", help="exported model folder")
    samples.add_argument("--sample", action="store_true", help="sample (top-p 0.9, temperature 0.8) instead of greedy")
    samples.add_argument("--seed", type=int, default=0)
    samples.add_argument("--json", action="store_true", help="JSON rows instead of a Markdown table")


def run(settings, args) -> int:
    from models.serve.samples import run_samples

    return run_samples(settings, args)
