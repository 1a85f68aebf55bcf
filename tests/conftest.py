import os

import pytest
import torch
from torch import nn

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


class TinyBackbone(nn.Module):
    """A stride-16 stand-in for the real backbones (fast model tests)."""

    name = "tiny"
    stride = 16
    out_channels = 8
    mean = (0.5, 0.5, 0.5)
    std = (0.25, 0.25, 0.25)

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 4, stride=4))

    def normalize(self, x):
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - m) / s

    def forward(self, x):
        return self.body(x)


@pytest.fixture
def tiny_backbone():
    torch.manual_seed(0)
    return TinyBackbone()


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
