"""``tailor bench generate``: Tailor's runtime against Optimum and PyTorch, same model, same prompts.

``--concurrency C`` clients each send their next request as soon as the last
one is answered (closed loop) until ``--requests`` are done, greedy, at most
``--new-tokens`` new tokens each (a sequence ends earlier at its end-of-text,
as a headline does). Three legs, one after the other in this process:

* ``tailor``: `models.serve.batching.BatchingGenerator` over `models.serve.runtime.Generator`
  (ONNX Runtime, KV cache, dynamic batching);
* ``optimum``: ``ORTModelForCausalLM.generate`` on the same ONNX file, one call
  per request from C client threads at once, and again one call at a time
  (``*_serial``; the wait for the model counts in the latency): on two cores,
  C concurrent calls mostly fight over them;
* ``pytorch``: transformers' ``generate`` on the trained model, likewise.

Speed-ups are against the faster of each baseline's two ways.

Tokens/s counts the tokens actually generated; latency is per request, from
send to answer.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.common import percentile
from engine.content.catalog import CATALOG_SEED, build_catalog
from engine.content.grounding import copy_prompt
from models.train.corpus import SEGMENT_STYLES, TONES


def prompts_for(n: int, slot: str = "headline") -> list[str]:
    """``n`` prompts as the generator writes them: every style and tone, about the demo catalog's items."""
    items = [i.facts() for i in build_catalog(CATALOG_SEED, 50).items]
    combos = [(seg, tone) for seg in SEGMENT_STYLES for tone in TONES]
    prompts = []
    for i in range(n):
        seg, tone = combos[i % len(combos)]
        prompts.append(copy_prompt(seg, slot, tone, items[i % len(items)]))
    return prompts


def summarize(latencies_s: list[float], tokens: int, seconds: float, **extra) -> dict:
    ms = [x * 1000 for x in latencies_s]
    return {
        "tokens_per_s": round(tokens / seconds, 1),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "requests": len(ms),
        "tokens": tokens,
        **extra,
    }


def run_tailor(
    model_dir: Path, prompts: list[str], concurrency: int, new_tokens: int, max_wait_ms: float, device: str = "cpu"
) -> dict:
    from models.serve.runtime import Generator, choose_providers

    generator = Generator(model_dir, providers=choose_providers(device))
    latencies, tokens, seconds, sizes = batched_load(generator, prompts, concurrency, new_tokens, max_wait_ms)
    return summarize(
        latencies,
        tokens,
        seconds,
        provider=generator.provider,
        mean_batch=round(sum(sizes) / len(sizes), 2),
        onnx=generator.manifest.onnx,
    )


def batched_load(
    generator, prompts: list[str], concurrency: int, new_tokens: int, max_wait_ms: float = 3.0
) -> tuple[list[float], int, float, list[int]]:
    """C async clients, closed loop, through `BatchingGenerator`: latencies (s), tokens, seconds, batch sizes."""
    from models.serve.batching import BatchingGenerator

    generator.generate(prompts[:concurrency], max_new_tokens=new_tokens)  # warm-up

    async def main():
        latencies, tokens = [], 0
        pending = list(prompts)
        async with BatchingGenerator(generator, max_batch=concurrency, max_wait_ms=max_wait_ms) as batcher:

            async def client():
                nonlocal tokens
                while pending:
                    prompt = pending.pop()
                    sent = time.perf_counter()
                    result = await batcher.generate(prompt, max_new_tokens=new_tokens)
                    latencies.append(time.perf_counter() - sent)
                    tokens += len(result.tokens)

            started = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            return latencies, tokens, time.perf_counter() - started, list(batcher.batch_sizes)

    return asyncio.run(main())


def run_threads(
    generate_one, prompts: list[str], concurrency: int, *, serial: bool = False
) -> tuple[list[float], int, float]:
    """C client threads, closed loop; ``serial``: one model call at a time (the wait counts as latency)."""
    import threading

    lock = threading.Lock() if serial else None
    latencies, tokens = [], 0

    def one(prompt):
        sent = time.perf_counter()
        if lock is None:
            n = generate_one(prompt)
        else:
            with lock:
                n = generate_one(prompt)
        return time.perf_counter() - sent, n

    generate_one(prompts[0])  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for latency, n in pool.map(one, prompts):
            latencies.append(latency)
            tokens += n
    return latencies, tokens, time.perf_counter() - started


