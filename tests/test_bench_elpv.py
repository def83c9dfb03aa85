"""bench/elpv.py: each seed is its own run on its own split, and the row's mean +- std is theirs."""

import glob
import importlib.util
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_elpv", os.path.join(ROOT, "bench", "elpv.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_mean_std_is_the_sample_standard_deviation():
    bench = load_bench()
    assert bench.mean_std([80.0, 82.0, 84.0]) == "82.00 +- 2.00"  # n - 1: sqrt(8 / 2)
    assert bench.mean_std([79.5]) == "79.50 +- n/a"


def test_tiny_run_reports_mean_and_std_of_each_seeds_own_evaluation(tmp_path, capsys):
    bench = load_bench()
    bench.main(["--tiny", "--recipes", "scratch64", "--seeds", "3,4", "--output_dir", str(tmp_path)])
    out = capsys.readouterr().out
    (row,) = re.findall(r"^\| scratch64 \| 2 \| ([^|]+) \| ([^|]+) \| ([^|]+) \|", out, re.M)
    results, seeds = [], []
    for path in sorted(glob.glob(str(tmp_path / "elpv_scratch64_*" / "*" / "*_eval_test.json"))):
        with open(path) as f:
            results.append(json.load(f))
        config = glob.glob(os.path.join(os.path.dirname(path), "config_*.json"))[0]
        with open(config) as f:
            seeds.append(json.load(f)["config"]["seed"])
    assert sorted(seeds) == [3, 4]  # one run per seed, each with its own seed
    for cell, key in zip(row, ("top1", "mono", "poly")):
        values = [r["top1"] if key == "top1" else r["per_group_top1"][key] for r in results]
        assert cell.strip() == bench.mean_std(values)


def test_bad_recipes_and_seeds_are_one_line_errors(capsys):
    bench = load_bench()
    for argv, flag in ((["--recipes", "scratch999"], "--recipes"), (["--seeds", "0,x"], "--seeds")):
        with pytest.raises(SystemExit) as exc:
            bench.main(argv)
        assert exc.value.code == 2 and flag in capsys.readouterr().err
