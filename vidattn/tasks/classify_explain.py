"""``vidattn explain`` for classify runs: a head's attention maps over the decoded frames,
as a PNG grid (one column per feature step) and an animated GIF (every frame).

The video is decoded with the preprocessing recorded in the store's provenance for the
run's stream, so pixels and feature cells line up: feature step t covers frames
f t .. f t + f - 1 (f: the array's frames per step, 8 for Mixed_5c; the centre frame is
shown) and cell (h, w) covers a patch of the array's cell size (32x32 for Mixed_5c).  Each
map is upsampled bilinearly to the frame.  Ground-truth boxes, where the dataset has them,
are drawn in green.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidattn import rows
from vidattn.data.maps import channels_first
from vidattn.stores.schema import ARRAYS

MAX_COLUMNS = 8


def attention_maps(head, fmap: torch.Tensor, device: str) -> tuple[dict[str, np.ndarray],
                                                                    np.ndarray]:
    """fmap (D, T, H, W) -> ({name: (T, H, W) map}, (K,) logits)."""
    with torch.no_grad():
        out = head(fmap[None].float().to(device))
    maps = {k: out[k][0].float().cpu().numpy() for k in getattr(head, "map_names", ())}
    return maps, out["logits"][0].cpu().numpy()


def upsample(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) map -> ``size``, bilinear (cell centres at patch centres)."""
    t = torch.from_numpy(m)[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def draw(run, head, store, video_id: str, out: str | None, device: str) -> tuple[str, str]:
    """The PNG grid and the GIF of ``video_id``'s maps -> their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vidattn.video import decode_of, load_clip

    config = run.config
    if not getattr(head, "map_names", ()):
        raise ValueError(f"head {config['head']!r} has no attention maps to explain")
    man = store.manifest().set_index("video_id")
    if video_id not in man.index:
        raise LookupError(f"{store.url}: video {video_id!r} is not in the manifest")
    fmap = store.read(video_id, config["stream"])
    maps, logits = attention_maps(head, channels_first(fmap), device)
    row = man.loc[video_id]
    prep = store.provenance(config["stream"])["preprocessing"]
    step = ARRAYS[config["stream"]].frames_per_step
    path = rows.video_path(row.path, store.dataset_root)
    start, end = rows.bound(row.start_sec), rows.bound(row.end_sec)
    clip = load_clip(path, decode_of(prep), start, end)
    frames = clip.frames
    boxes = store.boxes()
    boxes = boxes[boxes.video_id == video_id] if boxes is not None else None

    steps = np.linspace(0, fmap.shape[0] - 1, min(MAX_COLUMNS, fmap.shape[0])).round().astype(int)
    names = list(maps)
    fig, axes = plt.subplots(1 + len(names), len(steps), squeeze=False,
                             figsize=(1.8 * len(steps), 1.9 * (1 + len(names))))
    peak = {n: max(float(maps[n].max()), 1e-12) for n in names}
    for col, t in enumerate(steps):
        fi = min(step * t + step // 2, len(frames) - 1)
        img = frames[fi]
        for r in range(1 + len(names)):
            ax = axes[r, col]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if r:
                heat = upsample(maps[names[r - 1]][t] / peak[names[r - 1]], img.shape[:2])
                ax.imshow(heat, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            _draw_box(ax, boxes, fi, clip, img.shape[:2], start or 0.0)
        axes[0, col].set_title(f"t={t} (frame {fi})", fontsize=8)
    for r, name in enumerate(["frames", *names]):
        axes[r, 0].set_ylabel(name, fontsize=9)
    classes = config["classes"]
    pred = classes[int(np.argmax(logits))]
    truth = ", ".join(classes[i] for i in row.labels) or "none"
    fig.suptitle(f"{video_id}: predicted {pred} (label: {truth}) - {config['head']}",
                 fontsize=10)
    fig.tight_layout()
    png = Path(out) if out else run.path / f"explain-{video_id}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    gif = png.with_suffix(".gif")
    write_gif(gif, frames, {n: maps[n] / peak[n] for n in names}, clip.fps, step)
    return str(png), str(gif)


def write_gif(path: Path, frames: np.ndarray, maps: dict[str, np.ndarray], fps: float,
              frames_per_step: int = 8) -> None:
    """Animated GIF: each decoded frame beside its overlays (the map of its feature step).

    frames (N, h, w, 3) uint8; maps {name: (T, H, W) in [0, 1]}.  Small frames are doubled
    so the cells stay visible.
    """
    from matplotlib import colormaps
    from PIL import Image

    cmap = colormaps["inferno"]
    scale = 2 if frames.shape[1] < 200 else 1
    n_steps = next(iter(maps.values())).shape[0]
    ups = {n: [upsample(m[t], frames.shape[1:3]) for t in range(n_steps)]
               for n, m in maps.items()}
    images = []
    for j, frame in enumerate(frames):
        t = min(j // frames_per_step, n_steps - 1)
        panels = [frame.astype(np.float32)]
        for n in maps:
            heat = cmap(np.clip(ups[n][t], 0, 1))[..., :3] * 255
            panels.append(0.45 * frame + 0.55 * heat)
        strip = np.concatenate(panels, axis=1).clip(0, 255).astype(np.uint8)
        img = Image.fromarray(strip)
        if scale > 1:
            img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        images.append(img)
    images[0].save(path, save_all=True, append_images=images[1:],
                   duration=max(20, int(1000 / fps)), loop=0)


def _draw_box(ax, boxes, frame_index: int, clip, size: tuple[int, int],
              start: float) -> None:
    """Ground-truth box (normalised to the source frame) mapped into the cropped frame."""
    from matplotlib.patches import Rectangle

    if boxes is None or not len(boxes):
        return
    # boxes are indexed at the source rate; frame_index is at the resampled rate and the
    # decoder shows the source frame on screen at that time (the preceding one: floor)
    src = int(math.floor((start + frame_index / clip.fps) * clip.src_fps + 1e-6))
    hit = boxes[boxes.frame == src]
    if not len(hit):
        return
    b = hit.iloc[0]
    x1, y1, x2, y2 = clip.crop_box
    h, w = size
    bx = [((b.x1 - x1) / (x2 - x1)) * w, ((b.x2 - x1) / (x2 - x1)) * w]
    by = [((b.y1 - y1) / (y2 - y1)) * h, ((b.y2 - y1) / (y2 - y1)) * h]
    ax.add_patch(Rectangle((bx[0], by[0]), bx[1] - bx[0], by[1] - by[0], fill=False,
                           edgecolor="lime", lw=1))
