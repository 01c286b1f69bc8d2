"""The model directory contract between the build (`tailor export`) and the runtime.

A model directory holds what ONNX Runtime and the tokenizer need, plus
``manifest.json``: which version this is, what it was built from, and how it
scored. The runtime refuses a directory whose manifest is missing, corrupt or
does not match the files beside it, with a message that says what to do.

Examples
--------
>>> m = Manifest(version="v1", base="scratch", corpus_hash="ab12", onnx="model.onnx",
...              control_tokens=["<seg=x>"], eos_token_id=0, pad_token_id=1, vocab_size=500)
>>> Manifest.decode(m.encode()) == m
True
"""

from __future__ import annotations

from pathlib import Path

import msgspec

MANIFEST = "manifest.json"
#: Bumped when the layout of a model directory changes incompatibly.
FORMAT = 1


class ModelDirError(Exception):
    """A model directory that cannot be served, and why."""


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    format: int = FORMAT
    #: The model's version: what the API reports and caches key on.
    version: str
    #: "scratch", or the base model directory it was fine-tuned from.
    base: str
    #: sha256 of the training corpus (models/train/corpus.py: corpus_hash).
    corpus_hash: str
    #: The ONNX file in the directory (a decoder with past key values).
    onnx: str = "model.onnx"
    quantized: bool = False
    #: Special tokens that steer the copy: segment, slot and tone.
    control_tokens: list[str] = []
    eos_token_id: int
    pad_token_id: int
    vocab_size: int
    #: Evaluation figures written by the build (perplexity, control-code obedience).
    metrics: dict = {}
    #: Live segment label -> the ``<seg=...>`` style to prompt with, from the segment
    #: profiles stored when the model was trained (empty: map labels at serving time).
    segment_styles: dict[str, str] = {}
    created: str = ""
    #: The torch weights this was exported from, for the next fine-tune (`tailor retrain`):
    #: relative to the model directory or absolute; empty: look in ``<dir>/trained``, then ``<dir>/../trained``.
    trained: str = ""
    #: The prompt the model was trained on: 2, the control codes and the item's facts
    #: (`engine.content.grounding.copy_prompt`); 1 (manifests without it), the control codes alone.
    prompt_format: int = 1

    def encode(self) -> bytes:
        return msgspec.json.format(msgspec.json.encode(self), indent=2)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        return msgspec.json.decode(data, type=cls)


def read_manifest(model_dir: str | Path) -> Manifest:
    """The manifest of ``model_dir``; `ModelDirError` if the directory cannot be served."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise ModelDirError(f"no model directory at {folder}: build one with `tailor train` then `tailor export`")
    path = folder / MANIFEST
    if not path.is_file():
        raise ModelDirError(f"{folder} has no {MANIFEST}: it is not an exported Tailor model (run `tailor export`)")
    try:
        manifest = Manifest.decode(path.read_bytes())
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ModelDirError(f"{path} is corrupt ({exc}): re-run `tailor export`") from None
    if manifest.format != FORMAT:
        raise ModelDirError(f"{path} has format {manifest.format}, this Tailor reads {FORMAT}: re-export the model")
    for name in (manifest.onnx, "tokenizer.json"):
        if not (folder / name).is_file():
            raise ModelDirError(f"{folder} lacks {name}, which its manifest needs: re-run `tailor export`")
    return manifest


def write_manifest(model_dir: str | Path, manifest: Manifest) -> Path:
    path = Path(model_dir) / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(manifest.encode())
    tmp.rename(path)
    return path
