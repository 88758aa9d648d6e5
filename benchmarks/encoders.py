"""The models a benchmark compares, behind one small encoder interface (texts + instruction -> unit vectors).

Four kinds are compared in every suite run: trained heads (``head``), the untrained head (``untrained``, its
standardisation statistics estimated on ShareGPT queries, as the first training step sees it), the
MiniLM teacher applied to the input (``minilm``) and the input-centric baseline of mean-pooled backbone states
(``meanpool``). An :class:`EncoderSpec` is a small picklable description that Ray jobs turn into an encoder.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, Sequence

import numpy as np

from latentcomm.model.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from latentcomm.model.config import HeadConfig
from latentcomm.model.embedder import DEFAULT_HEAD_DIR, GenerativeEmbedder
from latentcomm.model.teachers import load_teacher, mean_pooled_states, unit_rows
from latentcomm.training.evaluate import CALIBRATION_QUERIES
from latentcomm.training.queries import sharegpt_queries

log = logging.getLogger(__name__)

EncoderKind = Literal["head", "untrained", "minilm", "meanpool"]
KINDS: tuple[str, ...] = ("head", "untrained", "minilm", "meanpool")
BACKBONE_ALIASES = {"qwen-coder-0.5b": "the Qwen2.5-Coder-0.5B-Instruct GGUF fetched by `latentcomm data fetch`"}
UNTRAINED_HEAD = HeadConfig(embed_dim=384)
"""The untrained head compared in every run: default shape, MiniLM-sized output."""


class TextEncoder(Protocol):
    """Texts -> (N, D) float32 unit vectors; ``instruction`` (or None) goes before each text where supported."""

    name: str
    uses_instructions: bool

    def encode(self, texts: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        ...


def resolve_backbone_name(name: str) -> str:
    """Backbone aliases of the benchmarks (``qwen-coder-0.5b``) -> a loadable name or path."""
    if name == "qwen-coder-0.5b":
        from latentcomm.benchmarks.data import qwen_coder_gguf

        return str(qwen_coder_gguf())
    return name


@dataclass
class GenerativeEncoder:
    """A generative-embedding head: instruction + text -> latent of the potential response -> embedding."""

    model: GenerativeEmbedder
    name: str
    batch_size: int = 16
    uses_instructions: bool = True

    def encode(self, texts: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        return unit_rows(self.model.encode(list(texts), batch_size=self.batch_size, prompt=instruction,
                                       normalize_embeddings=True))


@dataclass
class TeacherEncoder:
    """The MiniLM teacher applied to the input text itself (no instruction)."""

    name: str
    batch_size: int = 32
    uses_instructions: bool = False
    teacher: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.teacher = self.teacher or load_teacher("minilm")

    def encode(self, texts: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        return unit_rows(self.teacher.embed(list(texts), batch_size=self.batch_size))


@dataclass
class MeanPooledEncoder:
    """The input-centric baseline: mean of the frozen backbone's last-layer states over the input tokens."""

    backbone: Backbone
    name: str
    batch_size: int = 16
    uses_instructions: bool = False

    def encode(self, texts: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        return unit_rows(mean_pooled_states(self.backbone, list(texts), batch_size=self.batch_size))


@dataclass(frozen=True)
class EncoderSpec:
    """What to load for one compared model; cheap to pickle into a Ray job."""

    kind: EncoderKind
    label: str
    head: str | None = None
    """A saved head folder for ``kind='head'`` (None: the shipped default head)."""
    backbone: str = DEFAULT_BACKBONE
    batch_size: int = 16

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown encoder kind {self.kind!r}; use one of {KINDS}")
        if self.head is not None and self.kind != "head":
            raise ValueError(f"only kind='head' takes a head folder, got kind={self.kind!r}")

    def build(self) -> TextEncoder:
        if self.kind == "minilm":
            return TeacherEncoder(self.label)
        backbone = load_backbone(resolve_backbone_name(self.backbone))
        if self.kind == "meanpool":
            return MeanPooledEncoder(backbone, self.label, self.batch_size)
        if self.kind == "untrained":
            calibration = [q.text for q in sharegpt_queries()[:CALIBRATION_QUERIES]]
            untrained = GenerativeEmbedder(backbone, UNTRAINED_HEAD).fit_standardization(calibration)
            return GenerativeEncoder(untrained, self.label, self.batch_size)
        head = Path(self.head) if self.head else DEFAULT_HEAD_DIR
        return GenerativeEncoder(GenerativeEmbedder.from_pretrained(head, backbone=backbone), self.label,
                                 self.batch_size)


def head_name(path: str | Path) -> str:
    """A readable label for a head folder: its name, or ``parent-head`` for folders called ``head``."""
    path = Path(path).resolve()
    return f"{path.parent.name}-{path.name}" if path.name == "head" else path.name


def default_head_shipped() -> bool:
    return (DEFAULT_HEAD_DIR / "config.json").is_file()


def standard_specs(heads: Sequence[str] = (), *, backbone: str = DEFAULT_BACKBONE, batch_size: int = 16
                   ) -> tuple[list[EncoderSpec], dict[str, str]]:
    """The models every suite run compares, and the ones left out with the reason.

    Trained heads: each ``heads`` folder, or the shipped default head when none is given and it exists (where
    ``load_embedder()`` would fall back to an untrained head, the row is left out and the reason recorded).
    """
    specs: list[EncoderSpec] = []
    skipped: dict[str, str] = {}
    for path in heads:
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"no head at {path} (expected config.json and head.safetensors)")
        specs.append(EncoderSpec("head", f"head:{head_name(path)}", str(path), backbone, batch_size))
    if not heads:
        if default_head_shipped() and backbone == DEFAULT_BACKBONE:
            specs.append(EncoderSpec("head", "head:default", None, backbone, batch_size))
        else:
            skipped["head:default"] = (f"no trained head shipped under {DEFAULT_HEAD_DIR} for {backbone}: "
                                       "load_embedder() falls back to an untrained head, which is the next row")
    specs += [EncoderSpec("untrained", "untrained-head", None, backbone, batch_size),
              EncoderSpec("minilm", "minilm-teacher", None, backbone, 32),
              EncoderSpec("meanpool", "meanpool-backbone", None, backbone, batch_size)]
    return specs, skipped


_BUILT: dict[EncoderSpec, TextEncoder] = {}


def cached_encoder(spec: EncoderSpec) -> TextEncoder:
    """Build each spec once per process (Ray reuses workers, so later jobs skip the load)."""
    if spec not in _BUILT:
        _BUILT[spec] = spec.build()
    return _BUILT[spec]
