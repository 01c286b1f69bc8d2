"""Text generation on ONNX Runtime: the serving side of ``models/``.

`Generator` opens an exported model directory (see `models.serve.manifest`): a decoder
ONNX graph with past key values, as written by Optimum's ``main_export(...,
task="text-generation-with-past")``, and its ``tokenizer.json``. It generates
for a batch of prompts at once, left-padded, with a KV cache, greedy or sampled.

Serving never imports torch or transformers: this module needs numpy,
onnxruntime, tokenizers and msgspec only (pinned: onnxruntime-gpu 1.31,
tokenizers 0.22, msgspec 0.22).

Examples
--------
>>> choose_providers("cpu")
['CPUExecutionProvider']
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import msgspec
import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from models.serve.manifest import Manifest, ModelDirError, read_manifest

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"

_PAST_INPUT = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
#: config.json keys that hold the longest sequence a model's position embeddings cover.
_CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")


class GenerationResult(msgspec.Struct, frozen=True, kw_only=True):
    #: The continuation only, cut at a stop string, without special tokens.
    text: str
    #: Every token id generated for this prompt, the eos that ended it included.
    tokens: list[int]
    #: How many tokens the prompt took.
    prompt_tokens: int
    #: "stop": eos or a stop string; "length": max_new_tokens or the model's context; "time": time_budget_s.
    finish_reason: Literal["stop", "length", "time"]
    #: From the call's start to the moment this sequence finished.
    elapsed_ms: float

    @property
    def timed_out(self) -> bool:
        return self.finish_reason == "time"


# -- providers -----------------------------------------------------------------


def _cuda_device_count() -> int:
    """GPUs the CUDA driver sees, asked through the driver API: silent, no CUDA toolkit needed."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def _cuda_provider_loads() -> bool:
    """Whether ONNX Runtime's CUDA provider library finds its CUDA and cuDNN libraries.

    Loading them is what ONNX Runtime would do itself (the shared bridge first, with
    global symbols, which the CUDA provider binds to at load); doing it first turns a
    missing library into a quiet False instead of a logged error and a CPU fallback.
    cuDNN 9 is what onnxruntime-gpu 1.31 is built for; it is opened at run time, not linked.
    CUDA and cuDNN installed from PyPI (the ``nvidia-*`` wheels beside onnxruntime) are not
    on the loader's path: ``ort.preload_dlls`` loads them first (quietly; it prints).
    """
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(Exception):
        ort.preload_dlls(directory="")
    capi = Path(ort.__file__).parent / "capi"
    prefix, suffix, cudnn = (
        ("", ".dll", "cudnn64_9.dll") if sys.platform == "win32" else ("lib", ".so", "libcudnn.so.9")
    )
    try:
        ctypes.CDLL(str(capi / f"{prefix}onnxruntime_providers_shared{suffix}"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / f"{prefix}onnxruntime_providers_cuda{suffix}"))
        ctypes.CDLL(cudnn)
    except OSError:
        return False
    return True


def choose_providers(prefer: str = "auto") -> list[str]:
    """ONNX Runtime execution providers to ask for: CUDA (CPU as fallback) when a GPU is usable.

    ``prefer`` is "auto" (CUDA when usable, else CPU), "cpu" or "cuda" (CUDA or a `RuntimeError`).
    The check is silent: on a machine without a GPU, onnxruntime-gpu would log loud errors
    if asked for CUDA and then run on the CPU anyway.
    """
    if prefer not in ("auto", "cpu", "cuda"):
        raise ValueError(f"prefer must be 'auto', 'cpu' or 'cuda', not {prefer!r}")
    if prefer == "cpu":
        return [CPU]
    usable = CUDA in ort.get_available_providers() and _cuda_device_count() > 0 and _cuda_provider_loads()
    if usable:
        return [CUDA, CPU]
    if prefer == "cuda":
        raise RuntimeError(
            "no usable CUDA GPU for ONNX Runtime (needs onnxruntime-gpu, an NVIDIA driver and the CUDA and cuDNN "
            "libraries it was built for): use prefer='auto' or 'cpu'"
        )
    return [CPU]


