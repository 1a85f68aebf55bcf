import os

import numpy as np
import pytest
from PIL import Image
import torch
from torch import nn

from tiny_backbone import TinyBackbone  # noqa: F401  (re-exported for fixtures)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tiny_backbone():
    torch.manual_seed(0)
    return TinyBackbone()


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def tiny_willow(tmp_path):
    """A PF-WILLOW-format benchmark: 2 categories x 3 images, all ordered pairs (12)."""
    rng = np.random.default_rng(0)
    root = tmp_path / "pf-willow"
    rows = []
    for cat in ("car(G)", "duck(S)"):
        d = root / "PF-dataset" / cat
        d.mkdir(parents=True)
        names = []
        for i in range(3):
            h, w = int(rng.integers(150, 260)), int(rng.integers(150, 260))
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"img{i}.png")
            names.append((f"PF-dataset/{cat}/img{i}.png", h, w))
        for a in names:
            for b in names:
                if a != b:
                    pa = [*rng.uniform(1, a[2], 10), *rng.uniform(1, a[1], 10)]
                    pb = [*rng.uniform(1, b[2], 10), *rng.uniform(1, b[1], 10)]
                    rows.append([a[0], b[0], *pa, *pb])
    csv = root / "pairs.csv"
    with open(csv, "w") as f:
        from weakalign.data.csvio import PF_WILLOW_HEADER

        f.write(",".join(PF_WILLOW_HEADER) + "\n")
        for r in rows:
            f.write(",".join(str(v) for v in r) + "\n")
    from weakalign.data.csvio import PF_WILLOW_HEADER  # noqa: F401 (header written above)
    from weakalign.data.datasets import PFWillowDataset

    return PFWillowDataset(root=tmp_path, csv=csv)
