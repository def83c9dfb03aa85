"""The image input pipeline's two costs, uint8 batches against float32 ones: decoding per worker, and the main thread.

    python bench/input_pipeline.py                 # 2-3 minutes on 2 CPU cores; the figures in docs/BENCHMARKS.md
    python bench/input_pipeline.py --tiny          # a smoke run of the script (well under a minute)

Both paths read the same generated JPEG ImageFolder (``--files`` random files of about 500x375 in 10 class
folders, quality 90, about 100 KB each; bench/throughput.py's generator) through
:class:`data.images.ImageFiles` with the training recipe of ``trainer_vit.py --randaugment 2 9 --hflip 0.5``
(``data.transforms.train_transform("rrc", 224, ops=augment_ops(0.5, randaugment=(2, 9)))``), each sample
seeded from its position by :class:`base.loop.state.SeededSamples` as in the trainer, so both paths draw the same
crops and ops for the same image:

* ``uint8``: what the trainer does now: the worker hands out uint8 ``(3, 224, 224)``; the device converts
  and normalises (:class:`base.loop.input_stage.InputStage`).
* ``float32``: what it did before: the same recipe then ``ToDtype(float32, scale=True)`` and ImageNet's
  ``Normalize`` in the worker, so float32 crosses shared memory, pinning and the copy.

Two figures per path, one process, the same files, batch size and worker count:

1. **images/s per worker**: ``ImageFiles.__getitem__`` (decode, crop, ops, and for float32 the conversion)
   over ``--worker_images`` images in this process with one intra-op thread, as a DataLoader worker runs.
2. **main-thread us per image**: a DataLoader with ``--workers`` workers and a prefetch queue that holds
   every timed batch (``prefetch_factor = --batches / --workers``, and no more batches than that, so the
   workers are idle while the main thread is timed); once all batches are ready, per batch, the span
   from "batch ready in a worker" to "batch handed to the device": ``next`` of the loader's iterator
   (receiving: unpickling, fetching each tensor's shared memory from its worker) + pinning (CUDA only:
   ``Tensor.pin_memory`` on this thread, where the trainer's DataLoader pins in its pin-memory thread of
   the same process) + the copy call (``Tensor.to(device, non_blocking=True)``, what
   ``InputStage.to_device`` does first), divided by images. In this thread's CPU time
   (``time.thread_time``: what the thread spends, whatever else the machine runs), the figure, and in
   wall time beside it (which also counts waiting for a worker's reply and time given to other
   processes). Sending indices to busy workers is not in it: every index was sent when the iterator
   started. Timed apart and printed, outside the span: releasing the previous batch (its last
   references: the kernel unmaps and frees the shared memory a worker filled, when the training loop
   drops a batch whose step is done).

Printed beside them, not counted in (2): ``InputStage.normalise`` per image (uint8 to the model's
float input; kernel launches on CUDA, the arithmetic itself on this thread on a CPU). Each figure is
the median of ``--repeats`` repeats, the paths interleaved. The last line is
``main-thread us per image: X``, X the uint8 path's figure (2), CPU time. ``--tiny``: 16 files, batches of 4,
4 batches, 8 images per worker figure, 1 repeat.
"""

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from base.loop.input_stage import InputStage  # noqa: E402
from base.loop.state import SeededSamples  # noqa: E402
from bench.throughput import jpeg_folder  # noqa: E402
from data import transforms  # noqa: E402
from data.images import ImageFiles  # noqa: E402

PATHS = ("uint8", "float32")
PARTS = ("free", "receive", "pin", "copy")  # the hand-off, in order
CLOCKS = ("wall", "cpu")


def recipe(path, image_size):
    """The training pipeline of ``path``: PIL image -> uint8 ``(3, S, S)``, or float32 normalised by ImageNet's
    statistics (``float32``, the pre-uint8 pipeline)."""
    from torchvision.transforms import v2

    uint8 = transforms.train_transform("rrc", image_size, ops=transforms.augment_ops(hflip=0.5, randaugment=(2, 9)))
    if path == "uint8":
        return uint8
    return v2.Compose(
        [uint8, v2.ToDtype(torch.float32, scale=True), v2.Normalize(transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)]
    )


