"""models/serve/runtime.py: the ONNX Runtime generator, against a tiny GPT-2 built and exported here.

The fixture trains a byte-level BPE tokenizer and a 2-layer GPT-2 for a few steps (torch is
fine in tests, never in the runtime), exports it with Optimum and writes a manifest.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import msgspec
import numpy as np
import pytest

from models.serve import runtime
from models.serve.manifest import Manifest, ModelDirError, read_manifest, write_manifest
from models.serve.runtime import CPU, GenerationResult, Generator, choose_providers, pick_next
from tests.support import ROOT

CONTROL = ["<seg=bargain_hunter>", "<seg=loyal>", "<slot=headline>", "<slot=body>", "<tone=urgent>", "<tone=calm>"]
EOS, PAD = "<|endoftext|>", "<pad>"
PROMPTS = [
    "<seg=loyal><slot=body><tone=calm>",
    "<seg=bargain_hunter><slot=headline><tone=urgent> hurry, 20% off",
    "<seg=loyal><slot=headline><tone=urgent> last",
    "<seg=bargain_hunter><slot=body><tone=calm> take your time with our new",
]


def _copy_lines(n: int, seed: int = 0) -> list[str]:
    """Short marketing lines whose wording follows their control tokens."""
    rnd = random.Random(seed)
    items = ["shoes", "coats", "bags", "jackets", "boots", "scarves", "hats", "dresses"]
    lines = []
    for _ in range(n):
        seg, slot, tone = rnd.choice(CONTROL[:2]), rnd.choice(CONTROL[2:4]), rnd.choice(CONTROL[4:])
        item, pct = rnd.choice(items), rnd.choice([10, 20, 30, 40, 50])
        if tone == "<tone=urgent>":
            body = rnd.choice([f"hurry, {pct}% off {item} ends tonight", f"last chance: {item} at {pct}% off"])
        else:
            body = rnd.choice([f"take your time with our new {item}", f"a quiet look at this season's {item}"])
        if seg == "<seg=loyal>":
            body += ", thanks for staying with us"
        lines.append(f"{seg}{slot}{tone} {body}")
    return lines


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> SimpleNamespace:
    """A trained-for-a-moment GPT-2, its exported model directory, and the torch model to compare with."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    onnx_export = pytest.importorskip("optimum.exporters.onnx")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("tiny_model")
    lines = _copy_lines(200)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS, PAD, *CONTROL],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(lines, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, pad_token=PAD)
    eos_id, pad_id = tokenizer.convert_tokens_to_ids([EOS, PAD])
    config = transformers.GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=2,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=pad_id,
    )  # fmt: skip

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # measured: padded batches on 2 busy cores ran 30x slower multi-threaded
    try:
        torch.manual_seed(0)
        model = transformers.GPT2LMHeadModel(config)
        batch = tokenizer([line + EOS for line in lines], padding=True, return_tensors="pt")
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
        order = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(30):
            rows = torch.randperm(len(lines), generator=order)[:64]
            loss = model(
                input_ids=batch.input_ids[rows], attention_mask=batch.attention_mask[rows], labels=labels[rows]
            ).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
    finally:
        torch.set_num_threads(threads)

    hf_dir, out = root / "hf", root / "onnx"
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    with warnings.catch_warnings():  # the tracer's notes on GPT-2's Python control flow
        warnings.simplefilter("ignore")
        onnx_export.main_export(str(hf_dir), str(out), task="text-generation-with-past", do_validation=False)
    manifest = Manifest(
        version="test-1", base="scratch", corpus_hash="0", onnx="model.onnx", control_tokens=CONTROL,
        eos_token_id=eos_id, pad_token_id=pad_id, vocab_size=len(tokenizer),
    )  # fmt: skip
    write_manifest(out, manifest)
    return SimpleNamespace(dir=out, model=model, tokenizer=tokenizer, manifest=manifest, torch=torch)


@pytest.fixture(scope="module")
def generator(tiny) -> Generator:
    return Generator(tiny.dir, providers=[CPU])


