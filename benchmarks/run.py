"""``make bench``: speed and memory of each stage, written to BENCHMARKS.md.

Stages: decoding (decord vs PyAV), I3D RGB and flow forward (fp32 and bf16), optical flow
(OpenCV TV-L1, DIS, the PyTorch TV-L1 and its agreement with OpenCV), end-to-end extraction
against the bare forward, peak memory on 1- and 10-minute videos, the store (write/read
throughput, compression), training steps of every head at the ActX paper's Hollywood2
setting, training from the store (streamed vs in-memory loader, peak memory under a budget,
CLI start-up; benchmarks/loader.py), the referring streams (DETR-R50, the sentence
encoder, RefAtomNet steps; benchmarks/referring.py), the referring known answer on a planted
store (benchmarks/planted_ref.py), and the whole path on the sample
store.  Most figures are the median of a few repeats after one warm-up; the extraction ones
(benchmarks/extraction.py) one timed run.
"""

from __future__ import annotations

import argparse
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import cluster  # benchmarks/cluster.py, extraction.py, referring.py, beside this script
import command
import extraction
import loader as loader_bench
import numpy as np
import planted_ref
import referring
import torch
from timing import timed

from vidattn.extractors.two_stream import native_cpu_bf16
from vidattn.malloc import malloc_mode, set_malloc

REPO = Path(__file__).resolve().parents[1]
REAL_CLIP = REPO.parent / "shared" / "data" / "activitynet_walking_the_dog.mp4"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    # The same model name has come with AVX2 only and with AVX512-BF16: say which.
    isa = torch.backends.cpu.get_cpu_capability()
    if native_cpu_bf16():
        isa += ", native bf16"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu} ({isa}), {torch.get_num_threads()} torch threads{mem}, {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}; "
            f"malloc {malloc_mode()}")


def bench_decode(rows: list) -> None:
    from vidattn.video import DecodeConfig, load_clip

    if not REAL_CLIP.is_file():
        rows.append(("decode", "skipped: shared ActivityNet clip not found", ""))
        return
    for backend in ("decord", "pyav"):
        cfg = DecodeConfig(backend=backend)
        sec = timed(lambda cfg=cfg: load_clip(REAL_CLIP, cfg, 0.0, 4.0))
        rows.append((f"decode 4 s of 480x360 30 fps -> 100 frames 224² ({backend})",
                     f"{sec * 1000:.0f} ms", f"{100 / sec:.0f} frames/s"))


