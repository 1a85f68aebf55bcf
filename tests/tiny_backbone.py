"""A stride-16 stand-in backbone shared by the model and training tests.

Kept out of conftest.py: tests/data has its own conftest.py, and two modules both
named ``conftest`` cannot be imported by name from the same session.
"""
import torch
from torch import nn


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
