"""Train a tiny copy model, export it with Optimum, and check what the build promises."""

from __future__ import annotations

import json

import pytest

from config.settings import Settings
from engine.content.catalog import CATALOG_SEED, build_catalog
from engine.content.grounding import PROMPT_FORMAT, copy_prompt
from models.serve.manifest import read_manifest
from models.train.build import (
    EVALUATION,
    FACT_PROMPTS_PER_SLOT,
    GENERIC_PROMPTS_PER_SLOT,
    TrainConfig,
    train,
)
from models.train.corpus import CONTROL_TOKENS, SLOTS, TONES, build_corpus

pytestmark = pytest.mark.model

SEGMENTS = ("bargain_hunter", "loyal_high_spender", "window_shopper", "email_driven")
#: A product of the shared catalog the tiny model's corpus (seed 1) writes for, to prompt with.
ITEM = build_catalog(CATALOG_SEED).items[3].facts()


def test_training_writes_model_tokenizer_and_evaluation(trained):
    folder, evaluation = trained
    for name in ("config.json", "model.safetensors", "tokenizer.json", EVALUATION):
        assert (folder / name).is_file(), name
    saved = json.loads((folder / EVALUATION).read_text())
    # Copy tokens only (the facts prompt is masked from the loss): the tiny fixture model measured 1.93.
    assert saved["holdout_perplexity"] == evaluation["holdout_perplexity"] < 5
    # It learned to use the facts it is given: most headlines and descriptions name their item (measured 0.67
    # of 192; a model that ignored the facts names none, as the 6,000-record fixture did).
    assert saved["item_mention_rate"] == evaluation["item_mention_rate"] > 0.4
    assert set(saved["perplexity_by_segment_slot"]) == {f"{seg}/{slot}" for seg in SEGMENTS for slot in SLOTS}
    assert 0 <= saved["tone_obedience"] <= 1 and 0 <= saved["length_obedience"] <= 1
    assert saved["control_samples"] == len(SEGMENTS) * len(SLOTS) * len(TONES)
    assert saved["training"]["records"] == 24000 and saved["training"]["corpus_hash"]
    for key in ("fact_precision_greedy", "fact_precision_sampled", "item_mention_rate"):
        assert 0 <= saved[key] <= 1, key
    assert set(saved["fact_precision_by_slot"]) == {"greedy", "sampled"}
    assert set(saved["fact_precision_by_slot"]["greedy"]) == set(SLOTS)
    assert set(saved["item_mention_by_slot"]["greedy"]) == {"headline", "description"}
    assert saved["fact_outputs"] == len(SLOTS) * (FACT_PROMPTS_PER_SLOT + GENERIC_PROMPTS_PER_SLOT)
    assert len(saved["holdout_items"]) == 40 and all(i.startswith("sku-") for i in saved["holdout_items"])


