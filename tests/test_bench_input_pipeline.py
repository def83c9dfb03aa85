"""bench/input_pipeline.py: the smoke run reports both paths' figures and ends with the main-thread line."""

import os
import re
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join("bench", "input_pipeline.py")
NUMBER = r"\d+(?:\.\d+)?"


def run(*args, timeout=120):
    # One intra-op thread, as in tests/test_bench_throughput.py: spinning OpenMP threads slow a small shared CPU.
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_tiny_run_reports_both_paths_and_ends_with_the_uint8_figure():
    result = run("--tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert "bench/input_pipeline.py --tiny" in lines[0]
    assert "2 workers, batch 4" in result.stdout
    if not torch.cuda.is_available():
        assert "pinning: skipped (no CUDA)" in result.stdout
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in ("uint8", "float32"):
            rows.setdefault(cells[0], []).append(cells)
    assert sorted(rows) == ["float32", "uint8"], result.stdout
    (summary_u8, parts_u8), (summary_f32, _) = rows["uint8"], rows["float32"]
    # float32 images are 4 bytes a value: the batch is 4 times the uint8 one (4 x 3 x 224 x 224 bytes = 0.6 MB)
    assert float(summary_u8[1]) == 0.6 and float(summary_f32[1]) == 2.4, rows
    for summary in (summary_u8, summary_f32):
        assert all(re.fullmatch(NUMBER, cell) for cell in summary[1:]) and float(summary[2]) > 0, summary
    assert all(re.fullmatch(f"{NUMBER} / {NUMBER}", cell) for cell in parts_u8[1:]), parts_u8
    float32 = re.search(
        rf"^float32 path main-thread us per image: ({NUMBER}) \(CPU\), ({NUMBER}) \(wall\)$", result.stdout, re.M
    )
    assert float32 and float(float32[1]) == float(summary_f32[3]), result.stdout
    assert re.search(r"^target <= 15 us per image \(uint8 path, CPU\): (met|missed)$", result.stdout, re.M)
    last = re.fullmatch(rf"main-thread us per image: ({NUMBER})", lines[-1])
    assert last, lines[-1]
    # the last line is the uint8 path's CPU figure of the table, which the span's parts add up to: receive, pin
    # and copy; the release of the previous batch (the first part) is printed but lies outside the span
    assert float(last[1]) == float(summary_u8[3]) > 0
    parts = [float(cell.split(" / ")[0]) for cell in parts_u8[1:]]
    span = parts[1:]
    assert abs(sum(span) - float(last[1])) <= 0.05 * len(span) + 1e-9, (parts, last[1])


def test_batches_not_a_multiple_of_workers_is_refused_naming_the_flag():
    result = run("--tiny", "--workers", "3", "--batches", "4", timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert "--batches 4: must be a multiple of --workers 3" in result.stderr.strip().splitlines()[-1]
