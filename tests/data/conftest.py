"""Fixtures for the data-layer tests. Nothing here touches the real data/ folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MIRROR = Path(__file__).resolve().parents[2].parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch, tmp_path):
    """No test sees the real mirror or project data unless it asks for it."""
    monkeypatch.setenv("WEAKALIGN_DATA_MIRROR", "none")
    monkeypatch.delenv("WEAKALIGN_PROJECT_ROOT", raising=False)


@pytest.fixture
def mirror_dir():
    env = os.environ.get("WEAKALIGN_TEST_MIRROR")
    m = Path(env) if env else MIRROR
    if not (m / "PF-dataset.zip").is_file():
        pytest.skip(f"offline dataset mirror not found at {m} (set WEAKALIGN_TEST_MIRROR)")
    return m
