"""Yardsticks for referring runs: what a linear probe gets without the sentence, and with the
referred person's true box (an oracle), on the same store and split.

Both pool each row's whole map to one 1024-d vector -- over every cell (``blind``: the
sentence and the detections are never read), or over the cells whose centres lie in the
ground-truth box (``oracle``: the nearest cell when none does) -- standardise it with the
train split's statistics, and fit one L2-regularised logistic regression per class on the
train split (full-batch L-BFGS).  ``compare`` prints them beside the heads: a referring
head that uses the sentence should beat the blind probe; the oracle shows what knowing
the person exactly would give.
"""

from __future__ import annotations

import numpy as np
import torch

from vidattn import metrics as M
from vidattn.data.dataset import StoreDataset, labelled_ids

# (name in tables, pooling)
PROBES = (("yardstick: sentence-blind linear probe", "blind"),
          ("oracle: linear probe pooled over the true box", "oracle"))
L2 = 1e-2  # weight decay of the probes (features are standardised)


def pooled(ds: StoreDataset, how: str) -> np.ndarray:
    """(N, D) mean of each row's map over all cells ("blind") or its true box ("oracle")."""
    out = []
    for i, vid in enumerate(ds.ids):
        m = ds.maps.read(vid).float()  # (D, T, H, W)
        if how == "oracle":
            h, w = m.shape[2:]
            x1, y1, x2, y2 = (float(v) for v in ds.refer.boxes[i])
            ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
            iy = np.flatnonzero((ys >= y1) & (ys <= y2))
            ix = np.flatnonzero((xs >= x1) & (xs <= x2))
            iy = iy if len(iy) else [int(np.abs(ys - (y1 + y2) / 2).argmin())]
            ix = ix if len(ix) else [int(np.abs(xs - (x1 + x2) / 2).argmin())]
            m = m[:, :, iy][:, :, :, ix]
        out.append(m.mean(dim=(1, 2, 3)).numpy())
    return np.stack(out) if out else np.zeros((0, ds.channels), np.float32)


def fit_probe(x: np.ndarray, y: np.ndarray, steps: int = 200) -> torch.nn.Linear:
    """One logistic regression per column of ``y`` (N, K) on standardised ``x`` (N, D)."""
    torch.manual_seed(0)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    lin = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(lin(xt), yt)
        loss = loss + L2 * lin.weight.pow(2).sum() / len(xt)
        loss.backward()
        return loss

    opt.step(closure)
    return lin


def probe_rows(store, stream: str, split: str, min_score: float) -> list[dict]:
    """The two probes' RefAVA figures on ``split`` (mAP, AUROC on raw scores), trained on
    the train split (rows as the referring heads see them)."""
    man = store.manifest()
    kw = {"stream": stream, "task": "refer", "min_score": min_score}
    train = StoreDataset(store, ids=labelled_ids(man, "train"), desc="probe train", **kw)
    test = StoreDataset(store, ids=labelled_ids(man, split), desc=f"probe {split}", **kw)
    if not len(train) or not len(test):
        return []
    rows = []
    for name, how in PROBES:
        xtr, xte = pooled(train, how), pooled(test, how)
        mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
        lin = fit_probe((xtr - mu) / sd, train.targets)
        with torch.no_grad():
            scores = torch.sigmoid(lin(torch.from_numpy((xte - mu) / sd).float())).numpy()
        res = M.refava_metrics(scores, test.targets, np.zeros((len(test), 4)),
                               test.refer.boxes)
        rows.append({"method": name, "run": "", "stream": stream,
                     "params": lin.weight.numel() + lin.bias.numel(),
                     "mAP": res["mAP"], "AUROC": res["AUROC"]})
    return rows
