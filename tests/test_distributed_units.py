"""The parts of DDP support that need no trainer: sharded sampling, device choice, launch, reductions."""

import os

import pytest
import torch
import torch.multiprocessing as mp

from base.config.parse import ConfigError
from base.loop.state import ResumableSampler, trained_samples
from base.runtime import distributed
from base.runtime.device import select_device
from utils.metrics import ClassificationMeter
from utils.seg_metrics import SegmentationMeter


@pytest.mark.parametrize("length,batch,world,start", [(47, 3, 2, 0), (47, 3, 2, 12), (50, 4, 3, 8), (13, 5, 4, 0)])
def test_shards_cover_each_position_once_and_batch_k_is_the_global_batch_k(length, batch, world, start):
    shards = []
    for rank in range(world):
        sampler = ResumableSampler(length, seed=3, batch_size=batch, rank=rank, world_size=world)
        sampler.set_epoch(5, start)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1])
    one = ResumableSampler(length, seed=3)
    one.set_epoch(5, start)
    order, end = list(one), shards and sampler.end
    kept = trained_samples(length - start, batch, world)
    assert end == start + kept
    assert sorted(i for s in shards for i in s) == sorted(order[:kept])  # each once, no padding
    assert len({len(s) // batch + (len(s) % batch > 0) for s in shards}) == 1  # as many batches on every rank
    for k in range(len(shards[0]) // batch + 1):  # batch k of all ranks = positions [k*B*W, (k+1)*B*W)
        together = sorted(i for s in shards for i in s[k * batch : (k + 1) * batch])
        assert together == sorted(
            order[k * batch * world : (k + 1) * batch * world][: max(0, kept - k * batch * world)]
        )


def test_tail_rules():
    assert trained_samples(41, 8) == 40 and trained_samples(42, 8) == 42 and trained_samples(1, 8) == 1
    # two processes: a last global batch of 1..3 would leave one with a batch of one sample or none
    assert [trained_samples(n, 4, 2) for n in (16, 17, 18, 19, 20, 21)] == [16, 16, 16, 16, 20, 21]


def test_device_per_local_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("cpu,cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="no such GPU"):
        select_device("0,5")  # local rank 1 takes GPU 5
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ConfigError, match="2 devices for local rank 2"):
        select_device("cpu,cpu")
    monkeypatch.delenv("LOCAL_RANK")
    assert select_device("cpu,cpu") == torch.device("cpu")  # the launching process only checks the list


def test_one_gpu_for_two_processes_is_refused(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="names one GPU for the 2 processes"):
        select_device("1")


def test_launch_command():
    command = distributed.launch_command("0,1,2", "trainer_vit.py", ["--epochs", "3"])
    assert command[1:] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=3",
        "trainer_vit.py",
        "--epochs",
        "3",
    ]
    for bad in ("0,,1", "cpu,0"):
        with pytest.raises(ConfigError, match="gpu_devices"):
            distributed.launch_command(bad, "x.py", [])


def test_sync_bn_on_cpu_processes_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    with pytest.raises(ConfigError, match="--sync_bn"):
        distributed.wrap_model(torch.nn.BatchNorm1d(3), torch.device("cpu"), sync_bn=True)


def _reduce_worker(rank, world, init_file, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(11, 7, generator=gen), torch.randint(0, 7, (11,), generator=gen)
    masks, truth = torch.rand(11, 5, 5, generator=gen) > 0.5, torch.rand(11, 5, 5, generator=gen) > 0.6
    mine = slice(rank, None, world)  # 6 samples on rank 0, 5 on rank 1
    cls, seg = ClassificationMeter(7), SegmentationMeter()
    cls.update(logits[mine], labels[mine], torch.tensor(0.5 + rank))
    seg.update(masks[mine], truth[mine])
    seg.add_loss(0.5 + rank, len(labels[mine]))
    per_sample = {"mse": float(logits[mine, 0].pow(2).mean())}  # a task's plain per-sample mean
    combined = distributed.combine_metrics(per_sample, len(labels[mine]))
    torch.save({"cls": cls.compute(), "seg": seg.compute(), "combined": combined}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_meters_and_plain_means_reduce_to_the_whole_split(tmp_path):
    mp.spawn(_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out")), nprocs=2)
    results = [torch.load(tmp_path / f"out.{r}") for r in (0, 1)]
    assert results[0] == results[1]  # every process gets the same numbers
    gen = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(11, 7, generator=gen), torch.randint(0, 7, (11,), generator=gen)
    masks, truth = torch.rand(11, 5, 5, generator=gen) > 0.5, torch.rand(11, 5, 5, generator=gen) > 0.6
    cls, seg = ClassificationMeter(7), SegmentationMeter()
    cls.update(logits, labels)
    seg.update(masks, truth)
    whole_cls, whole_seg = cls.compute(), seg.compute()
    assert results[0]["cls"]["top1"] == whole_cls["top1"] and results[0]["cls"]["top5"] == whole_cls["top5"]
    assert results[0]["cls"]["loss"] == pytest.approx((0.5 * 6 + 1.5 * 5) / 11)  # each batch weighted by its size
    for key in ("dice", "iou", "dice_per_image", "iou_per_image"):
        assert results[0]["seg"][key] == pytest.approx(whole_seg[key], rel=1e-12), key
    assert results[0]["combined"]["mse"] == pytest.approx(float(logits[:, 0].pow(2).mean()), rel=1e-6)
    assert not os.environ.get("RANK")  # nothing leaked into this process


@pytest.mark.skipif(torch.cuda.device_count() >= 2, reason="needs GPUs 0 and 1 to be missing")
def test_a_list_of_missing_gpus_is_one_line_before_any_process_starts(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "trainer_vanilla.py", "--gpu_devices", "0,1", "--output_dir", str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"trainer_vanilla.py: error: --gpu_devices='0,1': no such GPU ({torch.cuda.device_count()} CUDA device(s) "
        "visible); use --gpu_devices cpu"
    ]
    assert not list(tmp_path.iterdir())
