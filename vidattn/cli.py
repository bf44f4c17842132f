"""The ``vidattn`` command line.  Each command parses options into a config dataclass and
calls one ``pipeline.*.run(cfg)``; heavy imports happen inside commands so ``--help`` is
instant.  ``extract``, with its many options, is in cli_extract.py; the helpers the commands
share in cli_util.py."""

from __future__ import annotations

import sys

import click
from click.core import ParameterSource

from vidattn.cli_extract import extract
from vidattn.cli_util import fail, key_values


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vidattn")
def main() -> None:
    """Action recognition in video with attention: extract I3D maps once, train heads fast."""


main.add_command(extract)


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
        ds, path = pipeline.run(pipeline.ManifestConfig(dataset, root, out, key_values(options)))
    except Exception as e:
        fail(e)
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
        fail(e)
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
        fail(e)
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
                                     options=key_values(options),
                                     **(given if protocol else kw))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", pipeline.TrainingWarning)
            metrics = pipeline.run(cfg)
    except KeyboardInterrupt:
        click.echo("interrupted before the first epoch ended: nothing was written", err=True)
        sys.exit(130)
    except Exception as e:
        fail(e)
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
        fail(e)
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
        fail(e)
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
        fail(e)
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
        fail(e)
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
        fail(e)
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
        fail(e)
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