def worker_rate(dataset, count):
    """Images/s of ``dataset[(0, i)]`` for ``i < count`` on one intra-op thread (a DataLoader worker's setting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[(0, 0)]  # the first call imports and builds what the ops need
        start = time.perf_counter()
        for i in range(count):
            dataset[(0, i % len(dataset))]
        return count / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def main_thread(dataset, a, device, inputs):
    """The main thread's hand-off of ``a.batches`` ready batches (module docstring, (2)).

    Returns:
        ``{(part, clock): seconds summed over the batches}`` for part ``free`` (the previous batch's
        release, not in ``total``), ``receive``, ``pin``, ``copy``, ``total`` (the sum of these three: the
        span from "batch ready in a worker" to "batch handed to the device") and ``normalise`` (not in ``total``),
        clock ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.thread_time``: this thread's CPU, so
        neither waits for a worker nor time the machine gave other processes); plus ``"fill"``, the wall
        seconds until the workers had every batch ready (their start included), and ``"bytes"`` of a
        batch's images.
    """
    from torch.utils.data import DataLoader

    indices = [(0, i % len(dataset)) for i in range(a.batches * a.batch_size)]
    loader = DataLoader(
        dataset,
        batch_size=a.batch_size,
        sampler=indices,
        num_workers=a.workers,
        prefetch_factor=a.batches // a.workers,
        pin_memory=False,
    )
    pin = device.type == "cuda"
    sums = {(part, clock): 0.0 for part in PARTS + ("total", "normalise") for clock in CLOCKS}
    start = time.perf_counter()
    reader = iter(loader)  # sends every index to the workers now
    sums["fill"] = wait_until_ready(reader, a.batches, start)
    batch = moved = None
    for i in range(a.batches + 1):
        marks = [now()]
        # The previous batch's last references: its shared memory is unmapped here, as in the training loop
        # when it takes the next batch (after normalise read its pages, as the trainer's does on a CPU).
        del batch, moved
        marks.append(now())
        if i < a.batches:  # after the last one only its release is left to time
            batch = next(reader)
            marks.append(now())
            if pin:
                batch = [t.pin_memory() for t in batch]
            marks.append(now())
            moved = [t.to(device, non_blocking=True) for t in batch]
            marks.append(now())
            inputs.normalise(moved[0])  # outside the hand-off: the device's work (see the module docstring)
            marks.append(now())
            sums["bytes"] = batch[0].numel() * batch[0].element_size()
        for part, (begin, end) in zip(PARTS + ("normalise",), zip(marks, marks[1:])):
            for c, clock in enumerate(CLOCKS):
                sums[part, clock] += end[c] - begin[c]
        # The span "batch ready in a worker -> handed to the device": receive, pin, copy. The release of the
        # previous batch is timed too, but lies outside it (the trainer drops a batch when its step is done).
        for c, clock in enumerate(CLOCKS):
            sums["total", clock] += marks[min(len(marks) - 1, len(PARTS))][c] - marks[1][c]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    del reader
    return sums


def now():
    """``(wall seconds, this thread's CPU seconds)``, in the order of :data:`CLOCKS`."""
    return time.perf_counter(), time.thread_time()


def wait_until_ready(reader, count, start, timeout=600.0):
    """Seconds from ``start`` until ``count`` batches wait in ``reader``'s queue (the DataLoader's own queue, read
    through its private ``_data_queue``: no public API says how many batches are ready).

    Raises:
        RuntimeError: not ready within ``timeout`` seconds (a worker died or is stuck).
    """
    while reader._data_queue.qsize() < count:
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"the workers did not fill {count} batches within {timeout:.0f} s")
        time.sleep(0.01)
    return time.perf_counter() - start


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=None, help="distinct JPEG files (default 512; --tiny 16)")
    p.add_argument("--width", type=int, default=500, help="files' width before a 0.9-1.1 jitter (pixels)")
    p.add_argument("--height", type=int, default=375, help="files' height before the jitter (pixels)")
    p.add_argument("--image_size", type=int, default=224, help="training crop side (pixels)")
    p.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="images a batch (default 128, ResNet-50's on one GPU in bench/throughput.py; --tiny 4)",
    )
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (>= 1)")
    p.add_argument(
        "--batches",
        type=int,
        default=None,
        help="timed batches per path and repeat, a multiple of --workers (default 8; --tiny 4)",
    )
    p.add_argument(
        "--worker_images", type=int, default=None, help="images timed for the per-worker rate (default 256; --tiny 8)"
    )
    p.add_argument(
        "--repeats", type=int, default=None, help="interleaved repeats; medians are shown (default 3; --tiny 1)"
    )
    p.add_argument(
        "--sharing_strategy",
        default=None,
        choices=("file_descriptor", "file_system"),
        help="torch.multiprocessing's way workers share batches (default: torch's, as the trainer)",
    )
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--tiny", action="store_true", help="smoke mode: tiny counts (see the module docstring)")
    a = p.parse_args(argv)
    for flag, full, tiny in (
        ("files", 512, 16),
        ("batch_size", 128, 4),
        ("batches", 8, 4),
        ("worker_images", 256, 8),
        ("repeats", 3, 1),
    ):
        setattr(a, flag, getattr(a, flag) if getattr(a, flag) is not None else tiny if a.tiny else full)
    for flag in (
        "files",
        "width",
        "height",
        "image_size",
        "batch_size",
        "workers",
        "batches",
        "worker_images",
        "repeats",
    ):
        if getattr(a, flag) < 1:
            p.error(f"--{flag} {getattr(a, flag)}: must be >= 1")
    try:
        a.device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        p.error(f"--device {a.device}: not a torch device (cpu, cuda, cuda:0, ...)")
    if a.device.type not in ("cpu", "cuda") or (a.device.type == "cuda" and not torch.cuda.is_available()):
        p.error(f"--device {a.device}: expected cpu, or cuda on a machine with CUDA")
    if a.batches % a.workers:
        p.error(
            f"--batches {a.batches}: must be a multiple of --workers {a.workers} (each worker's prefetch queue "
            f"holds an equal share)"
        )
    return a


