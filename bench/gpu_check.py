"""A one-off device check: Tailor's generator on CUDA (IO binding, and plain) vs the machine's CPU.

    python -m bench.gpu_check MODEL_DIR          # prints one JSON object

Checks that ``choose_providers()`` picks CUDA, that greedy copy on CUDA equals the
CPU's (with and without IO binding), then measures tokens/s and latency through the
dynamic batcher at concurrency 16 (and 64 with IO binding) for headlines and
descriptions. models/README.md quotes its output from an H200.
"""

from __future__ import annotations

import json
import sys

from bench.generate import batched_load, prompts_for, summarize
from models.serve.runtime import Generator, choose_providers


def bench(generator: Generator, slot: str, concurrency: int = 16, requests: int = 320, new_tokens: int = 24) -> dict:
    latencies, tokens, seconds, _ = batched_load(generator, prompts_for(requests, slot), concurrency, new_tokens)
    return summarize(latencies, tokens, seconds)


def main(model_dir: str) -> dict:
    import onnxruntime as ort

    out = {"ort": ort.__version__, "available": ort.get_available_providers(), "auto_providers": choose_providers()}
    gpu = Generator(model_dir)
    cpu = Generator(model_dir, providers=["CPUExecutionProvider"])
    plain = Generator(model_dir, io_binding=False)
    out["gpu_provider"], out["gpu_io_binding"] = gpu.provider, gpu.io_binding
    prompts = prompts_for(16)
    on_gpu = gpu.generate(prompts, max_new_tokens=24)
    out["greedy_equal_rows"] = sum(
        a.tokens == b.tokens for a, b in zip(on_gpu, cpu.generate(prompts, max_new_tokens=24))
    )
    out["gpu_plain_equal_rows"] = sum(
        a.tokens == b.tokens for a, b in zip(on_gpu, plain.generate(prompts, max_new_tokens=24))
    )
    for slot in ("headline", "description"):
        for name, generator in (("cuda_io_binding", gpu), ("cuda_plain", plain), ("device_cpu", cpu)):
            out[f"{slot}_{name}"] = bench(generator, slot)
        out[f"{slot}_cuda_io_binding_c64"] = bench(gpu, slot, concurrency=64, requests=1280)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1] if len(sys.argv) > 1 else "models/artifacts/onnx")))