def _variant(tiny, tmp_path: Path, **changes) -> Path:
    """A copy of the tiny model directory with its manifest changed."""
    copy = tmp_path / "model"
    shutil.copytree(tiny.dir, copy)
    write_manifest(copy, msgspec.structs.replace(tiny.manifest, **changes))
    return copy


def _torch_greedy(tiny, prompt: str, n: int) -> list[int]:
    """transformers' own greedy continuation, up to and including eos."""
    ids = tiny.tokenizer(prompt, return_tensors="pt").input_ids
    with tiny.torch.no_grad():
        out = tiny.model.generate(ids, attention_mask=tiny.torch.ones_like(ids), do_sample=False, max_new_tokens=n)
    new = out[0, ids.shape[1] :].tolist()
    eos = tiny.manifest.eos_token_id
    return new[: new.index(eos) + 1] if eos in new else new


# -- correctness ---------------------------------------------------------------


def test_greedy_matches_transformers_generate(tiny, generator):
    for prompt in PROMPTS:
        expected = _torch_greedy(tiny, prompt, 20)
        (result,) = generator.generate([prompt], max_new_tokens=20, stop=())
        assert result.tokens == expected, prompt
        assert result.prompt_tokens == len(tiny.tokenizer(prompt).input_ids)
    # The model learned something: it writes words and ends lines.
    texts = [r.text for r in generator.generate(PROMPTS, max_new_tokens=20)]
    assert any("off" in t or "thanks" in t or "time" in t for t in texts), texts


def test_batched_greedy_equals_each_prompt_alone(generator):
    prompts = [*PROMPTS, "", "<tone=urgent>"]
    assert len({len(generator.tokenizer.encode(p).ids) for p in prompts}) > 3  # really different lengths
    alone = [generator.generate([p], max_new_tokens=16)[0] for p in prompts]
    together = generator.generate(prompts, max_new_tokens=16)
    for one, batched in zip(alone, together):
        assert (batched.tokens, batched.text, batched.finish_reason) == (one.tokens, one.text, one.finish_reason)


def test_sampling_is_reproducible_with_a_seed_and_varies_across_seeds(generator):
    def sample(seed):
        return [
            r.tokens
            for r in generator.generate(
                PROMPTS[:2], greedy=False, temperature=1.5, seed=seed, max_new_tokens=16, stop=()
            )
        ]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_top_k_one_and_a_tiny_top_p_equal_greedy(generator):
    greedy = [r.tokens for r in generator.generate(PROMPTS, max_new_tokens=12)]
    top_k = [
        r.tokens for r in generator.generate(PROMPTS, greedy=False, top_k=1, temperature=1.5, seed=3, max_new_tokens=12)
    ]
    top_p = [r.tokens for r in generator.generate(PROMPTS, greedy=False, top_p=1e-6, seed=3, max_new_tokens=12)]
    assert top_k == greedy
    assert top_p == greedy


def test_pick_next_keeps_to_top_k_and_the_nucleus():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 2000))
    rng = np.random.default_rng(0)
    assert set(pick_next(logits, greedy=False, top_k=2, rng=rng)) == {0, 1}
    assert set(pick_next(logits, greedy=False, top_p=0.7, rng=rng)) == {0, 1}  # 0.5 + 0.3 reaches 0.7
    drawn = np.bincount(pick_next(logits, greedy=False, rng=rng), minlength=4) / 2000
    assert np.allclose(drawn, [0.5, 0.3, 0.15, 0.05], atol=0.04)


# -- finishing -----------------------------------------------------------------


def test_max_new_tokens_finishes_with_length(generator):
    (result,) = generator.generate([PROMPTS[1]], max_new_tokens=3, stop=())
    assert (len(result.tokens), result.finish_reason) == (3, "length")
    (none,) = generator.generate([PROMPTS[1]], max_new_tokens=0)
    assert (none.tokens, none.text, none.finish_reason) == ([], "", "length")


def test_eos_token_stops_and_is_not_in_the_text(tiny, generator, tmp_path):
    (result,) = generator.generate([PROMPTS[1]], max_new_tokens=30)
    assert result.finish_reason == "stop" and result.tokens[-1] == tiny.manifest.eos_token_id
    assert EOS not in result.text and result.text.strip()
    # Make the first greedy token the eos: generation stops right there.
    first = result.tokens[0]
    variant = Generator(_variant(tiny, tmp_path, eos_token_id=first), providers=[CPU])
    (stopped,) = variant.generate([PROMPTS[1]], max_new_tokens=30, stop=())
    assert (stopped.tokens, stopped.finish_reason) == ([first], "stop")