def run_optimum(
    model_dir: Path, onnx_file: str, prompts, concurrency: int, new_tokens: int, device: str = "cpu"
) -> tuple[dict, dict]:
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"

    def load(io_binding: bool):
        return ORTModelForCausalLM.from_pretrained(
            model_dir, file_name=onnx_file, use_cache=True, provider=provider, use_io_binding=io_binding
        )

    def generate_with(model):
        def generate_one(prompt: str) -> int:
            ids = tokenizer(prompt, return_tensors="pt", return_token_type_ids=False).to(model.device)
            out = model.generate(**ids, do_sample=False, max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
            return out.shape[1] - ids.input_ids.shape[1]

        return generate_one

    # Optimum's IO binding (its fast path on a GPU) reuses output buffers per model and breaks
    # under concurrent calls: the concurrent run goes without it, the serial run with it on CUDA.
    concurrent = generate_with(load(False))
    serial = generate_with(load(device == "cuda"))
    return (
        summarize(*run_threads(concurrent, prompts, concurrency), onnx=onnx_file, threads=concurrency),
        summarize(
            *run_threads(serial, prompts, concurrency, serial=True),
            onnx=onnx_file,
            threads=1,
            io_binding=device == "cuda",
        ),
    )


def run_pytorch(
    trained_dir: Path, prompts, concurrency: int, new_tokens: int, device: str = "cpu"
) -> tuple[dict, dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(trained_dir)
    model = AutoModelForCausalLM.from_pretrained(trained_dir).eval().to(device)

    def generate_one(prompt: str) -> int:
        ids = tokenizer(prompt, return_tensors="pt", return_token_type_ids=False).to(device)
        with torch.no_grad():
            out = model.generate(**ids, do_sample=False, max_new_tokens=new_tokens, pad_token_id=tokenizer.pad_token_id)
        return out.shape[1] - ids.input_ids.shape[1]

    return (
        summarize(*run_threads(generate_one, prompts, concurrency), threads=concurrency),
        summarize(*run_threads(generate_one, prompts, concurrency, serial=True), threads=1),
    )


def run_generate(settings, args) -> int:
    from models.serve.manifest import ModelDirError, read_manifest

    model_dir, trained_dir = Path(args.model), Path(args.trained)
    try:
        manifest = read_manifest(model_dir)
    except ModelDirError as exc:
        print(f"tailor bench generate: {exc}", file=sys.stderr)
        return 2
    if not (trained_dir / "config.json").is_file():
        print(
            f"tailor bench generate: {trained_dir} is not a trained model (for the PyTorch leg): "
            "run `tailor train` or pass --trained",
            file=sys.stderr,
        )
        return 2
    prompts = prompts_for(args.requests, args.slot)
    device = args.device
    result = {
        "bench": "generate",
        "model": manifest.version,
        "slot": args.slot,
        "device": device,
        "concurrency": args.concurrency,
        "new_tokens": args.new_tokens,
        "requests": args.requests,
    }
    for onnx_file in dict.fromkeys(["model.onnx", manifest.onnx]):
        if not (model_dir / onnx_file).is_file():
            continue
        label = "int8" if onnx_file != "model.onnx" else "fp32"
        print(f"tailor runtime ({label}) ...", file=sys.stderr)
        runtime_dir = model_dir if onnx_file == manifest.onnx else _with_onnx(model_dir, manifest, onnx_file)
        result[f"tailor_{label}"] = run_tailor(
            runtime_dir, prompts, args.concurrency, args.new_tokens, args.max_wait_ms, device
        )
        print(f"optimum ({label}) ...", file=sys.stderr)
        result[f"optimum_{label}"], result[f"optimum_{label}_serial"] = run_optimum(
            model_dir, onnx_file, prompts, args.concurrency, args.new_tokens, device
        )
    print("pytorch ...", file=sys.stderr)
    result["pytorch"], result["pytorch_serial"] = run_pytorch(
        trained_dir, prompts, args.concurrency, args.new_tokens, device
    )
    base = result["tailor_fp32"]["tokens_per_s"]

    def best(name):
        return max(result[name]["tokens_per_s"], result[f"{name}_serial"]["tokens_per_s"])

    result["speedup_vs_optimum"] = round(base / best("optimum_fp32"), 2)
    result["speedup_vs_pytorch"] = round(base / best("pytorch"), 2)
    result["mean_new_tokens"] = round(result["tailor_fp32"]["tokens"] / args.requests, 1)
    print(json.dumps(result))
    return 0


def _with_onnx(model_dir: Path, manifest, onnx_file: str) -> Path:
    """A view of the model directory whose manifest serves another ONNX file (fp32 beside int8)."""
    import shutil
    import tempfile

    import msgspec

    from models.serve.manifest import write_manifest

    view = Path(tempfile.mkdtemp(prefix="tailor-bench-model-"))
    for path in model_dir.iterdir():
        if path.is_file() and path.name != "manifest.json":
            (view / path.name).symlink_to(path.resolve())
    write_manifest(view, msgspec.structs.replace(manifest, onnx=onnx_file, quantized=False))
    shutil.copystat(model_dir, view)
    return view
