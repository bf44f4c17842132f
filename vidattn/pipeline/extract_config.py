"""What ``vidattn extract`` is told (:class:`ExtractConfig`, one field per CLI option) and
what it derives from that before any work: the decoding settings of a dataset, the I3D and
referring extractors' configs, and the decode provenance recorded in the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vidattn.extractors import is_hub
from vidattn.spill import SPILL_BYTES

# Preprocessing a dataset is best extracted with, unless the user says otherwise.  The
# sample's frames are 128 px: upsampling them to 256 would only quadruple I3D's compute.
# ActX's datasets: full frames, as the paper's T x 8 x 11 x 1024 maps imply (Sec 4.1; see
# vidattn.protocols); the 224 centre crop would keep 7 x 7 and lose the frame's edges.
DATASET_DECODE: dict[str, dict] = {
    "sample": {"short_side": 128, "crop": None},
    **{name: {"short_side": 256, "crop": None}
       for name in ("hollywood2", "actionthread", "hacs", "hacs30")},
}
DEFAULT_DECODE = {"fps": 25.0, "short_side": 256, "crop": 224}
# decode_timeout_s of a distributed run that sets none: a hung decoder must not hold a
# worker (and its GPU) for good, and no sane clip takes 10 minutes to deliver 128 frames.
DISTRIBUTED_DECODE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ExtractConfig:
    dataset: str = "sample"
    root: str | None = None  # dataset root; None = the dataset's default location
    store: str | None = None  # path or URL; None = stores/<dataset> (sample-referring)
    extractor: str = "i3d"
    i3d_rgb: str | None = None  # None = packaged Kinetics-400 weights; "random"; or a path
    i3d_flow: str | None = None  # no packaged flow weights: None = seeded random, loudly
    streams: str = "rgb"  # "rgb", "flow" or "rgb,flow" (maps aligned in time)
    backbone: str = "inception"  # inception (I3D) | r50 (I3D R50) | pytorchvideo:NAME
    ptv_rgb: str | None = None  # a pytorchvideo:NAME backbone's .pyth checkpoint, or "random"
    endpoints: str = ""  # extra endpoints stored too, e.g. "Mixed_4f" (see two_stream.py)
    flow_method: str | None = None  # tvl1 | tvl1-torch | dis; None: by device (see flow.py)
    flow_workers: int | None = None  # OpenCV flow's processes; None: vidattn.cpus.cpu_budget
    device: str = "auto"
    fps: float | None = None  # None = a hub backbone's trained rate, the dataset's, or 25
    short_side: int | None = None
    crop: str | None = None  # "224" | "full" | None (dataset default)
    resize: str = "crop"  # crop: resample the crop's region only | frame: the whole frame
    part_size: int = 16  # videos per part (= per writer)
    retry_failed: bool = False
    keep_partial: bool = False  # store videos that decode short of their declared length
    decoder: str = "auto"  # auto (decord, then PyAV) | decord | pyav
    limit: int | None = None  # extract only the first N manifest rows (quick looks)
    options: dict = field(default_factory=dict)  # the dataset adapter's Options, key -> str
    mine: bool = True  # mine feature-based conjugates (HACS) once features are stored
    workers: int = 0  # dask: 0 = extract in this process; N = a LocalCluster of N workers
    scheduler: str | None = None  # address of a running dask scheduler (overrides workers)
    gpus_per_task: int = 0  # tag each part's task resources={"GPU": n}
    # Kill the decoding child when a chunk takes longer than this; None: no limit
    # (distributed runs: DISTRIBUTED_DECODE_TIMEOUT_S).
    decode_timeout_s: float | None = None
    # process: each part's videos decoded ahead in one child process (off the cores'
    # critical path, killable); thread: in this process, a thread ahead.
    decode_in: str = "process"
    # idle: the decoding child runs only on cores the network leaves idle (SCHED_IDLE);
    # low: at niceness +10 only (vidattn/pipeline/subdecode.py).
    decode_priority: str = "idle"
    # Decoding children per part, clips dealt round-robin (vidattn/pipeline/decodepool.py):
    # one keeps up with a CPU's network; a GPU's needs several.  auto: 1 on a CPU,
    # (cores - 2) // 2 on a GPU, at most 8 (decodepool.procs_for).
    decode_procs: int | str = "auto"
    window_steps: int | None = None  # None: I3D streams; else its window core (8-frame steps)
    trust_checkpoint: bool = False  # allow pickled checkpoints (files you trust only)
    malloc: str = "reuse"  # reuse: keep freed memory for the next chunk (vidattn/malloc.py)
    spill_mb: int = SPILL_BYTES >> 20  # a bigger map waits on disk (vidattn/spill.py)
    precision: str = "auto"  # fp32 | bf16 (autocast) | auto: bf16 on CUDA, fp32 on the CPU
    # The referring streams (RefAtomNet): detection tokens from "detr" or "annotations"
    # (the dataset's person boxes), and the referring sentence's tokens.
    detector: str | None = None
    detr: str | None = None  # facebook/detr-resnet-50 directory or detr-r50 .pth
    detr_size: int = 800  # DETR's input short side; smaller is faster on CPU
    keyframe_every: float | None = None  # seconds; None = the dataset's keyframes
    text_encoder: str | None = None  # HF directory; None = the packaged MiniLM
    text: bool | None = None  # sentence tokens; None = when detections and sentences exist

    @property
    def stream_names(self) -> tuple[str, ...]:
        """``streams`` as a tuple of names (``("none",)`` or () for no I3D stream)."""
        return tuple(s.strip() for s in self.streams.split(",") if s.strip())

    @property
    def no_i3d(self) -> bool:
        """Whether ``streams`` asks for no I3D stream (empty or ``none``)."""
        return self.stream_names in ((), ("none",))

    @property
    def distributed(self) -> bool:
        return bool(self.scheduler) or self.workers > 0

    def cluster_config(self):
        """The :class:`vidattn.cluster.ClusterConfig` of a distributed run."""
        from vidattn.cluster import ClusterConfig

        return ClusterConfig(workers=self.workers, scheduler=self.scheduler,
                             gpus_per_task=self.gpus_per_task)

    def decode_timeout(self) -> float | None:
        """The decode timeout this run uses (None: none)."""
        if self.decode_in == "thread":
            if self.decode_timeout_s is not None:
                raise ValueError("--decode-timeout kills a decoding child process: it needs "
                                 "--decode-in process")
            return None
        if self.decode_timeout_s is None and self.distributed:
            return DISTRIBUTED_DECODE_TIMEOUT_S
        return self.decode_timeout_s


def decoding_provenance(decode, min_decoded: float) -> dict:
    """The decode settings and library versions behind a store's maps."""
    from importlib.metadata import PackageNotFoundError, version

    import av

    try:  # from the metadata: importing decord maps its own FFmpeg into memory
        decord_version = version("decord")
    except PackageNotFoundError:
        decord_version = None
    return {"backend": decode.backend, "decord": decord_version, "av": av.__version__,
            "ffmpeg_libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
            "frame_rule": "output frame j shows the source frame on screen at start + j/fps",
            "display_matrix": "applied (rotated or mirrored files decode with PyAV)",
            "damaged_data": "packets skipped; index frames_lost counts their frames",
            "min_decoded": min_decoded}


