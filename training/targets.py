"""Teacher targets job: the teacher embedding of every generated response, cached next to the responses."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from latentcomm.cli.parser import count, existing_dir, parser, teacher_source
from latentcomm.model.teachers import load_teacher
from latentcomm.training.responses import MANIFEST, RESPONSES_DIR, read_responses


@dataclass
class Targets:
    """Unit-norm teacher embeddings (N, D) of responses, row i belonging to query ``ids[i]``."""

    teacher: str
    ids: list[str]
    embeddings: np.ndarray

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def rows(self, ids: list[str]) -> np.ndarray:
        """Embeddings of the given query ids, in that order."""
        index = {qid: i for i, qid in enumerate(self.ids)}
        missing = [qid for qid in ids if qid not in index]
        if missing:
            raise KeyError(f"no {self.teacher} target for {len(missing)} ids (e.g. {missing[0]}); re-run targets")
        return self.embeddings[[index[qid] for qid in ids]]


def targets_path(responses_dir: str | os.PathLike, teacher: str) -> Path:
    return Path(responses_dir) / f"targets-{Path(teacher).name}.safetensors"


def load_targets(responses_dir: str | os.PathLike, teacher: str) -> Targets:
    path = targets_path(responses_dir, teacher)
    if not path.is_file():
        raise FileNotFoundError(f"no {teacher} targets at {path} (run 'latentcomm targets --teacher {teacher}')")
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = f.metadata()
    return Targets(meta["teacher"], json.loads(meta["ids"]), load_file(path)["embeddings"])


def compute_targets(responses_dir: str | os.PathLike, teacher_name: str, *, batch_size: int = 32,
                    device: str | None = None) -> Targets:
    """Embed every response with the teacher, or return the cached file when it covers the same responses."""
    responses_dir = Path(responses_dir)
    records = read_responses(responses_dir)
    ids = [r["id"] for r in records]
    path = targets_path(responses_dir, teacher_name)
    if path.is_file():
        cached = load_targets(responses_dir, teacher_name)
        if cached.ids == ids:
            return cached
    backbone = None
    if teacher_name == "self":
        from latentcomm.model.backbone import load_backbone

        generation = json.loads((responses_dir / MANIFEST).read_text())["generation"]
        backbone = load_backbone(generation["backbone"], device=device)
    teacher = load_teacher(teacher_name, backbone=backbone, device=device)
    embeddings = teacher.embed([r["response"] for r in records], batch_size=batch_size, show_progress_bar=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"embeddings": np.ascontiguousarray(embeddings, dtype=np.float32)}, str(tmp),
              metadata={"teacher": teacher.name, "ids": json.dumps(ids)})
    os.replace(tmp, path)
    return Targets(teacher.name, ids, embeddings)


def main(argv: list[str] | None = None) -> int:
    ap = parser("targets", "Teacher embeddings of a run's generated responses (cached; re-runs are free).")
    ap.add_argument("--run", required=True, type=existing_dir, help="run directory with responses/")
    ap.add_argument("--teacher", action="append", default=None, type=teacher_source("minilm", "self"),
                    help="'minilm', 'self' or a sentence-transformers folder; repeat for several (default: minilm)")
    ap.add_argument("--batch-size", type=count(1), default=32)
    ap.add_argument("--threads", type=count(1), default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    responses_dir = args.run / RESPONSES_DIR
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.teacher or ["minilm"]:
        targets = compute_targets(responses_dir, name, batch_size=args.batch_size)
        print(f"{name}: {len(targets.ids)} x {targets.dim} -> {targets_path(responses_dir, name)}")
    return 0
