"""``latentcomm run``: parse the flags, start Ray, run the job, score it, write and print the report."""
from __future__ import annotations

import asyncio
import logging
import os

from latentcomm.actors.job.config import parse_config
from latentcomm.actors.job.report import print_report, write_results
from latentcomm.actors.job.run import Answering, answer, run_job
from latentcomm.actors.job.score import score_job
from latentcomm.model.teachers import load_teacher
from latentcomm.runtime.cluster import init_ray


def main(argv: list[str] | None = None, *, answering: Answering = answer) -> int:
    """``latentcomm run``; ``answering`` runs one question through a chain (``run.answer``, or another runner)."""
    config = parse_config(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    init_ray(config.address, num_cpus=None if config.address else os.cpu_count())
    job = asyncio.run(run_job(config, answering))
    teacher = None if config.teacher == "none" else load_teacher(config.teacher)
    result = score_job(job, config, teacher)
    folder = write_results(result, job.trace, config.out)
    print_report(result, job.trace, folder)
    return 0