def bench_store(rows: list) -> None:
    from vidattn.stores import open_store

    tmp = Path(tempfile.mkdtemp())
    try:
        rng = np.random.default_rng(0)
        # post-ReLU-like maps: half zeros, like real Mixed_5c features
        maps = {f"v{i}": np.maximum(rng.normal(size=(10, 7, 7, 1024)), 0).astype(np.float32)
                for i in range(16)}
        rows_in = [{"video_id": v, "status": "done", "error": None, "n_frames": 80, "fps": 25.0}
                   for v in maps]
        store = open_store(tmp / "s", "a")
        nbytes = sum(m.size * 2 for m in maps.values())  # float16 on disk, uncompressed
        sec_w = timed(lambda: store.write_part("rgb", 0, rows_in, maps), repeats=2)
        disk = sum(p.stat().st_size for p in (tmp / "s" / "features").rglob("*") if p.is_file())
        reader = open_store(tmp / "s")
        sec_r = timed(lambda: [reader.read(v) for v in maps], repeats=2)
        rows.append(("store write, 16 maps of 10x7x7x1024 (one part)",
                     f"{sec_w * 1000:.0f} ms", f"{nbytes / sec_w / 2**20:.0f} MiB/s"))
        rows.append(("store read, same 16 maps one by one", f"{sec_r * 1000:.0f} ms",
                     f"{nbytes / sec_r / 2**20:.0f} MiB/s"))
        rows.append(("store size on disk vs raw float16", f"{disk / 2**20:.1f} MiB",
                     f"{disk / nbytes:.2f}x (zstd)"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_sample(rows: list, device: str) -> None:
    from vidattn.datasets.sample import ensure_sample
    from vidattn.pipeline.extract import ExtractConfig
    from vidattn.pipeline.extract import run as extract
    from vidattn.pipeline.train import TrainConfig
    from vidattn.pipeline.train import run as train

    tmp = Path(tempfile.mkdtemp())
    try:
        t = time.perf_counter()
        root = ensure_sample(tmp / "sample")
        rows.append(("sample dataset generation (128 clips x 40 frames)",
                     f"{time.perf_counter() - t:.1f} s", ""))
        res = extract(ExtractConfig(root=str(root), store=str(tmp / "store"), device=device))
        rows.append(("extract the sample (decode + I3D + store)", f"{res.seconds:.1f} s",
                     f"{res.n_videos / res.seconds:.2f} videos/s"))
        for head in ("avgpool", "actx"):
            m = train(TrainConfig(head=head, store=str(tmp / "store"), out=str(tmp / head),
                                  device=device))
            rows.append((f"train {head} on the sample (40 epochs, {m['n_train']} clips)",
                         f"{m['seconds']:.1f} s", f"test mAP {m['test']['mAP']:.3f}"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_heads(rows: list, device: str, steps: int = 5) -> None:
    """Training steps/s of every head at the ActX paper's Hollywood2 setting: maps cropped to
    6x8x11x1024, batch 36, 12 classes, multi-label; and the loader's batches/s (random
    temporal crops of in-memory float16 maps -> a device tensor), which must stay >= 3x ahead.
    """
    from vidattn import tasks
    from vidattn.data.maps import MemoryMaps, channels_first, crop_start, read_crop
    from vidattn.heads.lightgbm import pooled
    from vidattn.options import parse_options
    from vidattn.registry import HEADS, head_config_class, head_trainer
    from vidattn.tasks.fit import FitConfig, optimizer
    from vidattn.tasks.rundir import build_head

    rng = np.random.default_rng(0)
    maps = MemoryMaps({str(i): channels_first(np.maximum(rng.normal(size=(12, 8, 11, 1024)), 0))
                       for i in range(72)})
    targets = (rng.random((72, 12)) < 0.15).astype(np.float32)

    def crops(idx) -> torch.Tensor:
        out = torch.empty((len(idx), 1024, 6, 8, 11))
        for row, j in zip(out, idx):
            row.copy_(read_crop(maps, str(j), crop_start(12, 6, rng), 6, (8, 11)))
        return out.to(device)

    def load_batch():
        idx = rng.choice(72, 36, replace=False)
        return crops(idx), crops((idx + 1) % 72), torch.from_numpy(targets[idx]).to(device)

    loader_conj = timed(load_batch)
    loader = timed(lambda: crops(rng.choice(72, 36, replace=False)))
    rows.append(("loader: one batch of 36 crops (6x8x11x1024)", f"{loader * 1000:.0f} ms",
                 f"{1 / loader:.1f} batches/s"))
    rows.append(("loader: 36 action + 36 conjugate crops", f"{loader_conj * 1000:.0f} ms",
                 f"{1 / loader_conj:.1f} batches/s"))
    x, c, y = load_batch()
    for name in (n for n in HEADS if tasks.for_head(n).NAME == "classify"):  # refer: referring.py
        if head_trainer(name) == "lightgbm":
            feats = np.concatenate([pooled(m[None]) for m in maps.maps.values()] * 12)[:823]
            head = build_head(name, parse_options(head_config_class(name), {},
                                                  num_classes=12, multilabel=True))
            labels = (rng.random((823, 12)) < 0.15).astype(np.float32)
            sec = timed(lambda head=head, feats=feats, labels=labels:
                        head.fit(feats, labels, feats[:100], labels[:100]), repeats=1)
            rows.append((f"fit {name} on 823 pooled 2048-d vectors, 12 classes",
                         f"{sec:.1f} s", ""))
            continue
        torch.manual_seed(0)
        head = build_head(name, parse_options(head_config_class(name), {}, num_classes=12,
                                              multilabel=True)).to(device)
        opt = optimizer(head, FitConfig(lr=1e-3))  # the fit loop's (fused) AdamW
        conj = c if head.uses_conjugates else None
        has = torch.ones(36, dtype=torch.bool, device=device)

        batch = {"fmap": x, "target": y, "conj": conj, "has_conj": has}

        def step(head=head, opt=opt, batch=batch):
            loss, _ = tasks.get("classify").loss(head, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()

        sec = timed(lambda: [step() for _ in range(steps)], repeats=1) / steps
        load = loader_conj if head.uses_conjugates else loader
        rows.append((f"train step {name} (batch 36, 6x8x11x1024, {device})",
                     f"{sec * 1000:.0f} ms",
                     f"{1 / sec:.2f} steps/s; loader {sec / load:.1f}x ahead"))


STAGES = {
    "decode": lambda rows, device: bench_decode(rows),
    "store": lambda rows, device: bench_store(rows),
    "i3d": extraction.bench_i3d_precision,
    "flow": extraction.bench_flow,
    "end-to-end": lambda rows, device: extraction.bench_end_to_end(rows, device, REAL_CLIP),
    "whole-command": lambda rows, device: command.bench_whole_command(rows, device, REAL_CLIP),
    "streaming": lambda rows, device: extraction.bench_streaming(rows, device, REAL_CLIP),
    "long-video": extraction.bench_long_video,
    "heads": bench_heads,
    "loader": loader_bench.bench_loader,
    "referring": referring.bench_referring,
    "planted": planted_ref.bench_planted,
    "sample": bench_sample,
    "cluster": lambda rows, device: cluster.bench_cluster(rows),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--only", choices=sorted(STAGES), action="append",
                    help="run only these stages (repeatable); default: all of them")
    ap.add_argument("--rounds", type=int, default=command.ROUNDS,
                    help="alternated rounds of the whole-command stage (default: %(default)s)")
    args = ap.parse_args()
    command.ROUNDS = args.rounds
    device = "cuda" if torch.cuda.is_available() else "cpu"
    set_malloc("reuse")  # as the extracting commands run (vidattn/malloc.py)
    rows: list[tuple[str, str, str]] = []
    for name, stage in STAGES.items():
        if not args.only or name in args.only:
            stage(rows, device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    rows.append(("peak RSS of the " + ("stages run" if args.only else "whole benchmark"),
                 f"{peak:.0f} MiB", ""))
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (benchmarks/run.py); medians of 3 runs after a warm-up.",
        "",
        f"## {stamp}" + (f" (only: {', '.join(args.only)})" if args.only else ""),
        "",
        f"Machine: {machine()}",
        "",
        "| what | time | rate |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
    ]
    out = Path(args.out)
    text = out.read_text() if out.is_file() else ""
    old = text.split("\n## ", 1)[1] if "\n## " in text else ""  # earlier runs stay below
    out.write_text("\n".join(lines) + (("\n## " + old) if old else ""))
    print("\n".join(lines))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