def main(argv=None):
    a = parse(argv)
    device = a.device
    if a.sharing_strategy:
        torch.multiprocessing.set_sharing_strategy(a.sharing_strategy)
    inputs = InputStage(device, transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
    rates, hand_offs = {k: [] for k in PATHS}, {k: [] for k in PATHS}
    with tempfile.TemporaryDirectory() as tmp:
        jpeg_folder(tmp, a.files, a.files, a.width, a.height)
        samples = sorted(
            (os.path.join(tmp, folder, name), int(folder[len("class") :]))
            for folder in os.listdir(tmp)
            for name in os.listdir(os.path.join(tmp, folder))
        )
        megabytes = sum(os.path.getsize(path) for path, _ in samples) / 1e6
        datasets = {k: SeededSamples(ImageFiles(samples, recipe(k, a.image_size)), seed=0) for k in PATHS}
        for _ in range(a.repeats):
            for k in PATHS:  # interleaved: a slow spell of a shared machine hits both paths
                rates[k].append(worker_rate(datasets[k], a.worker_images))
                hand_offs[k].append(main_thread(datasets[k], a, device, inputs))
    report(a, device, len(samples), megabytes, rates, hand_offs)
    return 0


def report(a, device, files, megabytes, rates, hand_offs):
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    images = a.batches * a.batch_size
    print(f"command: {shlex.join([os.path.basename(sys.executable), *sys.argv])}")
    print(
        f"device: {name} ({device}), {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} intra-op threads"
    )
    print(
        f"data: {files} JPEGs, about {a.width}x{a.height}, {megabytes / files * 1000:.0f} KB on average; recipe: "
        f"rrc {a.image_size}, hflip 0.5, RandAugment 2 9"
    )
    print(
        f"setup: {a.workers} workers, batch {a.batch_size}, {a.batches} ready batches timed per path and repeat, "
        f"{a.worker_images} images per worker figure, medians of {a.repeats} repeat(s), sharing strategy "
        f"{torch.multiprocessing.get_sharing_strategy()}"
    )
    if device.type != "cuda":
        print(
            "pinning: skipped (no CUDA); the copy call is Tensor.to(cpu), a no-op; normalise runs its arithmetic "
            "on this thread"
        )
    figure = {
        k: {
            (part, clock): statistics.median(h[part, clock] for h in hand_offs[k]) / images * 1e6
            for part in PARTS + ("total", "normalise")
            for clock in CLOCKS
        }
        for k in PATHS
    }
    print(
        "\n| path | batch MB | images/s per worker | main-thread CPU us/image | main-thread wall us/image "
        "| normalise CPU us/image (not counted) | loader images/s (fill, worker start included) |\n"
        "| --- |" + " ---: |" * 6
    )
    for k in PATHS:
        fill = statistics.median(images / h["fill"] for h in hand_offs[k])
        print(
            f"| {k} | {hand_offs[k][0]['bytes'] / 1e6:.1f} | {statistics.median(rates[k]):.1f} | "
            f"{figure[k]['total', 'cpu']:.1f} | {figure[k]['total', 'wall']:.1f} | "
            f"{figure[k]['normalise', 'cpu']:.1f} | {fill:.1f} |"
        )
    print(
        "\nthe main thread's hand-off, us/image (CPU / wall):\n\n| path | "
        + " | ".join(PARTS)
        + " |\n| --- |"
        + " ---: |" * len(PARTS)
    )
    for k in PATHS:
        print(
            f"| {k} | "
            + " | ".join(f"{figure[k][part, 'cpu']:.1f} / {figure[k][part, 'wall']:.1f}" for part in PARTS)
            + " |"
        )
    result = figure["uint8"]["total", "cpu"]
    print(
        f"\nfloat32 path main-thread us per image: {figure['float32']['total', 'cpu']:.1f} (CPU), "
        f"{figure['float32']['total', 'wall']:.1f} (wall)"
    )
    print(f"uint8 path main-thread us per image: {result:.1f} (CPU), {figure['uint8']['total', 'wall']:.1f} (wall)")
    print(f"target <= 15 us per image (uint8 path, CPU): {'met' if result <= 15 else 'missed'}")
    print(f"main-thread us per image: {result:.1f}")


if __name__ == "__main__":
    sys.exit(main())
