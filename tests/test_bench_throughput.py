"""bench/throughput.py: the CPU smoke run prints a well-formed table, and without CUDA it needs --tiny."""

import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join("bench", "throughput.py")
ROWS = ("resnet50", "vit_b_16", "vit_b_16+compile", "unet")


def run(*args, timeout=120):
    # One intra-op thread: on a small shared CPU, OpenMP threads that spin while other processes run make
    # the tiny models 10x slower (about 30 s instead of minutes on 2 busy cores).
    return subprocess.run(
        [sys.executable, SCRIPT, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


# A classifier (all three measurements) and the segmenter (two): the ViT rows take the classifier's code path.
TESTED = ("resnet50", "unet")


def test_tiny_run_prints_one_row_per_model_with_consistent_ratios(tmp_path):
    result = run("--tiny", "--gpu_devices", "cpu", "--models", ",".join(TESTED), "--profile", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "command: " in out and "bench/throughput.py --tiny --gpu_devices cpu" in out
    assert "device: CPU" in out and f"torch: {torch.__version__}" in out
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] in ROWS:
            rows[cells[0]] = cells
    assert sorted(rows) == sorted(TESTED), out
    for name, (_, batch, size, bare, trainer, files, b_ratio, c_ratio) in rows.items():
        assert batch == "4" and re.fullmatch(r"\d+x\d+", size), rows[name]
        a, b = float(bare), float(trainer)
        assert a > 0 and b > 0, rows[name]
        # the printed ratio is (b)/(a) of the printed figures, to its 3 decimals
        assert abs(float(b_ratio) - b / a) <= 0.0005 + 1e-9, rows[name]
        if name == "unet":
            assert files == "n/a" and c_ratio == "n/a", rows[name]
        else:
            c = float(files)
            assert c > 0 and abs(float(c_ratio) - c / a) <= 0.0005 + 1e-9, rows[name]
    assert "target (b)/(a) >= 0.97" in out and "target (c)/(a) >= 0.90 for resnet50" in out
    assert "(b): 0 workers (profiled)" in out
    for name in TESTED:  # a profile of each timed span: the optimizer's kernels are in both
        for kind in ("bare", "trainer"):
            table = (tmp_path / f"{name}_{kind}.txt").read_text()
            assert "Self CPU" in table and "aten::" in table, (name, kind)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_without_cuda_and_without_tiny_exits_2_with_one_line():
    result = run(timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0] and "--tiny" in lines[0], result.stderr


def test_rows_use_the_trainers_new_defaults_uint8_images_and_auto_workers():
    from bench.throughput import parse, synthetic

    images, labels = synthetic("cls", 2, (8, 8))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 8, 8) and labels.dtype == torch.int64
    images, masks = synthetic("seg", 2, (8, 12))
    assert images.dtype == torch.uint8 and masks.shape == (4, 1, 8, 12)
    a = parse([])
    assert a.num_workers == "auto" and a.memory_workers == "auto"
    assert parse(["--num_workers", "3", "--memory_workers", "0"]).num_workers == 3
