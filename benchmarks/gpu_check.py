"""``make gpu-check``: everything vidattn does on a GPU, measured in one short run.

On a lent H100/H200 (minutes of device time) it runs, in this order, and writes a "GPU
check" section into BENCHMARKS.md (rows are also printed as they come, so a run cut short
still reports what it measured):

1. the CUDA tests (pytest, the tests marked as needing CUDA);
2. bf16 RGB extraction of a real clip end to end, against the bare model's forward;
   then decoding alone with 1, 2, 4, 8 child processes (``--decode-procs``) and auto's count;
3. tvl1-torch on CUDA: pairs/s and its end-point error to OpenCV's TV-L1 on real frames;
4. DETR-R50 keyframes/s (fp32 and bf16);
5. ActX and RefAtomNet training steps/s.

``--quick`` runs the same code on the CPU at toy sizes (a few seconds a stage), so the tests
can run the script itself and it never rots between GPU sessions.

The lent machine has its own python3 with PyTorch and no network: ``make gpu-check
PY=python3`` runs it there without the project's venv; a stage whose packages are missing
there (zarr, PyAV, OpenCV's contrib TV-L1...) says "skipped: needs ..." and the rest run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
REAL_CLIP = REPO.parent / "shared" / "data" / "activitynet_walking_the_dog.mp4"
CUDA_TESTS = ["tests/extractors/test_tvl1_torch.py", "tests/extractors/test_windowed.py",
              "tests/extractors/test_device_input.py"]


def stage_tests(rows: list, device: str, quick: bool) -> None:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-k", "cuda", *CUDA_TESTS],
                         cwd=REPO, capture_output=True, text=True)
    last = (out.stdout.strip().splitlines() or ["no output"])[-1]
    rows.append(("CUDA tests (pytest -k cuda)", f"{time.perf_counter() - t:.0f} s",
                 f"exit {out.returncode}: {last}"))


def stage_extraction(rows: list, device: str, quick: bool) -> None:
    """The extractor (decode, I3D, float16 maps; bf16 autocast on CUDA) against the bare
    forward on the same decoded frames."""
    from vidattn.extractors.two_stream import I3DExtractor, I3DExtractorConfig
    from vidattn.pipeline.parts import extract_video
    from vidattn.video import DecodeConfig, load_clip, to_model_input

    if not REAL_CLIP.is_file():
        rows.append(("end-to-end extraction", "skipped: the shared ActivityNet clip is missing",
                     ""))
        return
    seconds = 2.0 if quick else 12.0
    decode = DecodeConfig(short_side=128, crop=112) if quick else DecodeConfig()
    meta = {"start_sec": 0.0, "end_sec": seconds}
    ex = I3DExtractor(I3DExtractorConfig(rgb_weights="random" if quick else None, device=device))
    frames = load_clip(REAL_CLIP, decode, 0.0, seconds).frames
    model = ex.nets["rgb"].model

    def bare() -> None:
        x = torch.from_numpy(to_model_input(frames))[None].to(device)
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda"):
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()

    bare()  # warm-up (cuDNN autotuning, lazy init)
    t = time.perf_counter()
    bare()
    t_bare = time.perf_counter() - t
    extract_video(ex, REAL_CLIP, decode, meta, ("rgb",))
    t = time.perf_counter()
    extract_video(ex, REAL_CLIP, decode, meta, ("rgb",))
    t_e2e = time.perf_counter() - t
    n, kind = len(frames), "bf16" if device == "cuda" else "fp32"
    rows.append((f"bare I3D forward, {n} frames ({device} {kind})", f"{t_bare:.2f} s",
                 f"{n / t_bare:.0f} frames/s"))
    rows.append((f"end-to-end RGB extraction of the same clip ({device} {kind})",
                 f"{t_e2e:.2f} s", f"{n / t_e2e:.0f} frames/s = {t_bare / t_e2e:.2f}x bare"))


# Run in a fresh interpreter with no main script: a decoding child imports the parent's
# main script (multiprocessing's rule), and this one imports torch.
_DECODING = """
import json, sys, time
from vidattn.cpus import usable_cores
from vidattn.pipeline.decodepool import feed_for, procs_for
from vidattn.pipeline.subdecode import warm_up
from vidattn.video import DecodeConfig, open_clip
clip, quick, auto = sys.argv[1], sys.argv[2] == "1", procs_for("auto", sys.argv[3])
decode = DecodeConfig(short_side=128, crop=112) if quick else DecodeConfig()
clips = [(clip, 0.0, 2.0 if quick else None)] * (2 if quick else 16)
t, n = time.perf_counter(), 0  # the plain way: in this process, no child
for path, start, end in clips:
    with open_clip(path, decode, start, end) as c:
        n += sum(len(x) for x in c.chunks(128))