def decode_config(cfg: ExtractConfig, dataset: str):
    from vidattn.video import DecodeConfig

    values = {**DEFAULT_DECODE, **DATASET_DECODE.get(dataset, {})}
    if is_hub(cfg.backbone):  # the rate the checkpoint was trained at (30 fps / stride)
        from vidattn.extractors.hub import hub_model

        values["fps"] = hub_model(cfg.backbone).fps
    if cfg.fps is not None:
        values["fps"] = cfg.fps
    if cfg.short_side is not None:
        values["short_side"] = cfg.short_side
    if cfg.crop is not None:
        values["crop"] = None if cfg.crop in ("full", "none") else int(cfg.crop)
    return DecodeConfig(**values, backend=cfg.decoder, resize=cfg.resize)


def extractor_config(cfg: ExtractConfig, device: str):
    """The I3DExtractorConfig of ``cfg`` on ``device`` (frozen and hashable: the key of
    a worker's extractor cache), or None for ``--streams none``.  The flow method is pinned
    here, where the device is known, so that an extractor built elsewhere records the same
    provenance."""
    from vidattn.extractors.flow import default_method
    from vidattn.extractors.two_stream import I3DExtractorConfig, resolve_precision

    if cfg.no_i3d:
        if cfg.detector is None:
            raise ValueError("--streams none extracts nothing without --detector/--boxes")
        return None
    endpoints = tuple(e.strip() for e in cfg.endpoints.split(",") if e.strip())
    rgb = cfg.i3d_rgb
    if is_hub(cfg.backbone):
        if cfg.i3d_rgb:
            raise ValueError(f"--backbone {cfg.backbone} takes its checkpoint from --ptv-rgb, "
                             f"not --i3d-rgb")
        rgb = cfg.ptv_rgb
    elif cfg.ptv_rgb:
        raise ValueError("--ptv-rgb is the checkpoint of a --backbone pytorchvideo:NAME")
    return I3DExtractorConfig(rgb_weights=rgb, flow_weights=cfg.i3d_flow,
                              streams=cfg.stream_names, backbone=cfg.backbone,
                              endpoints=endpoints,
                              flow_method=cfg.flow_method or default_method(device),
                              flow_workers=cfg.flow_workers,
                              device=device, window_steps=cfg.window_steps,
                              trust_checkpoint=cfg.trust_checkpoint,
                              # resolved here: a distributed run's local copy is on the CPU
                              precision=resolve_precision(cfg.precision, device))


def referring_config(cfg: ExtractConfig, device: str, sentences: bool):
    """The ReferringConfig of ``cfg`` (None without --detector/--boxes); ``sentences``:
    whether the dataset has referring sentences (the text stream's default)."""
    if cfg.detector is None:
        if cfg.text:
            raise ValueError("--text needs --detector detr or --boxes annotations")
        return None
    from vidattn.extractors.referring import ReferringConfig
    from vidattn.extractors.text import TextConfig

    detr = None
    if cfg.detector == "detr":
        from vidattn.extractors.detr import DetrConfig

        if cfg.detr is None:
            raise ValueError("--detector detr needs --detr PATH (a facebook/detr-resnet-50 "
                             "directory or a detr-r50 .pth)")
        detr = DetrConfig(checkpoint=str(Path(cfg.detr).resolve()), size=cfg.detr_size,
                          device=device, trust_checkpoint=cfg.trust_checkpoint)
    text_model = str(Path(cfg.text_encoder).resolve()) if cfg.text_encoder else None
    return ReferringConfig(boxes=cfg.detector, detr=detr,
                           text=TextConfig(model=text_model, device=device),
                           keyframe_every=cfg.keyframe_every, device=device,
                           with_text=sentences if cfg.text is None else cfg.text)
