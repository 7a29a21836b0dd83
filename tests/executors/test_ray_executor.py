"""The Ray executor on a real two-node cluster on 127.0.0.1 (no mock of Ray): runs land on
both nodes, a node killed mid-run costs nothing but time, failures are reported and not
retried, and local Ray listens on 127.0.0.1 only, with token authentication."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from grid_helpers import (
    EPOCHS,
    RUNS,
    adapters,
    descendants,
    in_flight_with_checkpoint,
    kill_all,
    run_to_end,
    small_digits,
    sweep_argv,
    wait_for,
)

pytest.importorskip("ray")
pytestmark = pytest.mark.slow
__all__ = ["small_digits"]  # a fixture

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A head node and a second node started with ``ray start`` on this machine, one CPU
    each, with token authentication (the token in a file of its own). Ray refuses a
    multi-node cluster on the loopback address, so the nodes advertise the machine's own
    address; the local-instance test below checks the 127.0.0.1-only case."""

    def __init__(self) -> None:
        # Ray's socket paths must stay short: a folder of its own under /tmp
        self.tmp = Path(tempfile.mkdtemp(prefix="mray-", dir="/tmp"))
        token = self.tmp / "token"
        token.write_text(secrets.token_hex(32))
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_health_check_period_ms": "1000",  # a dead node is noticed in seconds
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            # Ray lowers its workers' priority by 15 (nice +15): on a machine shared with other
            # work the runs
            # would crawl past the timeouts below (docs/faq.md)
            "RAY_worker_niceness": "0",
        }
        self.address = f"127.0.0.1:{_free_port()}"
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
        head = [RAY, "start", "--head", f"--port={self.address.split(':')[1]}",
                "--include-dashboard=false", f"--temp-dir={self.tmp / 'ray'}", *common]  # fmt: skip
        subprocess.run(head, env=self.env, check=True, capture_output=True, timeout=120)
        self.second = subprocess.Popen(
            [RAY, "start", f"--address={self.address}", "--block", *common],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.alive_nodes() == 2, 120, "the second node to join")

    def alive_nodes(self) -> int:
        code = (
            f"import ray; ray.init(address={self.address!r}, log_to_driver=False); "
            "print(sum(n['Alive'] for n in ray.nodes()))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=self.env, capture_output=True, text=True
        )
        return int(out.stdout.strip() or 0)

    def kill_second_node(self) -> None:
        kill_all([*descendants(self.second.pid), self.second.pid])
        self.second.wait(timeout=30)

    def stop(self) -> None:
        if self.second.poll() is None:
            self.kill_second_node()
        subprocess.run([RAY, "stop", "--force"], env=self.env, capture_output=True, timeout=120)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _nodes(log: str) -> set[str]:
    """The nodes that progress lines name (``... trained on HOST/NODEID in 5s``)."""
    return set(re.findall(r"(?:trained|resumed) on (\S+) in", log))


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.stop()


def test_two_nodes_one_killed_mid_run(cluster: Cluster, small_digits: Path, tmp_path: Path):
    out = tmp_path / "ray"
    argv = sweep_argv(small_digits, out, "--ray-address", cluster.address, "--max-retries", "2")
    log = tmp_path / "sweep.log"
    with log.open("w") as f:
        sweep = subprocess.Popen(argv, env=cluster.env, stdout=f, stderr=subprocess.STDOUT)
    try:
        # a run finished on each node, and both nodes hold a run past a checkpoint: the
        # second node's run is one of them
        wait_for(
            lambda: len(_nodes(log.read_text())) == 2 and len(in_flight_with_checkpoint(out)) == 2,
            300,
            "a run finished on each node and two started runs",
        )
        cluster.kill_second_node()
        assert sweep.wait(timeout=600) == 0, log.read_text()
    finally:
        sweep.kill()
    text = log.read_text()
    assert "2 node(s)" in text
    assert len(_nodes(text)) == 2, text  # runs landed on both nodes
    summaries = {p.parent: json.loads(p.read_text()) for p in out.glob("**/summary.json")}
    assert len(summaries) == RUNS, text
    resumed = {d: s for d, s in summaries.items() if s["resumed_from_epoch"]}
    assert len(resumed) == 1, text  # the run the dead node held, continued from its checkpoint
    ((run_dir, s),) = resumed.items()
    epochs = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))
    assert all(e.get("resumed_from_epoch") == s["resumed_from_epoch"] for e in epochs[-1:])
    assert re.search(r"resumed on \S+", text), text
    # the same grid on the local executor: the same adapters, byte for byte
    local = tmp_path / "local"
    run_to_end(sweep_argv(small_digits, local, "--jobs", "2"))
    assert adapters(out) == adapters(local) and len(adapters(out)) == RUNS
    # a second sweep over the finished folder trains nothing (and needs no cluster)
    again = run_to_end(argv, env=cluster.env)
    assert f"0 trained, 0 resumed, {RUNS} already done" in again


def test_a_run_that_fails_by_itself_is_reported_not_retried(
    cluster: Cluster, small_digits: Path, tmp_path: Path
):
    out = tmp_path / "nan"
    # lr 1e6 drives the loss to NaN at once: the engine's NaN stop (exit 2 on its own)
    grid = ["--config", "offline/_base", "--tasks", "digits", "--methods", "adapter",
            "--seeds", "0", "--lrs", "1e6,0.01"]  # fmt: skip
    argv = sweep_argv(small_digits, out, "--ray-address", cluster.address, grid=grid)
    proc = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 1, text
    failed = [ln for ln in text.splitlines() if ln.startswith("mosa: failed ")]
    assert len(failed) == 1 and "lr1e+06/seed0: TrainingDivergedError" in failed[0], text
    assert "1 trained, 0 resumed, 0 already done, 1 failed" in text
    assert not (out / "digits/adapter/lr1e+06/seed0/summary.json").exists()
    assert (out / "digits/adapter/lr0.01/seed0/summary.json").exists()  # the other went on
    manifest = json.loads((out / "sweep.json").read_text())["runs"]
    assert [r["status"] for r in manifest] == ["failed", "trained"]


def test_local_ray_listens_on_127_0_0_1_only_with_token_auth_and_normal_priority(tmp_path: Path):
    code = """
import json, os, subprocess, sys
from mosa.executors import ExecutorOptions
from mosa.executors.ray_cluster import RayExecutor
ex = RayExecutor(ExecutorOptions(executor="ray", jobs=1), log=lambda s: None)
import ray
listen = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout.splitlines()
ours = [ln for ln in listen if any(k in ln for k in ("raylet", "gcs_server", "ray::", f"pid={os.getpid()},"))]
nice = ray.get(ray.remote(lambda: os.nice(0)).remote())
doc = {"listen": ours, "auth": os.environ.get("RAY_AUTH_MODE"), "nice": nice, "driver": os.nice(0)}
print(json.dumps(doc))
ex.close()
"""
    if shutil.which("ss") is None:
        pytest.skip("ss (iproute2) is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["auth"] == "token"
    # Ray adds its worker niceness to the one inherited: the runs keep the driver's priority,
    # as the local executor's do, not 15 below it
    assert doc["nice"] == doc["driver"]
    assert doc["listen"], proc.stdout  # Ray's servers were seen ...
    for line in doc["listen"]:  # ... and every one of them on the loopback address only
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:")), line
