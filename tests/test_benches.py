"""bench/pipeline.py, bench/feed.py, bench/batch.py and bench/swap.py run at tiny sizes and print their tables: smoke tests, no timing is asserted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from stores import sqlite_store

REPO_ROOT = Path(__file__).resolve().parents[1]
TABLE_HEADER = "| path | px | augment | images | epoch 1, per core | later epochs, per core |"


def run_bench(tmp_path: Path, *arguments: str) -> str:
    environment = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "MLFLOW_TRACKING_URI": sqlite_store(tmp_path / "mlflow.db"),
    }
    result = subprocess.run(
        [sys.executable, *arguments], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def table_rows(output: str) -> list[list[str]]:
    """The rows of bench/epochs.py's table: path, px, augment, then the figures."""
    lines = output[output.index(TABLE_HEADER) :].splitlines()[2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines if line.startswith("| ")]


@pytest.mark.slow
def test_pipeline_bench_times_another_checkout_beside_this_one_and_prints_both_paths(tmp_path):
    # The checkout itself stands in for the worktree of an older revision.
    output = run_bench(
        tmp_path,
        str(REPO_ROOT / "bench" / "pipeline.py"),
        *("--files", "40", "--source-size", "48", "--image-size", "32", "--batch-size", "8", "--train-steps", "0"),
        *("--against", str(REPO_ROOT), "--rounds", "1", "--table-sizes", "32", "--table-epochs", "1"),
        *("--workdir", str(tmp_path / "work")),
    )
    assert "| epochs 2+ (from cache), images/s |" in output and "| load average (1 min) after |" in output
    assert "train.data epoch 2+ (from cache)" in output
    rows = table_rows(output)
    assert [row[:3] for row in rows] == [
        ["image files", "32", "cells"],
        ["image files", "32", "none"],
        ["prepared folder", "32", "cells"],
        ["prepared folder", "32", "none"],
    ]


@pytest.mark.slow
def test_feed_bench_prints_the_image_files_and_each_encoding_in_one_table(tmp_path):
    output = run_bench(
        tmp_path,
        str(REPO_ROOT / "bench" / "feed.py"),
        *("--images", "24", "--source-size", "64", "--prepared-size", "48", "--image-size", "32"),
        *("--table-sizes", "32", "--encodings", "raw", "--epochs", "1", "--batch-size", "8", "--shard-size", "8"),
    )
    assert {tuple(row[:3]) for row in table_rows(output)} == {
        ("image files", "32", "radiograph"),
        ("image files", "32", "none"),
        ("prepared folder (raw)", "32", "radiograph"),
        ("prepared folder (raw)", "32", "none"),
    }
    assert "feed at 32 px with augmentation:" in output and "such cores" in output


@pytest.mark.slow
def test_batch_bench_prints_the_cpu_bound_and_the_local_engine_against_it(tmp_path):
    output = run_bench(
        tmp_path,
        str(REPO_ROOT / "bench" / "batch.py"),
        *("--bound-only", "--skip-spark", "--bound-models", "small_cnn:32:40", "--file-size", "48"),
        *("--workdir", str(tmp_path / "work")),
    )
    assert "| model | px | files | decode CPU ms/image | forward CPU ms/image | bound images/s |" in output
    assert "small_cnn at 32 px: local engine at" in output and "of the CPU bound" in output


@pytest.mark.slow
def test_swap_bench_prints_steady_and_swap_latency_and_counts_no_failure(tmp_path):
    output = run_bench(
        tmp_path, str(REPO_ROOT / "bench" / "swap.py"), "--image-size", "32", "--clients", "2", "--seconds", "2"
    )
    assert "| window | requests | p50 ms | p99 ms | max ms |" in output
    assert "| steady (before the move) |" in output and "| during the swap |" in output
    assert "failed requests: 0; version-1 answers after a client saw version 2: 0" in output