def test_stop_string_cuts_the_text(generator):
    (full,) = generator.generate([PROMPTS[0]], max_new_tokens=20, stop=())
    word = full.text.split()[2]
    (cut,) = generator.generate([PROMPTS[0]], max_new_tokens=20, stop=[word])
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(word)]
    assert len(cut.tokens) < len(full.tokens) and full.tokens[: len(cut.tokens)] == cut.tokens
    assert generator.generate([PROMPTS[0]], max_new_tokens=20, stop=word)[0].text == cut.text  # one string is one stop


def test_time_budget_finishes_with_time(generator, monkeypatch):
    results = generator.generate(PROMPTS, max_new_tokens=30, time_budget_s=0)
    assert all(r.finish_reason == "time" and r.timed_out and r.tokens == [] for r in results)
    (free,) = generator.generate([PROMPTS[0]], max_new_tokens=5, stop=(), time_budget_s=60)
    assert not free.timed_out

    forward = generator._forward

    def slow_forward(*args):
        time.sleep(0.02)
        return forward(*args)

    monkeypatch.setattr(generator, "_forward", slow_forward)
    (cut,) = generator.generate([PROMPTS[1] + " last chance"], max_new_tokens=50, stop=(), time_budget_s=0.05)
    assert cut.finish_reason == "time" and 1 <= len(cut.tokens) <= 3
    assert cut.elapsed_ms >= 50


def test_generation_stops_at_the_models_context(tiny, generator, tmp_path):
    prompt = PROMPTS[1] + " hurry, 20% off" * 7
    length = len(generator.tokenizer.encode(prompt).ids)
    assert generator.context_length == 64 and 40 < length < 64
    # With pad as "eos" the model never stops by itself.
    endless = Generator(_variant(tiny, tmp_path, eos_token_id=tiny.manifest.pad_token_id), providers=[CPU])
    long, short = endless.generate([prompt, PROMPTS[0]], max_new_tokens=50, stop=())
    assert (len(long.tokens), long.finish_reason) == (64 - length, "length")
    assert (len(short.tokens), short.finish_reason) == (50, "length")  # its own positions stay inside 64
    assert short.tokens == endless.generate([PROMPTS[0]], max_new_tokens=50, stop=())[0].tokens
    with pytest.raises(ValueError, match="context is 64"):
        generator.generate([PROMPTS[1] + " hurry, 20% off" * 20])


def test_result_is_a_msgspec_struct_and_bad_arguments_are_refused(generator):
    (result,) = generator.generate([PROMPTS[0]], max_new_tokens=2)
    assert msgspec.json.decode(msgspec.json.encode(result), type=GenerationResult) == result
    assert generator.generate([]) == []
    with pytest.raises(TypeError, match="list of strings"):
        generator.generate("one prompt")
    for bad in ({"temperature": 0}, {"top_k": -1}, {"top_p": 0}, {"max_new_tokens": -1}, {"time_budget_s": -1}):
        with pytest.raises(ValueError):
            generator.generate(["x"], greedy=False, **bad)


def test_version_provider_and_manifest(tiny, generator):
    assert generator.version == "test-1"
    assert generator.provider == CPU
    assert generator.manifest == read_manifest(tiny.dir)


# -- model directories that cannot be served -----------------------------------


def test_missing_directory_and_manifest(tiny, tmp_path):
    with pytest.raises(ModelDirError, match="no model directory"):
        Generator(tmp_path / "nowhere")
    copy = tmp_path / "no_manifest"
    shutil.copytree(tiny.dir, copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ModelDirError, match="no manifest.json"):
        Generator(copy)


def test_corrupt_manifest(tiny, tmp_path):
    copy = _variant(tiny, tmp_path)
    (copy / "manifest.json").write_text('{"version": "v1", ')
    with pytest.raises(ModelDirError, match="corrupt"):
        Generator(copy)


