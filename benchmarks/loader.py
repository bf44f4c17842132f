"""Training from the store: the streaming loader against the in-memory one, the peak memory
of ``train-head actx`` on a cache larger than its budget, and the start-up of the CLI.

All in the ActX paper's Hollywood2 setting: batches of 36 crops of 6 x 8 x 11 x 1024, each
action with a conjugate crop.  The store is planted (random non-negative float16 maps written
straight into parts): what is measured is reading, decoding and batching, not extraction.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

T, H, W, D = 12, 8, 11, 1024  # a Hollywood2 clip's map: ~100 frames at full frame
BATCH, CROP = 36, 6


def planted_store(path: Path, n_actions: int, n_test: int = 0, seed: int = 0,
                  distinct: int | None = None) -> str:
    """A store of ``n_actions`` train clips (each with one conjugate) and ``n_test`` test
    clips, 12 classes, multi-label, 16 videos a part; ``distinct``: draw only that many
    maps and repeat them (a large store in less time: each part is compressed anyway)."""
    from vidattn.stores import open_store

    store = open_store(path, mode="a")
    store.set_classes([f"c{k}" for k in range(12)])
    store.update_attrs({"dataset": {"name": "planted", "multilabel": True, "root": "."}})
    rng = np.random.default_rng(seed)
    rows, pairs = [], []
    for i in range(n_actions + n_test):
        vid, split = f"v{i:05d}", ("train" if i < n_actions else "test")
        labels = sorted({int(rng.integers(12)), int(rng.integers(12))})
        rows.append({"video_id": vid, "path": f"{vid}.mp4", "split": split, "labels": labels,
                     "role": "action", "group": vid, "start_sec": None, "end_sec": None,
                     "dataset": "planted"})
        if split == "train":
            rows.append({**rows[-1], "video_id": f"{vid}_c", "labels": [], "role": "conjugate"})
            pairs.append({"video_id": vid, "conjugate_id": f"{vid}_c", "rule": "planted",
                          "distance": 0.0})
    store.write_table("manifest", pd.DataFrame(rows))
    store.write_table("pairs", pd.DataFrame(pairs))
    ids = [r["video_id"] for r in rows]
    pool = [np.maximum(rng.standard_normal((T, H, W, D), np.float32), 0)
            for _ in range(distinct or 0)]
    for part, s in enumerate(range(0, len(ids), 16)):
        chunk = ids[s : s + 16]
        maps = {v: pool[(s + j) % len(pool)] if pool else
                np.maximum(rng.standard_normal((T, H, W, D), np.float32), 0)
                for j, v in enumerate(chunk)}
        store.write_part("rgb", part, [{"video_id": v, "status": "done", "error": None,
                                        "n_frames": 8 * T, "fps": 25.0} for v in chunk], maps)
    return store.url


def batches_per_s(ds, workers: int, n: int) -> float:
    """Batches/s over ``n`` batches, timed from the loader's creation (worker start-up and
    the prefetch included: nothing is read before the clock starts)."""
    from vidattn.data.dataset import epoch_draws
    from vidattn.tasks.fit import loader, to_device

    rng, draws = np.random.default_rng(0), []
    while len(draws) < n:  # epochs one after another, as training reads them
        draws += epoch_draws(ds, BATCH, rng)
    t = time.perf_counter()
    for batch in loader(ds, draws[:n], workers):
        to_device(batch, "cpu")  # float32 in the main process, as the fit loop has them
    return n / (time.perf_counter() - t)


def actx_steps_per_s(ds, device: str, n: int = 3) -> float:
    from vidattn.data.dataset import epoch_draws
    from vidattn.heads.actx import Config, build
    from vidattn.tasks import classify
    from vidattn.tasks.fit import FitConfig, loader, optimizer, to_device

    torch.manual_seed(0)
    head = build(Config(num_classes=12, multilabel=True)).to(device)
    opt = optimizer(head, FitConfig(lr=1e-3))  # the fit loop's (fused) AdamW
    batch = to_device(next(iter(loader(ds, epoch_draws(ds, BATCH, np.random.default_rng(1)),
                                       0))), device)

    def step():
        loss, _ = classify.loss(head, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t = time.perf_counter()
    for _ in range(n):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t)


def tree_pss_mib(pid: int) -> float:
    """Proportional set size of a process and its descendants (shared pages counted once
    across them), from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
            for t in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (t / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total / 1024


def run_peak(cmd: list[str]) -> tuple[float, float, int]:
    """-> (peak tree PSS MiB, seconds, exit code) of ``cmd``, sampled every 50 ms."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_pss_mib(proc.pid))
        time.sleep(0.05)
    err = proc.stderr.read().decode()
    if proc.returncode:
        print(err[-2000:], file=sys.stderr)
    return peak, time.perf_counter() - t, proc.returncode


def bench_loader(rows: list, device: str) -> None:
    """Every row of this stage: loader rates, peak memory under a budget, CLI start-up."""
    bench_rates(rows, device)
    bench_memory(rows)
    bench_startup(rows)


def bench_rates(rows: list, device: str) -> None:
    from vidattn.data.dataset import StoreDataset

    with tempfile.TemporaryDirectory() as tmp:
        url = planted_store(Path(tmp) / "hw2", 144, n_test=16)
        kw = {"val_fraction": 0.0, "crop_t": CROP, "conjugates": True}
        held = StoreDataset(url, "train", in_memory=True, **kw)
        streamed = StoreDataset(url, "train", **kw)
        mem = batches_per_s(held, 0, 24)
        step = actx_steps_per_s(held, device)
        rows.append(("loader, in memory: batch of 36 crops + 36 conjugates (6x8x11x1024)",
                     f"{1000 / mem:.0f} ms", f"{mem:.1f} batches/s"))
        for workers in (0, 1, 2):
            rate = batches_per_s(streamed, workers, 24)
            rows.append((f"loader, streamed from the Zarr store, {workers} worker processes",
                         f"{1000 / rate:.0f} ms",
                         f"{rate:.1f} batches/s = {rate / mem:.2f}x in memory, "
                         f"{rate / step:.1f}x ActX's step rate"))
        rows.append((f"ActX train step, batch 36 ({device})", f"{1000 / step:.0f} ms",
                     f"{step:.2f} steps/s"))
        exe = str(Path(sys.executable).with_name("vidattn"))
        wall = {}
        for loader_, extra in (("memory", []), ("stream", ["--workers", "2"])):
            _, wall[loader_], _ = run_peak([
                exe, "train-head", "actx", "--store", url, "--out", f"{tmp}/{loader_}",
                "--epochs", "3", "--crop-t", str(CROP), "--batch-size", str(BATCH),
                "--loader", loader_, "--device", "cpu", *extra])
        rows.append(("train-head actx, 3 epochs of 144 clips (+16 test), whole command",
                     f"{wall['stream']:.1f} s streamed (2 workers)",
                     f"{wall['memory']:.1f} s in memory: "
                     f"{wall['memory'] / wall['stream']:.2f}x"))



def bench_memory(rows: list) -> None:
    budget = 1024  # MiB
    with tempfile.TemporaryDirectory() as tmp:
        n = int(4 * budget * 2**20 / (2 * T * H * W * D)) // 2  # actions; as many conjugates
        url = planted_store(Path(tmp) / "big", n, n_test=n // 8, distinct=61)
        cache = sum(f.stat().st_size for f in Path(url).rglob("*") if f.is_file()) / 2**20
        small = planted_store(Path(tmp) / "small", 8, n_test=2)
        exe = str(Path(sys.executable).with_name("vidattn"))

        def train(store: str, *extra: str) -> tuple[float, float, int]:
            return run_peak([exe, "train-head", "actx", "--store", store, "--out",
                             f"{tmp}/run-{len(extra)}", "--epochs", "1", "--crop-t", str(CROP),
                             "--batch-size", str(BATCH), "--device", "cpu", *extra])

        base, _, _ = train(small, "--loader", "memory")
        peak, sec, rc = train(url, "--max-memory", f"{budget}MiB")
        maps = n * 2 * T * H * W * D * 2 * (1 + 1 / 16) / 2**20
        rows.append((f"train-head actx, {maps:.0f} MiB of maps ({cache:.0f} MiB on disk) "
                     f"under --max-memory {budget}MiB (streamed, workers as the budget "
                     f"allows): peak PSS of the process tree", f"{peak:.0f} MiB",
                     f"{sec:.0f} s, exit {rc}; the model alone (the same command on 18 "
                     f"clips, 39 MiB of maps, held): {base:.0f} MiB"))



def bench_startup(rows: list) -> None:
    times = []
    exe = str(Path(sys.executable).with_name("vidattn"))
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([exe, "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    bare = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t)
    rows.append(("`vidattn --help` (process start included)",
                 f"{1000 * statistics.median(times):.0f} ms",
                 f"a bare `python -c pass`: {1000 * statistics.median(bare):.0f} ms"))
