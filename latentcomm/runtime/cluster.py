"""Starting or joining a Ray cluster quietly: no dashboard, no usage stats, no auth prompt, nothing in $HOME.

Ray is imported inside ``init_ray`` only, so the core loads without it.
"""
from __future__ import annotations

import logging
import os
from typing import Any

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_USAGE_STATS_PROMPT_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
             object_store_memory: int | None = 256 * 2**20, **kwargs: Any) -> None:
    """Join ``address`` (e.g. ``ray://head:10001`` or ``auto``) or start a local cluster; no-op if already up.

    Quiet settings go into this process's environment and every worker's (``runtime_env``).
    """
    import ray

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    env = {"env_vars": {k: os.environ[k] for k in QUIET_ENV} | _passthrough_env(),
           "worker_process_setup_hook": f"{__name__}.quiet_worker_logs"}
    if address:
        ray.init(address=address, runtime_env=env, log_to_driver=True, **kwargs)
        return
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, object_store_memory=object_store_memory,
             runtime_env=env, log_to_driver=True, **kwargs)


def quiet_worker_logs() -> None:
    """Start-up hook of every Ray worker process: silence what only a dashboard-less cluster makes noisy.

    Without the dashboard there is no State API, and Ray Train's placement-group cleaner warns once a second
    for the whole run that it cannot query the controller (it goes on monitoring all the same).
    """
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def _passthrough_env() -> dict[str, str]:
    """Project settings that workers must share with the driver (cache location, Python path)."""
    keys = ("LATENTCOMM_HOME", "PYTHONPATH", "HF_HOME")
    return {k: os.environ[k] for k in keys if k in os.environ}
