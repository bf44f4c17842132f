"""Referring-stream benchmarks (``make bench``): DETR-R50 on keyframes, the sentence encoder,
and RefAtomNet training steps.

DETR has no shipped weights, so a full-size DETR-R50 (ResNet-50 bottlenecks [3, 4, 6, 3],
6 + 6 transformer layers, d_model 256, 100 queries) with random weights is saved by
``save_pretrained`` and loaded through the extractor: the cost is the architecture's, the
weights do not change it.  The sentence encoder is the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from timing import timed

SENTENCES = ("the person on the left in red", "the one wearing a blue shirt",
             "the man standing near the door who holds a cup",
             "the woman in the middle talking to the child on her right")


def _detr_r50(root: Path) -> Path:
    """A random full-size DETR-R50 in the save_pretrained layout; returns its directory."""
    import transformers

    from vidattn.extractors.detr import coco_labels

    torch.manual_seed(0)
    backbone = transformers.ResNetConfig(depths=[3, 4, 6, 3], layer_type="bottleneck",
                                         hidden_sizes=[256, 512, 1024, 2048],
                                         out_features=["stage4"])
    cfg = transformers.DetrConfig(backbone_config=backbone, num_queries=100,
                                  id2label=dict(enumerate(coco_labels())))
    transformers.DetrForObjectDetection(cfg).save_pretrained(root / "detr-r50")
    return root / "detr-r50"


def bench_detr(rows: list, device: str) -> None:
    from vidattn.extractors.detr import DetrConfig, build

    tmp = Path(tempfile.mkdtemp())
    try:
        ckpt = _detr_r50(tmp)
        frames = np.random.default_rng(0).integers(0, 256, (4, 480, 640, 3), dtype=np.uint8)
        amps = (False, True) if device == "cuda" else (False,)
        for size in (800, 480):
            for amp in amps:
                det = build(DetrConfig(checkpoint=str(ckpt), size=size, device=device,
                                       amp=amp, batch_size=4))
                sec = timed(lambda det=det: det(frames), repeats=2)
                kind = f"{device} {'bf16 autocast' if amp else 'fp32'}"
                rows.append((f"DETR-R50 on 4 keyframes 640x480, size {size} (batch 4, {kind})",
                             f"{sec / 4 * 1000:.0f} ms/frame", f"{4 / sec:.2f} keyframes/s"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_text(rows: list, device: str) -> None:
    from vidattn.extractors.detr import coco_labels
    from vidattn.extractors.text import TextConfig, build

    enc = build(TextConfig(device=device))
    sentences = [SENTENCES[i % len(SENTENCES)] for i in range(100)]
    sec = timed(lambda: enc.tokens(sentences))
    rows.append(("sentence tokens, 100 referring sentences (all-MiniLM-L6-v2)",
                 f"{sec * 1000:.0f} ms", f"{100 / sec:.0f} sentences/s"))
    names = coco_labels()
    sec = timed(lambda: enc.names(names))
    rows.append((f"class-name embeddings, the {len(names)} COCO names (once per store)",
                 f"{sec * 1000:.0f} ms", ""))


def referring_batch(b: int, device: str, persons: int = 4, length: int = 14) -> dict:
    """A RefAVA-like batch: (1024, 4, 7, 7) maps, ``length`` sentence tokens, 100 DETR
    queries of which ``persons`` are kept, 80 classes."""
    g = torch.Generator().manual_seed(0)
    xy = 0.6 * torch.rand(b, 100, 2, generator=g)
    wh = 0.05 + 0.35 * torch.rand(b, 100, 2, generator=g)
    corners = torch.cat([xy, xy + wh], -1)
    mask = torch.zeros(b, 100, dtype=torch.bool)
    mask[:, :persons] = True
    batch = {
        "visual": torch.relu(torch.randn(b, 1024, 4, 7, 7, generator=g)),
        "text": torch.randn(b, length, 384, generator=g),
        "text_mask": torch.ones(b, length, dtype=torch.bool),
        "det_boxes": torch.cat([xy + wh / 2, wh, corners], -1),
        "det_emb": torch.randn(b, 100, 384, generator=g), "det_mask": mask,
        "det_scores": torch.rand(b, 100, generator=g),
        "labels": (torch.rand(b, 80, generator=g) < 0.05).float(), "box": corners[:, 0],
    }
    return {k: v.to(device) for k, v in batch.items()}


def bench_refatomnet(rows: list, device: str, steps: int = 4) -> None:
    from vidattn.options import parse_options
    from vidattn.registry import head_config_class
    from vidattn.tasks.fit import FitConfig, optimizer
    from vidattn.tasks.rundir import build_head

    batch = referring_batch(16, device)
    # the other ablations (noloc, nocaaf, nocatf) cost what the full model costs
    for name in ("refatomnet", "refatomnet-add", "refatomnet-concat"):
        torch.manual_seed(0)
        head = build_head(name, parse_options(head_config_class(name), {}, num_classes=80,
                                              multilabel=True)).to(device)
        opt = optimizer(head, FitConfig(lr=1e-4))  # the fit loop's (fused) AdamW

        def step(head=head, opt=opt):
            loss, _ = head.loss(head(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()

        sec = timed(lambda: [step() for _ in range(steps)], repeats=1) / steps
        params = sum(p.numel() for p in head.parameters()) / 1e6
        rows.append((f"train step {name} (batch 16, 4x7x7x1024 map, 14 words, 100 queries, "
                     f"{device})", f"{sec * 1000:.0f} ms",
                     f"{16 / sec:.0f} samples/s; {params:.1f}M parameters"))


def bench_referring(rows: list, device: str) -> None:
    bench_detr(rows, device)
    bench_text(rows, device)
    bench_refatomnet(rows, device)
