"""bench/mae_elpv.py: the smoke run pretrains, fine-tunes and probes from that very checkpoint, and tabulates."""

import csv
import glob
import importlib.util
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_run_fine_tunes_and_probes_the_pretrained_checkpoint(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("mae_elpv", os.path.join(ROOT, "bench", "mae_elpv.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tiny", "--gpu_devices", "cpu", "--tasks", "binary", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (checkpoint,) = [
        os.path.join(r, f) for r, _, files in os.walk(tmp_path / "MAE") for f in files if f.endswith("_best_ckpt.pth")
    ]
    rows = re.findall(r"^\| (\w+) \| ([^|]+) \| ([\d.]+)", out, re.M)
    assert [(t, n.strip()) for t, n, _ in rows] == [
        ("pretrain", "MAE (4class k-NN monitor)"),
        ("binary", "scratch"),
        ("binary", "MAE fine-tune"),
        ("binary", "MAE linear probe"),
    ]
    # Each figure is its run's own: the MAE run's best validation k-NN top-1, each ViT run's test top-1.
    (mae_run,) = glob.glob(str(tmp_path / "MAE" / "*"))
    with open(os.path.join(mae_run, "metrics.csv"), newline="") as f:
        expected = {"MAE (4class k-NN monitor)": max(float(row["val_knn_top1"]) for row in csv.DictReader(f))}
    for run in glob.glob(str(tmp_path / "ViT" / "*")):
        (config_path,) = glob.glob(os.path.join(run, "config_*.json"))
        with open(config_path) as f, open(os.path.join(run, "test_metrics.json")) as g:
            config, top1 = json.load(f)["config"], json.load(g)["top1"]
        name = (
            "MAE linear probe"
            if config["linear_probe"]
            else "MAE fine-tune"
            if config["pretrained_path"]
            else "scratch"
        )
        expected[name] = top1
    assert {n.strip(): v for _, n, v in rows} == {n: f"{v:.2f}" for n, v in expected.items()}
    assert out.count(f"--pretrained_path {checkpoint} --") == 2  # both MAE runs start from the pretrained encoder