# -- opening a model directory -------------------------------------------------


class _Decoder(msgspec.Struct, frozen=True):
    """What the runtime needs to know about an exported decoder's inputs and outputs."""

    n_layers: int
    heads: int
    head_dim: int
    cache_dtype: type
    id_dtype: type
    mask_dtype: type
    #: dtype of position_ids, None when the model computes positions itself.
    position_dtype: type | None
    vocab_size: int | str


def _inspect(session: ort.InferenceSession, path: Path) -> _Decoder:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    redo = "export it with task='text-generation-with-past' (`tailor export`)"
    if "input_ids" not in inputs or "attention_mask" not in inputs or "logits" not in outputs:
        raise ModelDirError(f"{path} is not a causal-LM decoder (needs input_ids, attention_mask, logits): {redo}")
    layers = {int(m.group(1)) for name in inputs if (m := _PAST_INPUT.fullmatch(name))}
    n_layers = len(layers)
    expected = {f"past_key_values.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")}
    if n_layers == 0 or layers != set(range(n_layers)) or not expected <= inputs.keys():
        raise ModelDirError(f"{path} takes no complete past_key_values.N.key/value inputs: {redo}")
    unknown = inputs.keys() - expected - {"input_ids", "attention_mask", "position_ids"}
    if unknown:
        raise ModelDirError(f"{path} needs inputs this runtime does not feed ({', '.join(sorted(unknown))}): {redo}")
    missing = {f"present.{i}.{kv}" for i in range(n_layers) for kv in ("key", "value")} - outputs.keys()
    if missing:
        raise ModelDirError(f"{path} lacks outputs {', '.join(sorted(missing))}: {redo}")
    past = inputs["past_key_values.0.key"]
    _, heads, _, head_dim = past.shape
    if not (isinstance(heads, int) and isinstance(head_dim, int)) or past.type not in _FLOAT_TYPES:
        raise ModelDirError(
            f"{path} declares past_key_values as {past.type} {past.shape}, not [batch, heads, past, dim]"
        )
    position = inputs.get("position_ids")
    return _Decoder(
        n_layers=n_layers,
        heads=heads,
        head_dim=head_dim,
        cache_dtype=_FLOAT_TYPES[past.type],
        id_dtype=_INT_TYPES.get(inputs["input_ids"].type, np.int64),
        mask_dtype=_INT_TYPES.get(inputs["attention_mask"].type, np.int64),
        position_dtype=None if position is None else _INT_TYPES.get(position.type, np.int64),
        vocab_size=outputs["logits"].shape[-1],
    )


