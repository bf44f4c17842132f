"""The two-stream I3D extractor: RGB and optical-flow maps, aligned in time, of any length.

frames (N, h, w, 3) uint8 -- an array, or an iterable of such chunks as a decoder streams
them -- -> {array: (T, H, W, C) float16}.  Arrays (declared in ``stores/schema.py``):

* ``rgb`` / ``flow``: Inception I3D Mixed_5c, T = ceil(N / 8), 1024 channels;
* ``rgb_mixed_4f`` ... : extra Inception endpoints (``endpoints=("Mixed_4f",)``), for
  heads that use several stages (Mixed_4f: T = 2 ceil(N / 8), 832 channels, 1/16 size);
* ``rgb_r50`` (+ ``rgb_r50_res4`` ...): pytorchvideo's I3D R50 res5, ``backbone="r50"``,
  RGB only, T = ceil(N / 2), 2048 channels;
* ``rgb_ptv_<name>``: a pytorchvideo hub model's last stage, ``backbone="pytorchvideo:<name>"``
  (the optional extra; see ``hub.py`` for the models, their strides and windows).

Flow has N - 1 fields; the last is repeated once so the flow clip also has N frames and
its map lines up step for step with the RGB map.  Inception I3D clips are streamed through
:class:`~vidattn.extractors.stream_i3d.StreamingMaps` (each frame computed once), the other
backbones through :class:`~vidattn.extractors.windows.WindowedMaps`: both memory bounded,
equal to one pass, and padded at the end by repeating the last frame (field) to a whole
step -- the padding rule.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from vidattn.extractors import is_hub
from vidattn.extractors.hub import hub_model, load_hub, slug
from vidattn.extractors.windows import WindowedMaps, bf16_autocast

# Bump when anything that changes stored numbers changes (graph, padding, preprocessing);
# stores record it and refuse to mix versions.  2: clips padded to a whole step (windows.py).
EXTRACTOR_VERSION = 2
STREAMS = ("rgb", "flow")
BACKBONES = ("inception", "r50")
MAIN_ENDPOINT = {"inception": "Mixed_5c", "r50": "res5"}
# Input frames per output step of each endpoint that may be stored.
STRIDES = {
    "inception": {"Mixed_3c": 2, "Mixed_4f": 4, "Mixed_5c": 8},
    "r50": {"res3": 2, "res4": 2, "res5": 2},
}
# Defaults per backbone: (window_steps, margin_steps).  I3D: 256-frame windows with 56
# frames of context (Mixed_5c needs 49 each side); R50: 128 frames with 24 (it needs 17).
WINDOWS = {"inception": (32, 7), "r50": (64, 12)}


def backbone_facts(backbone: str) -> tuple[str, dict[str, int], tuple[int, int]]:
    """-> (main endpoint, {endpoint: input frames per step}, default (window, margin) steps)."""
    if is_hub(backbone):
        spec = hub_model(backbone)
        return spec.main, dict(spec.strides), spec.windows
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)} or "
                         f"pytorchvideo:NAME, got {backbone!r}")
    return MAIN_ENDPOINT[backbone], STRIDES[backbone], WINDOWS[backbone]


def array_name(stream: str, backbone: str, endpoint: str) -> str:
    """The store array holding ``endpoint`` of ``stream``: rgb, flow, rgb_mixed_4f, rgb_r50,
    rgb_ptv_x3d_m, rgb_ptv_slowfast_r50_fast..."""
    if backbone == "inception":
        base = stream
    elif is_hub(backbone):
        base = f"{stream}_{slug(backbone)}"
    else:
        base = f"{stream}_{backbone}"
    main = backbone_facts(backbone)[0]
    return base if endpoint == main else f"{base}_{endpoint.lower()}"


@dataclass(frozen=True)
class I3DExtractorConfig:
    """rgb_weights / flow_weights: None (packaged weights: Kinetics-400 for the Inception
    RGB stream; none exist for flow, which then uses seeded random weights with a loud
    warning), "random", or a checkpoint path.  streams: which modalities to compute.
    backbone: inception (I3D) | r50 (pytorchvideo's I3D R50, RGB only) | pytorchvideo:NAME
    (a hub model, RGB only; needs the extra).  endpoints: extra endpoints stored beside the
    main map (inception: Mixed_3c, Mixed_4f; r50: res3, res4; hub models: none, but
    SlowFast always stores both pathways).
    flow_method: tvl1 | tvl1-torch | dis, None = TV-L1 as the device runs it best (OpenCV
    on CPU, tvl1-torch on CUDA).  flow_workers: processes for OpenCV's flow (None: the
    cores this process may use, :func:`vidattn.cpus.cpu_budget`).  device: cpu | cuda.
    precision: fp32 | bf16 (autocast; on the CPU 1.8x faster where it has AVX512-BF16,
    maps at cosine 0.9999 to fp32) | auto (bf16 on CUDA, fp32 on the CPU).
    window_steps / margin_steps: window core and context in output steps (None = the
    backbone's default, see WINDOWS); Inception I3D streams instead, each frame once,
    unless window_steps is given (the same maps, with context recomputed).
    trust_checkpoint: load weight files that are pickles of arbitrary objects with
    ``torch.load(weights_only=False)`` (runs their code: only for files you trust; see
    vidattn/safeload.py)."""

    rgb_weights: str | None = None
    flow_weights: str | None = None
    streams: tuple[str, ...] = ("rgb",)
    backbone: str = "inception"
    endpoints: tuple[str, ...] = ()
    flow_method: str | None = None
    flow_workers: int | None = None  # OpenCV flow's processes (None: this process's cores)
    flow_bound: float = 20.0  # pixels; I3D's flow stream saw TV-L1 clipped to +-20
    device: str = "cpu"
    precision: str = "auto"
    window_steps: int | None = None
    margin_steps: int | None = None
    trust_checkpoint: bool = False


PRECISIONS = ("auto", "fp32", "bf16")


def native_cpu_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX), not emulated."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(precision: str, device: str) -> str:
    """fp32 | bf16 for ``precision`` on ``device`` (auto: bf16 on CUDA only)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


class _Net:
    """One frozen network and how to window it."""

    def __init__(self, model, to_input, backbone: str, endpoints: tuple[str, ...],
                 device: str, precision: str, rgb: bool = False):
        """rgb: the frames are uint8 RGB, so on CUDA the input is made there from them
        (device_input.py); flow fields are made into input on the host."""
        self.model, self.to_input, self.device = model, to_input, device
        self.on_device = None
        if rgb and torch.device(device).type == "cuda":
            from vidattn.extractors.device_input import DeviceInput

            self.on_device = DeviceInput(to_input, device)
        self.endpoints = endpoints
        main, strides, _ = backbone_facts(backbone)
        self.strides = {e: strides[e] for e in endpoints}
        self.unit = strides[main]
        self.precision = resolve_precision(precision, device)
        if self.precision == "bf16" and torch.device(device).type == "cpu" and not \
                native_cpu_bf16():
            # measured once: 318 s against 1.5 s for 32 frames at 224² on an AVX2-only CPU
            warnings.warn("--precision bf16: this CPU has no native bf16 (AVX512-BF16 or "
                          "AMX), so oneDNN emulates it, about 200x slower than fp32; use "
                          "--precision fp32", stacklevel=2)
        # the device type to autocast to bf16 on, or None (fp32)
        self.autocast = torch.device(device).type if self.precision == "bf16" else None

    def input(self, frames: np.ndarray) -> torch.Tensor:
        """(n, ...) frames -> (1, C, n, H, W) model input on the device (through pinned
        host memory on CUDA, so the copy can overlap work already queued; RGB on CUDA is
        made there from the uint8 frames, see device_input.py)."""
        if self.on_device is not None:
            return self.on_device(frames)
        x = torch.from_numpy(self.to_input(frames))[None]
        if str(self.device).startswith("cuda"):
            x = x.pin_memory()
        return x.to(self.device, non_blocking=True)

    def __call__(self, frames: np.ndarray) -> dict[str, torch.Tensor]:
        """(n, ...) frames -> {endpoint: (C, t, H, W)} on the device."""
        x = self.input(frames)
        with torch.no_grad(), bf16_autocast(self.autocast):
            out = self.model.features(x, self.endpoints)
        return {e: v[0] for e, v in out.items()}


def windowed_forward(model, frames, window_steps: int, margin_steps: int, device: str,
                     precision: str = "fp32", to_input=None) -> torch.Tensor:
    """Inception I3D's Mixed_5c of a clip, window by window: (1024, T, H', W') float32."""
    if to_input is None:
        from vidattn.video import to_model_input as to_input
    net = _Net(model, to_input, "inception", ("Mixed_5c",), device, precision)
    maps = WindowedMaps(net, net.unit, net.strides, window_steps, margin_steps)
    maps.push(frames)
    return torch.from_numpy(maps.finish()["Mixed_5c"]).float().permute(3, 0, 1, 2)


class I3DExtractor:
    """Frozen two-stream I3D; ``streams`` lists the store arrays it writes."""

    def __init__(self, cfg: I3DExtractorConfig):
        from vidattn.extractors.flow import AVAILABLE_METHODS, check_workers, default_method

        unknown = [s for s in cfg.streams if s not in STREAMS]
        if unknown or not cfg.streams:
            raise ValueError(f"streams must be some of {STREAMS}, got {cfg.streams}")
        main, strides, _ = backbone_facts(cfg.backbone)  # raises for unknown backbones
        if cfg.backbone != "inception" and "flow" in cfg.streams:
            raise ValueError(f"the {cfg.backbone} backbone has no flow stream (no such "
                             "checkpoint exists); use --backbone inception for flow")
        if is_hub(cfg.backbone) and cfg.endpoints:
            raise ValueError(f"{cfg.backbone} stores its last stage only (SlowFast: both "
                             f"pathways); got --endpoints {', '.join(cfg.endpoints)}")
        extra = [e for e in cfg.endpoints if e not in strides]
        if extra:
            raise ValueError(f"{cfg.backbone} endpoints that can be stored: "
                             f"{', '.join(strides)}; got {', '.join(extra)}")
        self.cfg = cfg
        self.flow_method = cfg.flow_method or default_method(cfg.device)
        if self.flow_method not in AVAILABLE_METHODS:
            raise ValueError(f"unknown flow method {self.flow_method!r}; "
                             f"available: {', '.join(AVAILABLE_METHODS)}")
        check_workers(cfg.flow_workers, "flow_workers")
        # a hub model stores all it has (SlowFast: slow, then fast)
        wanted = tuple(strides) if is_hub(cfg.backbone) else cfg.endpoints
        endpoints = (main, *[e for e in dict.fromkeys(wanted) if e != main])
        self.nets = {s: self._net(s, endpoints) for s in cfg.streams}
        # array name -> (stream, endpoint); the main map of each stream first
        self.arrays = {array_name(s, cfg.backbone, e): (s, e)
                       for s in cfg.streams for e in endpoints}
        self.streams = tuple(self.arrays)

    def _net(self, stream: str, endpoints: tuple[str, ...]) -> _Net:
        c = self.cfg
        weights = c.rgb_weights if stream == "rgb" else c.flow_weights
        if is_hub(c.backbone):
            from vidattn.extractors.i3d_r50 import to_model_input

            model = load_hub(c.backbone, weights, c.device, c.trust_checkpoint)
            return _Net(model, to_model_input, c.backbone, endpoints, c.device, c.precision,
                        rgb=True)
        if c.backbone == "r50":
            from vidattn.extractors.i3d_r50 import load_r50, to_model_input

            model = load_r50(weights, c.device, c.trust_checkpoint)
            return _Net(model, to_model_input, "r50", endpoints, c.device, c.precision,
                        rgb=True)
        from vidattn.extractors.flow import flow_to_input
        from vidattn.extractors.i3d_weights import load_i3d
        from vidattn.video import to_model_input

        to_input = to_model_input if stream == "rgb" else (
            lambda f: flow_to_input(f, c.flow_bound))
        model = load_i3d(weights, stream, c.device, c.trust_checkpoint)
        return _Net(model, to_input, "inception", endpoints, c.device, c.precision,
                    rgb=stream == "rgb")

    def provenance(self, preprocessing: dict, array: str) -> dict:
        """What made ``array``'s maps; a store refuses to mix maps of other provenance."""
        from vidattn import __version__

        stream, endpoint = self.arrays[array]
        model = self.nets[stream].model
        prep = dict(preprocessing)
        if self.cfg.backbone != "inception":  # pytorchvideo's Kinetics normalisation
            prep["scale"] = "(x/255 - 0.45) / 0.225"
        if stream == "flow":
            prep.update(flow_method=self.flow_method, flow_bound=self.cfg.flow_bound)
        if is_hub(self.cfg.backbone):
            spec = hub_model(self.cfg.backbone)
            if spec.alpha:
                prep["slow_pathway"] = f"frames[::{spec.alpha}]"
            if spec.margin is None:  # windows are exact elsewhere; X3D's maps are per clip
                prep["clip_frames"] = spec.clip
        extractor = {"inception": "i3d", "r50": "i3d-r50"}.get(self.cfg.backbone,
                                                                 self.cfg.backbone)
        return {
            "extractor": extractor,
            "extractor_version": EXTRACTOR_VERSION,
            "stream": stream,
            "endpoint": endpoint,
            "weights": model.weights_source,
            "weights_sha256": model.weights_sha256,
            "preprocessing": prep,
            # recorded, not compared: bf16 maps are at cosine 0.9999 to fp32 ones
            "precision": self.nets[stream].precision,
            "vidattn_version": __version__,
        }

    def _window_steps(self) -> tuple[int, int]:
        default_window, default_margin = backbone_facts(self.cfg.backbone)[2]
        if is_hub(self.cfg.backbone):
            if hub_model(self.cfg.backbone).margin is None:  # X3D: clip by clip, as trained
                return default_window, 0
        window = self.cfg.window_steps or default_window
        margin = default_margin if self.cfg.margin_steps is None else self.cfg.margin_steps
        return window, margin

    def _windows(self, stream: str, spill_bytes: int | None = None):
        """Inception I3D streams (each frame computed once, stream_i3d.py) unless windows
        are asked for; the other backbones run in exact windows with context."""
        net = self.nets[stream]
        if self.cfg.backbone == "inception" and self.cfg.window_steps is None:
            from vidattn.extractors.stream_i3d import StreamingMaps

            return StreamingMaps(net.model, net.input, net.endpoints, net.autocast,
                                 spill_bytes=spill_bytes)
        return WindowedMaps(net, net.unit, net.strides, *self._window_steps(),
                            spill_bytes=spill_bytes)

    def __call__(self, frames: np.ndarray | Iterable[np.ndarray],
                 arrays: tuple[str, ...] | None = None,
                 spill_bytes: int | None = None) -> dict[str, np.ndarray]:
        """frames (N, h, w, 3) uint8, whole or as an iterable of chunks -> {array: (T, H, W,
        C) float16} for ``arrays`` (default: all of this extractor's).  A map of more than
        ``spill_bytes`` comes back as a :class:`~vidattn.spill.SpilledMap` in a temporary
        file (None: every map in memory)."""
        arrays = self.streams if arrays is None else arrays
        streams = {self.arrays[a][0] for a in arrays}
        windows = {s: self._windows(s, spill_bytes) for s in streams}
        chunks = [frames] if isinstance(frames, np.ndarray) else frames
        if "flow" in windows:
            from vidattn.prefetch import prefetch

            # Flow for the next chunk is computed in a thread (OpenCV's in its processes)
            # while I3D runs on this one.
            feed = _FlowFeed(self)
            steps = prefetch(((c, feed(c)) for c in chunks), depth=1)
        else:
            steps = ((c, None) for c in chunks)
        try:
            for chunk, fields in steps:
                if "rgb" in windows:
                    windows["rgb"].push(chunk)
                if fields is not None:
                    windows["flow"].push(fields)
        finally:
            steps.close()  # a failure here stops the flow thread at once
        if "flow" in windows:
            windows["flow"].push(feed.last_field_once())
        maps = {s: w.finish() for s, w in windows.items()}
        return {a: maps[self.arrays[a][0]][self.arrays[a][1]] for a in arrays}


class _FlowFeed:
    """Frame chunks -> flow-field chunks: each chunk's flow starts from the previous chunk's
    last frame, so the fields are those of the whole clip."""

    def __init__(self, extractor: I3DExtractor):
        self.method = extractor.flow_method
        self.workers = extractor.cfg.flow_workers
        self.device = extractor.cfg.device if self.method == "tvl1-torch" else "cpu"
        self.last_frame: np.ndarray | None = None
        self.last_field: np.ndarray | None = None

    def __call__(self, chunk: np.ndarray) -> np.ndarray | None:
        from vidattn.extractors.flow import compute_flow

        if not len(chunk):
            return None
        seq = chunk if self.last_frame is None else np.concatenate([self.last_frame, chunk])
        self.last_frame = chunk[-1:]
        if len(seq) < 2:
            return None
        fields = compute_flow(seq, method=self.method, device=self.device,
                              workers=self.workers)
        self.last_field = fields[-1:]
        return fields

    def last_field_once(self) -> np.ndarray:
        """The last field again, so a clip of N frames has N fields, aligned with RGB."""
        if self.last_field is None:
            raise ValueError("the flow stream needs at least 2 frames")
        return self.last_field


def build(cfg: I3DExtractorConfig) -> I3DExtractor:
    return I3DExtractor(cfg)
