"""The two-stream I3D extractor: RGB and optical-flow Mixed_5c maps, aligned in time.

frames (N, h, w, 3) uint8 -> {"rgb": (T, H, W, 1024), "flow": (T, H, W, 1024)} float32 with
T = ceil(N / 8) for both streams.  Flow has N - 1 fields; the last is repeated once so the
flow clip also has N frames and its map lines up step for step with the RGB map (the
last step otherwise sees one frame less).  Long clips run in windows (:func:`windowed_forward`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vidattn.extractors.i3d import I3D, load_i3d

# Bump when anything that changes stored numbers changes (graph, padding, preprocessing);
# stores record it and refuse to mix versions.
EXTRACTOR_VERSION = 1
STREAMS = ("rgb", "flow")


@dataclass(frozen=True)
class I3DExtractorConfig:
    """rgb_weights / flow_weights: None (packaged weights: Kinetics-400 for RGB; none exist
    for flow, which then uses seeded random weights with a loud warning), "random", or a
    checkpoint path.  streams: which maps to compute.  flow_method: tvl1 | dis.
    device: cpu | cuda.  amp: bf16 autocast on CUDA (ignored on CPU).
    window_steps / margin_steps: long clips run in windows of this many output steps (8
    frames each) with this much context on each side (see :func:`windowed_forward`)."""

    rgb_weights: str | None = None
    flow_weights: str | None = None
    streams: tuple[str, ...] = ("rgb",)
    flow_method: str = "tvl1"
    flow_bound: float = 20.0  # pixels; I3D's flow stream saw TV-L1 clipped to +-20
    device: str = "cpu"
    amp: bool = True
    window_steps: int = 32  # 256 frames: a window's float input stays ~150 MB at 224²
    margin_steps: int = 7  # 56 frames, beyond the 48 needed for exactness (see below)


def windowed_forward(model: I3D, frames, window_steps: int, margin_steps: int,
                     device: str, amp: bool = False, to_input=None) -> torch.Tensor:
    """Mixed_5c of a clip of any length, computed window by window, equal to one pass.

    frames: (N, ...) per-frame data, turned into a (C, n, H, W) window by ``to_input``
    (default: uint8 RGB -> [-1, 1]) -> (1024, ceil(N/8), H', W') float32 on the CPU.  Only
    one window is ever converted to float and held on the device.  Why the result equals a
    single pass (max abs diff ~1e-5, float rounding): Mixed_5c's temporal receptive field
    is 99 frames, so an output step depends on about 49 frames each side of it; every
    window carries ``margin_steps`` steps (x8 frames) of real context on both sides and
    keeps only its core steps.  TF "SAME" padding puts one frame more before the data for
    odd lengths at the three temporal strides, so windows start at multiples of 8 and their
    length is kept congruent to N modulo 8: the padding then falls exactly as in one pass.
    """
    if to_input is None:
        from vidattn.video import to_model_input as to_input
    n = len(frames)
    steps = -(-n // 8)
    use_amp = amp and device.startswith("cuda")
    cores = []
    for c0 in range(0, steps, window_steps):
        c1 = min(steps, c0 + window_steps)
        start, end = max(0, 8 * (c0 - margin_steps)), min(n, 8 * (c1 + margin_steps))
        if end < n:
            end += n % 8  # same length parity as the whole clip (see above); stays <= n
        x = torch.from_numpy(to_input(frames[start:end]))[None].to(device)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            out = model(x)[0].float()
        first = c0 - start // 8
        cores.append(out[:, first : first + (c1 - c0)].cpu())
    return torch.cat(cores, dim=1)


class I3DExtractor:
    """Frozen two-stream I3D; ``streams`` says which maps it writes."""

    def __init__(self, cfg: I3DExtractorConfig):
        unknown = [s for s in cfg.streams if s not in STREAMS]
        if unknown or not cfg.streams:
            raise ValueError(f"streams must be some of {STREAMS}, got {cfg.streams}")
        self.cfg = cfg
        self.streams = tuple(cfg.streams)
        self.models = {s: load_i3d(cfg.rgb_weights if s == "rgb" else cfg.flow_weights, s,
                                   cfg.device) for s in self.streams}

    def provenance(self, preprocessing: dict, stream: str) -> dict:
        """What made ``stream``'s maps; a store refuses to mix maps of other provenance."""
        from vidattn import __version__

        model = self.models[stream]
        prep = dict(preprocessing)
        if stream == "flow":
            prep.update(flow_method=self.cfg.flow_method, flow_bound=self.cfg.flow_bound)
        return {
            "extractor": "i3d",
            "extractor_version": EXTRACTOR_VERSION,
            "stream": stream,
            "endpoint": "Mixed_5c",
            "weights": model.weights_source,
            "weights_sha256": model.weights_sha256,
            "preprocessing": prep,
            "vidattn_version": __version__,
        }

    def __call__(self, frames: np.ndarray, streams: tuple[str, ...] | None = None
                 ) -> dict[str, np.ndarray]:
        """frames (N, h, w, 3) uint8 -> {stream: (T, H, W, 1024)} for ``streams`` (default:
        all of this extractor's)."""
        c = self.cfg
        streams = self.streams if streams is None else streams
        out = {}
        if "rgb" in streams:
            fmap = windowed_forward(self.models["rgb"], frames, c.window_steps, c.margin_steps,
                                    c.device, c.amp)
            out["rgb"] = fmap.permute(1, 2, 3, 0).numpy()
        if "flow" in streams:
            from vidattn.extractors.flow import compute_flow, flow_to_input

            if len(frames) < 2:
                raise ValueError("the flow stream needs at least 2 frames")
            flow = compute_flow(frames, method=c.flow_method)
            flow = np.concatenate([flow, flow[-1:]])  # N fields: aligned with the RGB steps
            fmap = windowed_forward(self.models["flow"], flow, c.window_steps, c.margin_steps,
                                    c.device, c.amp,
                                    to_input=lambda f: flow_to_input(f, c.flow_bound))
            out["flow"] = fmap.permute(1, 2, 3, 0).numpy()
        return out


def build(cfg: I3DExtractorConfig) -> I3DExtractor:
    return I3DExtractor(cfg)