def _open_session(
    path: Path, providers: list[str], intra_op_threads: int | None, spinning: bool = True
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not spinning:
        # Idle worker threads sleep instead of spinning: in a server they would take the
        # event loop's core between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only
    if intra_op_threads is not None:
        if intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be at least 1, not {intra_op_threads}")
        options.intra_op_num_threads = intra_op_threads
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelDirError(f"{path} is not a loadable ONNX model ({reason}): re-run `tailor export`") from exc


def _open_tokenizer(folder: Path, manifest: Manifest) -> Tokenizer:
    path = folder / "tokenizer.json"
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception for a bad file
        raise ModelDirError(f"{path} is not a readable tokenizer ({exc}): re-run `tailor export`") from exc
    tokenizer.no_padding()  # the generator pads, on the left
    tokenizer.no_truncation()
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size != manifest.vocab_size:
        raise ModelDirError(
            f"{path} has {size} tokens but the manifest says vocab_size={manifest.vocab_size}: "
            "the tokenizer and model do not belong together; re-run `tailor export`"
        )
    for name, token_id in (("eos_token_id", manifest.eos_token_id), ("pad_token_id", manifest.pad_token_id)):
        if not 0 <= token_id < size:
            raise ModelDirError(
                f"manifest {name}={token_id} is outside the vocabulary of {size}: re-run `tailor export`"
            )
    unknown = [t for t in manifest.control_tokens if tokenizer.token_to_id(t) is None]
    if unknown:
        raise ModelDirError(f"{path} lacks the control tokens {unknown} the manifest lists: re-run `tailor export`")
    return tokenizer


def _context_length(folder: Path) -> int | None:
    """The longest sequence the model's positions cover, from config.json when the export left one."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise ModelDirError(f"{path} is corrupt ({exc}): re-run `tailor export`") from None
    return next((config[k] for k in _CONTEXT_KEYS if isinstance(config.get(k), int)), None)


# -- choosing the next token ---------------------------------------------------


def pick_next(
    logits: np.ndarray,
    *,
    greedy: bool = True,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """The next token id of each row of ``logits`` [batch, vocab].

    Examples
    --------
    >>> pick_next(np.array([[0.0, 3.0, 1.0]]))
    array([1])
    >>> pick_next(np.array([[0.0, 3.0, 1.0]]), greedy=False, top_k=1, rng=np.random.default_rng(0))
    array([1])
    """
    if greedy:
        return logits.argmax(axis=-1)
    scores = logits.astype(np.float64) / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = np.partition(scores, -top_k, axis=-1)[:, -top_k, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        ranked = np.take_along_axis(probs, order, axis=-1)
        # Keep the most likely tokens until their mass reaches top_p (always at least one).
        beyond = np.cumsum(ranked, axis=-1) - ranked >= top_p
        drop = np.empty_like(beyond)
        np.put_along_axis(drop, order, beyond, axis=-1)
        probs = np.where(drop, 0.0, probs)
    cdf = np.cumsum(probs, axis=-1)
    rng = rng if rng is not None else np.random.default_rng()
    # In (0, total]: the first index whose cdf reaches it has a non-zero probability.
    target = (1.0 - rng.random((len(cdf), 1))) * cdf[:, -1:]
    return (cdf < target).sum(axis=-1)


def _check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float, time_budget_s) -> None:
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be 0 or more, not {max_new_tokens}")
    if not temperature > 0:
        raise ValueError(f"temperature must be above 0, not {temperature} (use greedy=True for the most likely text)")
    if top_k < 0:
        raise ValueError(f"top_k must be 0 (off) or more, not {top_k}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], not {top_p}")
    if time_budget_s is not None and time_budget_s < 0:
        raise ValueError(f"time_budget_s must be 0 or more, not {time_budget_s}")


# -- the generator -------------------------------------------------------------


class Generator:
    """Batched text generation from an exported model directory.

    ``providers`` defaults to `choose_providers` ("auto"); `provider` says which one runs.
    A `ModelDirError` says why a directory cannot be served. One generator may serve
    concurrent calls: it keeps no state between them.

    ``io_binding`` (default: on with CUDA, off on the CPU) runs each step through
    ONNX Runtime's IO binding: the KV cache stays where the model runs (GPU memory)
    from step to step, and only token ids go in and logits come out. With it, rows
    that finished keep their place in the batch until all are done (a cache on the
    device cannot be sliced without a round trip); their extra tokens are discarded.
    ``spinning=False`` lets ONNX Runtime's idle threads sleep (for servers).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        providers: list[str] | None = None,
        intra_op_threads: int | None = None,
        io_binding: bool | None = None,
        spinning: bool = True,
    ):
        self.model_dir = Path(model_dir)
        self.manifest: Manifest = read_manifest(self.model_dir)
        self.tokenizer = _open_tokenizer(self.model_dir, self.manifest)
        onnx_path = self.model_dir / self.manifest.onnx
        self._session = _open_session(onnx_path, providers or choose_providers(), intra_op_threads, spinning)
        self._decoder = _inspect(self._session, onnx_path)
        logits_size = self._decoder.vocab_size
        if isinstance(logits_size, int) and logits_size != self.manifest.vocab_size:
            raise ModelDirError(
                f"{onnx_path} scores {logits_size} tokens but the manifest says vocab_size={self.manifest.vocab_size}: "
                "the manifest does not belong to this model; re-run `tailor export`"
            )
        self.context_length = _context_length(self.model_dir)
        self._cache_names = [f"{{}}.{i}.{kv}" for i in range(self._decoder.n_layers) for kv in ("key", "value")]
        self._special = sorted(
            (t.content for t in self.tokenizer.get_added_tokens_decoder().values() if t.special), key=len, reverse=True
        )
        self._device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        self.io_binding = (self._device == "cuda") if io_binding is None else io_binding

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def provider(self) -> str:
        """The execution provider that runs the model (the first one the session accepted)."""
        return self._session.get_providers()[0]

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int = 32,
        greedy: bool = True,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = ("<|endoftext|>",),
        time_budget_s: float | None = None,
    ) -> list[GenerationResult]:
        """Continue each prompt; one result per prompt, in order.

        Greedy output for a prompt is the same alone or in a batch. Sampling
        (``greedy=False``) applies temperature, then top-k, then top-p, drawing
        from ``numpy.random.default_rng(seed)``: a seed makes a call reproducible.
        A sequence stops at eos, at a stop string (the text is cut before it), at
        ``max_new_tokens`` or the model's context; all stop when ``time_budget_s`` runs out.
        """
        start = time.perf_counter()
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list of strings, not one string")
        _check_sampling(max_new_tokens, temperature, top_k, top_p, time_budget_s)
        stop = [stop] if isinstance(stop, str) else [s for s in stop if s]
        prompt_ids = self._encode(prompts)
        limits = [self._room(ids, max_new_tokens) for ids in prompt_ids]
        rng = np.random.default_rng(seed)

        new_tokens: list[list[int]] = [[] for _ in prompts]
        finish: list[str | None] = [None] * len(prompts)
        finished_ms = [0.0] * len(prompts)

        def elapsed_ms() -> float:
            return (time.perf_counter() - start) * 1000

        for r, limit in enumerate(limits):
            if limit == 0:
                finish[r], finished_ms[r] = "length", elapsed_ms()
        live = np.array([r for r in range(len(prompts)) if finish[r] is None], dtype=np.int64)
        step_ids, mask = self._left_pad([prompt_ids[r] for r in live])
        bound = self.io_binding
        forward = self._forward_bound if bound else self._forward
        cache = self._empty_cache(len(live), on_device=bound)
        timed_out = False
        while any(finish[r] is None for r in live):
            if time_budget_s is not None and time.perf_counter() - start >= time_budget_s:
                timed_out = True
                break
            logits, cache = forward(step_ids, mask, cache)
            chosen = pick_next(
                logits[:, -1, :], greedy=greedy, temperature=temperature, top_k=top_k, top_p=top_p, rng=rng
            )
            keep = []
            for row, r in enumerate(live):
                if finish[r] is not None:  # finished earlier; kept in the batch (IO binding)
                    continue
                token = int(chosen[row])
                new_tokens[r].append(token)
                if token == self.manifest.eos_token_id or self._hits_stop(new_tokens[r], stop):
                    finish[r], finished_ms[r] = "stop", elapsed_ms()
                elif len(new_tokens[r]) >= limits[r]:
                    finish[r], finished_ms[r] = "length", elapsed_ms()
                else:
                    keep.append(row)
            if not bound and len(keep) < len(live):  # drop finished rows: later steps only pay for live ones
                live, chosen, mask = live[keep], chosen[keep], mask[keep]
                cache = [c[keep] for c in cache]
            step_ids = chosen[:, None].astype(self._decoder.id_dtype)
            mask = np.concatenate([mask, np.ones((len(live), 1), mask.dtype)], axis=1)
        for r in live:
            if finish[r] is None:
                finish[r], finished_ms[r] = ("time" if timed_out else "length"), elapsed_ms()

        return [
            GenerationResult(
                text=self._text(new_tokens[r], stop),
                tokens=new_tokens[r],
                prompt_tokens=len(prompt_ids[r]),
                finish_reason=finish[r],
                elapsed_ms=round(finished_ms[r], 3),
            )
            for r in range(len(prompts))
        ]

    # -- steps of generate -----------------------------------------------------

    def _encode(self, prompts: Sequence[str]) -> list[list[int]]:
        # An empty prompt starts from eos, which is also GPT-2's start-of-text token.
        encoded = [e.ids or [self.manifest.eos_token_id] for e in self.tokenizer.encode_batch(list(prompts))]
        if self.context_length is not None:
            for prompt, ids in zip(prompts, encoded):
                if len(ids) >= self.context_length:
                    raise ValueError(
                        f"prompt {prompt[:40]!r}... takes {len(ids)} tokens; "
                        f"the model's context is {self.context_length}: shorten it"
                    )
        return encoded

    def _room(self, ids: list[int], max_new_tokens: int) -> int:
        """New tokens this prompt may get: max_new_tokens, or less where the context ends."""
        if self.context_length is None:
            return max_new_tokens
        return min(max_new_tokens, self.context_length - len(ids))

    def _left_pad(self, rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, padded on the left so every row's last token lines up."""
        width = max((len(r) for r in rows), default=0)
        ids = np.full((len(rows), width), self.manifest.pad_token_id, dtype=self._decoder.id_dtype)
        mask = np.zeros((len(rows), width), dtype=self._decoder.mask_dtype)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = row
            mask[i, width - len(row) :] = 1
        return ids, mask

    def _empty_cache(self, batch: int, *, on_device: bool = False) -> list:
        d = self._decoder
        shape = (batch, d.heads, 0, d.head_dim)
        empty = [np.zeros(shape, dtype=d.cache_dtype) for _ in self._cache_names]
        if on_device:
            return [ort.OrtValue.ortvalue_from_numpy(a, self._device, 0) for a in empty]
        return empty

    def _forward(
        self, ids: np.ndarray, mask: np.ndarray, cache: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One decoder run: logits [batch, len(ids), vocab] and the grown cache."""
        feed = {"input_ids": ids, "attention_mask": mask}
        if self._decoder.position_dtype is not None:
            # Positions count real tokens only, so left padding does not shift them.
            positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, -ids.shape[1] :]
            feed["position_ids"] = positions.astype(self._decoder.position_dtype)
        feed.update(zip((n.format("past_key_values") for n in self._cache_names), cache))
        logits, *present = self._session.run(["logits", *(n.format("present") for n in self._cache_names)], feed)
        return logits, present

    def _forward_bound(self, ids: np.ndarray, mask: np.ndarray, cache: list) -> tuple[np.ndarray, list]:
        """`_forward` through IO binding: the cache (OrtValues) stays on the model's device."""
        binding = self._session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        if self._decoder.position_dtype is not None:
            positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)[:, -ids.shape[1] :]
            binding.bind_cpu_input("position_ids", np.ascontiguousarray(positions.astype(self._decoder.position_dtype)))
        for name, value in zip((n.format("past_key_values") for n in self._cache_names), cache):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")  # sampling happens on the host
        for name in (n.format("present") for n in self._cache_names):
            binding.bind_output(name, self._device)
        self._session.run_with_iobinding(binding)
        logits, *present = binding.get_outputs()
        return logits.numpy(), present

    def _hits_stop(self, tokens: list[int], stop: list[str]) -> bool:
        if not stop:
            return False
        raw = self.tokenizer.decode(tokens, skip_special_tokens=False)
        return any(s in raw for s in stop)

    def _text(self, tokens: list[int], stop: list[str]) -> str:
        """The continuation's text: cut before the first stop string, special tokens removed."""
        raw = self.tokenizer.decode(tokens, skip_special_tokens=False)
        cuts = [i for i in (raw.find(s) for s in stop) if i >= 0]
        if cuts:
            raw = raw[: min(cuts)]
        for special in self._special:
            raw = raw.replace(special, "")
        return raw
