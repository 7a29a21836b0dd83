"""Executor options: what cannot work is refused before any run starts."""

from __future__ import annotations

import pytest

from mosa.config import ConfigError
from mosa.executors import ExecutorOptions


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"executor": "slurm"}, "is not one of"),
        ({"ray_address": "10.0.0.1:6379"}, "--ray-address needs --executor ray"),
        ({"jobs": 0}, "must be at least 1"),
        ({"threads": 0}, "must be at least 1"),
        ({"max_retries": -1}, "must not be negative"),
        ({"executor": "ray", "gpus_per_run": -0.5}, "must not be negative"),
        ({"gpus_per_run": 0.25}, "--gpus-per-run sizes Ray tasks"),
    ],
)
def test_options_that_cannot_work_are_refused(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        ExecutorOptions(**kwargs)


def test_gpus_per_run_is_taken_by_ray() -> None:
    assert ExecutorOptions(executor="ray", gpus_per_run=0.25).gpus_per_run == 0.25
    assert ExecutorOptions(executor="ray", ray_address="10.0.0.1:6379", jobs=4).jobs == 4
