"""Worker processes of a search: starts `python -m train tune-worker` processes (one GPU each), relays their output and stops them cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from train.settings import TuneSettings, TuneWorkerSettings
from train.tuning.space import resolve_space_path

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_STOP_TIMEOUT_S = 60
ORPHAN_POLL_S = 5.0


def visible_gpus() -> list[str]:
    """GPU ids to hand out to workers: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`, without importing TensorFlow."""
    from train.job.hardware import driver_gpus

    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [device.strip() for device in declared.split(",") if device.strip() and device.strip() != "-1"]
    return driver_gpus()


def worker_environment(index: int, gpus: list[str]) -> dict[str, str]:
    """The environment of worker `index`: this one, minus the parent's MLflow run id, plus its own GPU."""
    import mlflow

    environment = dict(os.environ)
    # With MLFLOW_RUN_ID set, the worker's start_run would resume the parent run instead of opening a child.
    environment.pop("MLFLOW_RUN_ID", None)
    environment["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), environment.get("PYTHONPATH")]))
    if gpus:
        environment["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return environment


def _relay(stream, prefix: str) -> None:
    for line in stream:
        sys.stdout.write(prefix + line)
        sys.stdout.flush()


def run_workers(options: list[TuneWorkerSettings]) -> list[int]:
    """Start one `python -m train tune-worker` per settings, relay their output line by line, wait; return exit codes."""
    gpus = visible_gpus()
    if gpus:
        print(f"GPUs {', '.join(gpus)}: worker i uses GPU i mod {len(gpus)}", flush=True)
    processes = []
    relays = []
    for worker in options:
        command = [sys.executable, "-m", "train", "tune-worker", *worker.to_arguments()]
        process = subprocess.Popen(
            command,
            env=worker_environment(worker.worker_index, gpus),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        relay = threading.Thread(target=_relay, args=(process.stdout, f"[worker {worker.worker_index}] "), daemon=True)
        relay.start()
        processes.append(process)
        relays.append(relay)
    try:
        codes = [process.wait() for process in processes]
    except KeyboardInterrupt:
        # Ctrl-C reaches the workers too; SIGTERM covers a lead stopped alone. They get time to fail
        # their trials and end their runs cleanly.
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
        raise
    for relay in relays:
        relay.join(timeout=10)
    return codes


def worker_settings(
    options: TuneSettings,
    *,
    storage_url: str,
    study_name: str,
    n_trials: int,
    parent_run_id: str,
    experiment_id: str,
    seeded: bool,
    started: float,
    count: int,
) -> list[TuneWorkerSettings]:
    """The settings of `count` workers of one study; seeded workers use seed + index, others are unseeded."""
    timeout = max(1.0, options.timeout - (time.monotonic() - started)) if options.timeout else 0.0
    return [
        TuneWorkerSettings(
            space=str(resolve_space_path(options.space)),
            storage=storage_url,
            study_name=study_name,
            n_trials=n_trials,
            parent_run_id=parent_run_id,
            experiment_id=experiment_id,
            timeout=timeout,
            sampler=options.sampler,
            pruner=options.pruner,
            seed=options.seed + index if seeded else -1,
            data_dir=options.data_dir,
            worker_index=index,
        )
        for index in range(count)
    ]


def interrupt_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so a stopped process fails its trial and ends its runs instead of vanishing."""

    def interrupt(signal_number, frame):
        raise KeyboardInterrupt(f"signal {signal_number}")

    signal.signal(signal.SIGTERM, interrupt)


def stop_when_orphaned(poll_s: float = ORPHAN_POLL_S) -> None:
    """Stop this worker (as SIGTERM would) when the process that started it is gone, so no worker trains for nobody."""
    starter = os.getppid()

    def watch() -> None:
        while os.getppid() == starter:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()
