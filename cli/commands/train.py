"""``tailor train``: the copy model, trained on the generated corpus (models/train/build.py)."""

from __future__ import annotations

from cli.arguments import positive_int


def add_parser(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train the copy model (tokenizer + small GPT-2) on the generated corpus"
    )
    train.add_argument(
        "--out", default="models/artifacts/trained", help="output folder (default models/artifacts/trained)"
    )
    train.add_argument(
        "--base", help="a local Hugging Face causal-LM folder to fine-tune instead of training from scratch"
    )
    train.add_argument("--size", choices=("tiny", "small"), default="small", help="model size (default small)")
    train.add_argument("--epochs", type=positive_int, default=2, help="passes over the corpus (default 2)")
    train.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    train.add_argument("--batch-size", type=positive_int, default=32, help="records per batch (default 32)")
    train.add_argument("--seed", type=int, default=0, help="corpus and training seed (default 0)")
    train.add_argument("--max-records", type=int, default=0, help="train on at most this many records (default: all)")
    train.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where torch trains and evaluates (default auto: a CUDA GPU when torch sees one)",
    )


def run(settings, args) -> int:
    from models.train.build import run_train

    return run_train(settings, args)
