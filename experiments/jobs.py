"""What both experiments share: their working folder (settings recorded, resume checked), resumable Ray tasks and
the command line (parse -> run -> print the report)."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from latentcomm.training.config import current_form

SETTINGS = "experiment.json"
LAUNCH_FIELDS = frozenset({"resume", "address", "threads", "stop_after", "num_cpus", "cpus_per_worker", "report"})
"""Config fields that say how a run is launched or where its report goes, not what it computes: they may change
on resume."""


def settings_of(config: Any) -> dict[str, Any]:
    """A (nested) config dataclass as JSON-ready values, without ``LAUNCH_FIELDS``."""
    return _without_launch_fields(dataclasses.asdict(config))


def _without_launch_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_launch_fields(v) for k, v in value.items() if k not in LAUNCH_FIELDS}
    return list(value) if isinstance(value, tuple) else value


def prepare_folder(out: Path, settings: dict[str, Any], *, resume: bool) -> None:
    """Create ``out`` and record ``settings``; a folder already used needs ``resume`` and the same settings."""
    path = out / SETTINGS
    if path.is_file():
        if not resume:
            raise FileExistsError(f"{out} holds an experiment already: pass --resume to continue it, or another --out")
        old = json.loads(path.read_text())
        if isinstance(old.get("train"), dict):  # recorded before TrainConfig held a HeadConfig: today's form
            old["train"] = current_form(old["train"])
        old = _without_launch_fields(old)  # a folder recorded before a field became one
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(f"{out} was started with other settings ({changed}); use another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def run_tasks(fn: Callable[..., dict[str, Any]], jobs: dict[str, tuple], folder: Path, *, desc: str,
              num_cpus: float = 1) -> dict[str, dict[str, Any]]:
    """``fn(*args)`` for every job as a Ray task, each result written to ``folder/<name>.json`` as it lands;
    jobs already written are not run again. Returns every job's result by name, in ``jobs`` order.

    ``$LATENTCOMM_HOME`` of this process is passed on as the keyword ``home`` (workers may have started with
    another). Ray must be initialised (``latentcomm.runtime.cluster.init_ray``) when anything is left to run.
    """
    import ray
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    path = {name: folder / f"{name}.json" for name in jobs}
    todo = [name for name in jobs if not path[name].is_file()]
    if todo:
        remote = ray.remote(num_cpus=num_cpus, max_retries=1)(fn)
        home = os.environ.get("LATENTCOMM_HOME")
        pending = {remote.remote(*jobs[name], home=home): name for name in todo}
        with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=desc, unit="job") as bar:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                name = pending.pop(done[0])
                result = ray.get(done[0])
                tmp = path[name].with_name(f".{path[name].name}.tmp")
                tmp.write_text(json.dumps(result, indent=1) + "\n")
                os.replace(tmp, path[name])
                bar.update(1)
    return {name: json.loads(path[name].read_text()) for name in jobs}


def experiment_main(name: str, description: str, config_cls: Any, run: Callable[[Any, str], Path | None],
                    argv: list[str] | None) -> int:
    """``latentcomm experiment NAME``: flags of ``config_cls``, ``run(config, command)``, then the report (or how
    to continue a run stopped early)."""
    from latentcomm.cli.parser import parser

    ap = parser(f"experiment {name}", description)
    config_cls.add_arguments(ap)
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = config_cls.from_args(ap.parse_args(argv))
    report = run(cfg, f"latentcomm experiment {name} " + " ".join(argv))
    if report is None:
        print(f"training stopped early; continue with --resume --out {cfg.out}")
        return 0
    print(report.read_text())
    print(f"wrote {report.parent}")
    return 0