def test_control_tokens_are_single_tokens_and_change_the_output(trained):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(folder)
    for token in CONTROL_TOKENS:
        assert len(tokenizer(token).input_ids) == 1, token
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    differing = 0
    for seg in SEGMENTS:
        for slot in SLOTS:
            outputs = set()
            for tone in TONES:
                ids = tokenizer(copy_prompt(seg, slot, tone, ITEM), return_tensors="pt").input_ids
                with torch.no_grad():
                    out = model.generate(ids, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
                outputs.add(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
            differing += len(outputs) >= 3
    assert differing >= 0.9 * len(SEGMENTS) * len(SLOTS)  # the tone token steers the copy


def test_export_writes_a_manifest_the_runtime_accepts(exported, trained):
    folder, manifest = exported
    assert read_manifest(folder) == manifest
    assert manifest.version == "test-1" and manifest.base == "scratch" and manifest.quantized
    assert manifest.onnx == "model.int8.onnx" and (folder / "model.onnx").is_file()
    assert manifest.corpus_hash == trained[1]["training"]["corpus_hash"]
    assert set(CONTROL_TOKENS) <= set(manifest.control_tokens)
    assert manifest.prompt_format == PROMPT_FORMAT == 2
    assert manifest.metrics["fact_precision_greedy"] == trained[1]["fact_precision_greedy"]
    assert manifest.metrics["holdout_perplexity"] == trained[1]["holdout_perplexity"]
    assert (folder / manifest.onnx).stat().st_size < (folder / "model.onnx").stat().st_size


def test_bad_training_settings_are_clear_errors():
    with pytest.raises(ValueError, match="size"):
        TrainConfig(size="huge")
    with pytest.raises(ValueError, match="holdout"):
        TrainConfig(holdout=1.5)


def test_the_runtime_serves_the_exported_model_and_obeys_length(exported):
    from models.serve.runtime import Generator

    folder, manifest = exported
    generator = Generator(folder, providers=["CPUExecutionProvider"])
    assert generator.version == "test-1" and generator.provider == "CPUExecutionProvider"
    prompts = [copy_prompt(seg, "cta", "urgent", ITEM) for seg in SEGMENTS]
    results = generator.generate(prompts, max_new_tokens=16)
    assert all(r.finish_reason in ("stop", "length") for r in results)
    assert sum(bool(r.text.strip()) for r in results) >= 3
    again = generator.generate(prompts, max_new_tokens=16)  # greedy: reproducible
    assert [(r.tokens, r.text) for r in results] == [(r.tokens, r.text) for r in again]


def test_samples_table_covers_every_control_combination(exported, capsys, tmp_path):
    import argparse

    from models.serve.samples import run_samples

    folder, manifest = exported
    assert run_samples(None, argparse.Namespace(model=str(folder), sample=False, seed=0, json=True)) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(SEGMENTS) * len(SLOTS) * len(TONES)
    assert {(r["segment"], r["slot"], r["tone"]) for r in rows} == {
        (seg, slot, tone) for seg in SEGMENTS for slot in SLOTS for tone in TONES
    }
    # About held-out products of the evaluation, and some generic rows (no item).
    held = set(manifest.metrics["holdout_items"])
    assert {r["item_id"] for r in rows} - {None} <= held and any(r["item"] is None for r in rows)
    assert all(r["grounded"] == (r["problem"] is None) for r in rows)
    assert all(
        (r["mentions_item"] is None) == (r["item"] is None or r["slot"] in ("cta", "email_subject")) for r in rows
    )
    assert run_samples(None, argparse.Namespace(model=str(folder), sample=False, seed=0, json=False)) == 0
    table = capsys.readouterr().out
    assert table.count("\n| ") == 2 + len(rows) and "test-1" in table  # header, rule, rows
    assert run_samples(None, argparse.Namespace(model=str(tmp_path / "none"), sample=False, seed=0, json=False)) == 2
    assert "tailor train" in capsys.readouterr().err


@pytest.fixture(scope="module")
def exported_fp32(trained, tmp_path_factory):
    from models.train.export import export

    out = tmp_path_factory.mktemp("onnx-fp32")
    return out, export(trained[0], out, version="test-fp32")


def test_dynamic_batching_answers_each_caller_as_if_alone(exported_fp32):
    # fp32: int8 dynamic quantization scales activations per batch, so there a
    # prompt's greedy copy may change with its batch-mates (see models/README.md).
    import asyncio

    from models.serve.batching import BatchingGenerator
    from models.serve.runtime import Generator

    generator = Generator(exported_fp32[0], providers=["CPUExecutionProvider"])
    prompts = [copy_prompt(seg, slot, "premium", ITEM) for seg in SEGMENTS for slot in SLOTS]
    alone = [generator.generate([p], max_new_tokens=12)[0] for p in prompts]

    async def main():
        async with BatchingGenerator(generator, max_batch=8, max_wait_ms=20) as batcher:
            same = await asyncio.gather(*(batcher.generate(p, max_new_tokens=12) for p in prompts))
            mixed = await asyncio.gather(
                batcher.generate(prompts[0], max_new_tokens=12),
                batcher.generate(prompts[1], max_new_tokens=3),  # other settings: another batch
            )
            return same, mixed, list(batcher.batch_sizes)

    same, mixed, sizes = asyncio.run(main())
    assert [r.tokens for r in same] == [r.tokens for r in alone]
    assert max(sizes) == 8 and sum(sizes) == len(prompts) + 2  # gathered, capped, all answered
    assert mixed[0].tokens == alone[0].tokens and len(mixed[1].tokens) <= 3


def test_batcher_reports_errors_to_every_caller():
    import asyncio

    from models.serve.batching import BatchingGenerator

    class Broken:
        def generate(self, prompts, **settings):
            raise ValueError("boom")

    async def main():
        async with BatchingGenerator(Broken(), max_wait_ms=5) as batcher:
            return await asyncio.gather(*(batcher.generate("x") for _ in range(3)), return_exceptions=True)

    assert [str(e) for e in asyncio.run(main())] == ["boom"] * 3
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(BatchingGenerator(Broken()).generate("x"))


def test_fine_tuning_from_a_local_base_keeps_its_tokenizer(trained, tmp_path):
    from transformers import AutoTokenizer

    base, _ = trained
    out = tmp_path / "tuned"
    styles = {"email-driven, quick looks": "email_driven"}
    evaluation = train(
        out,
        TrainConfig(size="tiny", max_records=300, base=str(base), seed=2, eval_samples=1),
        build_corpus(seed=1),
        progress=False,
        segment_styles=styles,
    )
    assert evaluation["training"]["config"]["base"] == str(base)
    assert "fact_precision_greedy" in evaluation  # the base is prompted with the facts the same way
    assert evaluation["training"]["segment_styles"] == styles
    assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(base).get_vocab()
    with pytest.raises(ValueError, match="config.json"):
        train(tmp_path / "x", TrainConfig(size="tiny", base=str(tmp_path)), build_corpus(seed=1), progress=False)


def test_a_base_without_tailors_tokens_gets_every_control_token(tmp_path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from models.train.build import load_base

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["a plain base model knows no control tokens"] * 20, vocab_size=300, show_progress=False)
    plain = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="a")
    plain.save_pretrained(tmp_path)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(plain), n_layer=1, n_embd=16, n_head=2)).save_pretrained(tmp_path)
    model, tokenizer = load_base(tmp_path)
    for token in CONTROL_TOKENS:  # <facts> and <copy> too
        assert len(tokenizer(token).input_ids) == 1, token
    assert tokenizer.pad_token is not None and model.get_input_embeddings().num_embeddings == len(tokenizer)


def test_stored_segment_profiles_name_the_styles(exported, trained, tmp_path):
    from models.serve.manifest import read_manifest
    from models.train.build import stored_segment_styles
    from models.train.export import export

    no_store = Settings.of(segments=4, feature_repo=str(tmp_path / "nowhere"), redis_url="")
    assert stored_segment_styles(no_store) == {}  # no store: no mapping, no crash
    folder, _ = trained
    evaluation = json.loads((folder / EVALUATION).read_text())
    evaluation["training"]["segment_styles"] = {"high spend, click-happy": "loyal_high_spender"}
    (folder / EVALUATION).write_text(json.dumps(evaluation))
    out = tmp_path / "onnx"
    export(folder, out, version="styles")
    assert read_manifest(out).segment_styles == {"high spend, click-happy": "loyal_high_spender"}


def test_the_training_device_is_checked_before_any_work():
    import torch

    from models.train.build import torch_device

    with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda'"):
        TrainConfig(device="tpu")
    assert torch_device("cpu").type == "cpu"
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch sees no CUDA GPU"):
            torch_device("cuda")