print(json.dumps([0, len(clips), n, time.perf_counter() - t, False]), flush=True)
warm_up()
tried = {p for p in (1, 2, 4, 8) if p <= (2 if quick else usable_cores())}
for procs in sorted(tried if quick else tried | {auto}):
    t, n = time.perf_counter(), 0
    with feed_for(clips, decode, procs=procs, chunk_frames=128, timeout_s=600,
                  malloc="reuse", priority="low") as feed:
        feed.prefetch()
        for i in range(len(clips)):
            n += sum(len(c) for c in feed.open(i).chunks())
    print(json.dumps([procs, len(clips), n, time.perf_counter() - t, procs == auto]),
          flush=True)
"""


def stage_decoding(rows: list, device: str, quick: bool) -> None:
    """Decoding alone (224² crops of the real clip), frames/s in this process (the plain
    baseline) and with 1, 2, 4, 8 children (``--decode-procs``): how many it takes to
    keep up with the bare forward above, and the count ``--decode-procs auto`` takes on
    this machine for ``device``."""
    import json
    import os

    from vidattn.cpus import usable_cores

    if not REAL_CLIP.is_file():
        rows.append(("decoding", "skipped: the shared ActivityNet clip is missing", ""))
        return
    out = subprocess.run([sys.executable, "-c", _DECODING, str(REAL_CLIP), str(int(quick)),
                          device],
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        if "ModuleNotFoundError" in last:
            raise ImportError(last.rsplit("'", 2)[-2] if last.count("'") >= 2 else last)
        raise RuntimeError(last)
    for line in out.stdout.splitlines():
        procs, n_clips, n, sec, auto = json.loads(line)
        how = f"{procs} child process(es)" if procs else "in this process (no child)"
        how += ", --decode-procs auto here" if auto else ""
        rows.append((f"decoding only, {n_clips} clips, {how} ({usable_cores()} cores)",
                     f"{sec:.2f} s", f"{n / sec:.0f} frames/s"))


def stage_flow(rows: list, device: str, quick: bool) -> None:
    import cv2

    from vidattn.extractors.flow import compute_flow
    from vidattn.video import DecodeConfig, load_clip

    if not REAL_CLIP.is_file():
        rows.append(("tvl1-torch", "skipped: the shared ActivityNet clip is missing", ""))
        return
    size, n = (64, 3) if quick else (224, 32)
    frames = load_clip(REAL_CLIP, DecodeConfig(short_side=size, crop=size), 1.0,
                       1.0 + (n + 1) / 25).frames[: n + 1]
    compute_flow(frames[:2], method="tvl1-torch", device=device)  # warm-up
    t = time.perf_counter()
    got = compute_flow(frames, method="tvl1-torch", device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    sec = time.perf_counter() - t
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    est = cv2.optflow.DualTVL1OpticalFlow_create()
    ref = np.stack([est.calc(gray[i], gray[i + 1], None) for i in range(len(gray) - 1)])
    epe = float(np.linalg.norm(got - ref, axis=-1).mean())
    rows.append((f"tvl1-torch {size}² on {device}, batch of {len(ref)} real pairs",
                 f"{sec / len(ref) * 1000:.1f} ms/pair",
                 f"{len(ref) / sec:.1f} pairs/s; mean EPE to OpenCV TV-L1 {epe:.3f} px "
                 f"(bar: 0.25)"))


def stage_detr(rows: list, device: str, quick: bool) -> None:
    import shutil
    import tempfile

    from referring import _detr_r50

    from vidattn.extractors.detr import DetrConfig, build

    tmp = Path(tempfile.mkdtemp())
    try:
        ckpt = _detr_r50(tmp)
        k = 2 if quick else 16
        frames = np.random.default_rng(0).integers(0, 256, (k, 480, 640, 3), dtype=np.uint8)
        for amp in ((False, True) if device == "cuda" else (False,)):
            det = build(DetrConfig(checkpoint=str(ckpt), size=320 if quick else 800,
                                   device=device, amp=amp, batch_size=k))
            det(frames[:1])  # warm-up
            t = time.perf_counter()
            det(frames)
            sec = time.perf_counter() - t
            rows.append((f"DETR-R50 (random weights), {k} keyframes 640x480, "
                         f"{device} {'bf16' if amp else 'fp32'}", f"{sec / k * 1000:.0f} ms/frame",
                         f"{k / sec:.1f} keyframes/s"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stage_heads(rows: list, device: str, quick: bool) -> None:
    from referring import referring_batch

    from vidattn.heads.actx import Config, build
    from vidattn.heads.refatomnet import Config as RefConfig
    from vidattn.heads.refatomnet import build as build_ref
    from vidattn.tasks.fit import FitConfig, optimizer

    b, (t, h, w) = (4, (2, 4, 4)) if quick else (36, (6, 8, 11))
    torch.manual_seed(0)
    fmap = torch.relu(torch.randn(b, 1024, t, h, w, device=device))
    conj = torch.relu(torch.randn(b, 1024, t, h, w, device=device))
    target = (torch.rand(b, 12, device=device) < 0.15).float()
    actx = build(Config(num_classes=12, multilabel=True)).to(device)
    ref_b = 4 if quick else 128  # the paper's batch
    batch = referring_batch(ref_b, device)
    ref = build_ref(RefConfig(num_classes=80)).to(device)
    steps = {
        f"ActX train step, batch {b} of {t}x{h}x{w}x1024 + conjugates":
            (actx, lambda: actx.loss(actx(fmap), fmap, target, conj)[0], b),
        f"RefAtomNet train step, batch {ref_b} (4x7x7x1024 maps, 100 queries)":
            (ref, lambda: ref.loss(ref(batch), batch)[0], ref_b),
    }
    for label, (head, loss_fn, n) in steps.items():
        opt = optimizer(head, FitConfig(lr=1e-4))  # the fit loop's (fused) AdamW

        def step(loss_fn=loss_fn, opt=opt) -> None:
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        reps = 1 if quick else 10
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
        sec = (time.perf_counter() - t0) / reps
        rows.append((f"{label} ({device})", f"{sec * 1000:.0f} ms",
                     f"{1 / sec:.2f} steps/s, {n / sec:.0f} samples/s"))


STAGES = {"tests": stage_tests, "extraction": stage_extraction, "decoding": stage_decoding,
          "flow": stage_flow, "detr": stage_detr, "heads": stage_heads}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    ap.add_argument("--quick", action="store_true", help="CPU, toy sizes: checks the script")
    ap.add_argument("--only", choices=sorted(STAGES), action="append")
    args = ap.parse_args(argv)
    device = "cpu" if args.quick else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("gpu-check: no CUDA device here (use --quick to check the script on the CPU)",
              file=sys.stderr)
        return 2
    rows: list[tuple[str, str, str]] = []
    failed = []
    for name, stage in STAGES.items():
        if args.only and name not in args.only:
            continue
        n = len(rows)
        try:
            stage(rows, device, args.quick)
        except ImportError as e:  # a package the lent machine lacks: said, not a failure
            rows.append((f"stage {name}", "skipped", f"needs {e.name or e}"))
        except Exception as e:  # a broken stage is reported, the others still run
            failed.append(name)
            rows.append((f"stage {name}", "FAILED", f"{type(e).__name__}: {e}"[:300]))
        for row in rows[n:]:
            print(" | ".join(row), flush=True)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none (--quick, CPU)"
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = [f"## GPU check {stamp}" + (" (--quick)" if args.quick else ""), "",
               f"Device: {gpu}; torch {torch.__version__}", "", "| what | time | rate |",
               "|---|---|---|", *[f"| {a} | {b} | {c} |" for a, b, c in rows], ""]
    out = Path(args.out)
    text = out.read_text() if out.is_file() else "# Benchmarks\n"
    head, _, rest = text.partition("\n## ")
    out.write_text(head.rstrip("\n") + "\n\n" + "\n".join(section)
                   + (("\n## " + rest) if rest else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
