"""bench/mae_elpv.py: the smoke run pretrains, fine-tunes and probes from that very checkpoint, and tabulates."""
import importlib.util
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tiny_run_fine_tunes_and_probes_the_pretrained_checkpoint(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("mae_elpv", os.path.join(ROOT, "bench", "mae_elpv.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tiny", "--gpu_devices", "cpu", "--tasks", "binary", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    (checkpoint,) = [os.path.join(r, f) for r, _, files in os.walk(tmp_path / "MAE") for f in files
                     if f.endswith("_best_ckpt.pth")]
    rows = re.findall(r"^\| (\w+) \| ([^|]+) \| ([\d.]+)", out, re.M)
    assert [(t, n.strip()) for t, n, _ in rows] == [("pretrain", "MAE (4class k-NN monitor)"), ("binary", "scratch"),
                                                    ("binary", "MAE fine-tune"), ("binary", "MAE linear probe")]
    assert all(0 <= float(v) <= 100 for _, _, v in rows)
    assert out.count(f"--pretrained_path {checkpoint} --") == 2  # both MAE runs start from the pretrained encoder