def test_manifest_vocab_mismatch(tiny, tmp_path):
    with pytest.raises(ModelDirError, match="has 400 tokens but the manifest says vocab_size=401"):
        Generator(_variant(tiny, tmp_path, vocab_size=401), providers=[CPU])


def test_tokenizer_that_fits_the_manifest_but_not_the_model(tiny, tmp_path):
    from tokenizers import Tokenizer

    copy = _variant(tiny, tmp_path, vocab_size=401)
    grown = Tokenizer.from_file(str(copy / "tokenizer.json"))
    grown.add_special_tokens(["<tone=playful>"])
    grown.save(str(copy / "tokenizer.json"))
    with pytest.raises(ModelDirError, match="scores 400 tokens but the manifest says vocab_size=401"):
        Generator(copy, providers=[CPU])


def test_missing_or_broken_onnx_and_missing_control_tokens(tiny, tmp_path):
    copy = _variant(tiny, tmp_path)
    (copy / "model.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelDirError, match="not a loadable ONNX model"):
        Generator(copy, providers=[CPU])
    (copy / "model.onnx").unlink()
    with pytest.raises(ModelDirError, match="lacks model.onnx"):
        Generator(copy)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ModelDirError, match="control tokens"):
        Generator(_variant(tiny, other, control_tokens=["<seg=nobody>"]), providers=[CPU])


# -- providers and imports -----------------------------------------------------


def test_choose_providers(monkeypatch):
    assert choose_providers("cpu") == [CPU]
    assert choose_providers()[-1] == CPU
    with pytest.raises(ValueError, match="prefer"):
        choose_providers("tpu")
    # The decision, with the probes answered: CUDA only when the driver sees a GPU and the provider loads.
    monkeypatch.setattr(runtime.ort, "get_available_providers", lambda: [runtime.CUDA, CPU])
    for gpus, loads, expected in ((1, True, [runtime.CUDA, CPU]), (0, True, [CPU]), (1, False, [CPU])):
        monkeypatch.setattr(runtime, "_cuda_device_count", lambda gpus=gpus: gpus)
        monkeypatch.setattr(runtime, "_cuda_provider_loads", lambda loads=loads: loads)
        assert choose_providers() == expected
        assert choose_providers("cpu") == [CPU]
    with pytest.raises(RuntimeError, match="no usable CUDA GPU"):
        choose_providers("cuda")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )


def test_auto_providers_are_chosen_silently(tiny):
    run = _python(f"""
        from models.serve.runtime import Generator
        g = Generator({str(tiny.dir)!r})
        print(g.provider, len(g.generate(["<tone=urgent>"], max_new_tokens=2)[0].tokens))
    """)
    assert run.stdout.split()[1] == "2"
    assert run.stdout.split()[0] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert "CUDA" not in run.stderr and "[E:" not in run.stderr, run.stderr


def test_runtime_never_imports_torch_or_transformers():
    run = _python("""
        import sys
        import models.serve.runtime
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum")))
    """)
    assert run.stdout.strip() == "[]"


# -- IO binding ---------------------------------------------------------------------


def test_io_binding_gives_the_same_copy_as_plain_runs(tiny, generator):
    # On the CPU the bound path is optional; it is the path CUDA takes (cache kept on the device).
    bound = Generator(tiny.dir, providers=[CPU], io_binding=True)
    assert bound.io_binding and not generator.io_binding
    prompts = [*PROMPTS, "", "<tone=urgent>"]
    for n in (1, 5, 16):  # rows finish at different steps and stay in the bound batch
        plain = generator.generate(prompts, max_new_tokens=n)
        kept = bound.generate(prompts, max_new_tokens=n)
        assert [(r.tokens, r.text, r.finish_reason) for r in kept] == [
            (r.tokens, r.text, r.finish_reason) for r in plain
        ]
    first = bound.generate(PROMPTS, greedy=False, temperature=1.5, seed=3, max_new_tokens=12)
    again = bound.generate(PROMPTS, greedy=False, temperature=1.5, seed=3, max_new_tokens=12)
    assert [r.tokens for r in first] == [r.tokens for r in again]
