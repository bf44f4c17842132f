"""The referring yardsticks: linear probes on blind and box-pooled maps."""

from __future__ import annotations


def test_probes_find_a_planted_signal_only_where_it_is():
    """The box-oracle probe's pooling reads the cells of the true box: a class signal
    planted there is found; the blind probe, averaging 16 cells, sees it diluted."""
    import numpy as np
    import torch

    from vidattn.data.maps import MemoryMaps
    from vidattn.metrics import auroc
    from vidattn.tasks.yardsticks import fit_probe, pooled

    rng = np.random.default_rng(0)
    n, d = 120, 1024
    y = rng.random(n) < 0.5
    maps, boxes = {}, []
    for i in range(n):
        m = torch.from_numpy(rng.standard_normal((d, 1, 4, 4)).astype(np.float32))
        r, c = int(rng.integers(4)), int(rng.integers(4))
        m[:4, 0, r, c] += 3.0 if y[i] else -3.0  # the signal sits in one cell: the box's
        maps[str(i)] = m
        boxes.append([c / 4 + 0.01, r / 4 + 0.01, (c + 1) / 4 - 0.01, (r + 1) / 4 - 0.01])

    class Rows:  # what pooled() reads of a dataset
        ids = [str(i) for i in range(n)]
        channels = d
    Rows.maps = MemoryMaps(maps)
    Rows.refer = type("R", (), {"boxes": np.array(boxes, np.float32)})
    aucs = {}
    for how in ("blind", "oracle"):
        x = pooled(Rows, how)
        x = (x - x[:80].mean(0)) / (x[:80].std(0) + 1e-6)
        lin = fit_probe(x[:80], y[:80, None].astype(np.float32))
        with torch.no_grad():
            s = lin(torch.from_numpy(x[80:]).float())[:, 0].numpy()
        aucs[how] = auroc(s, y[80:])
    assert aucs["oracle"] > 0.95 and aucs["oracle"] > aucs["blind"] + 0.1, aucs
