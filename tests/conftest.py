"""Shared fixtures: tiny real image crops and the benchmark data folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Tiny test images gain nothing from threads, and on a loaded 2-core machine OpenMP threads
# spinning against each other make them many times slower.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DEEPPRIOR_DATA", REPO.parent / "shared" / "data"))


def manifest_sha(rel: str) -> str | None:
    """The sha256 MANIFEST.tsv gives for ``rel`` (e.g. 'CBM3D_color9/image_House256rgb.png')."""
    folder, name = rel.split("/", 1)
    for line in (DATA / "MANIFEST.tsv").read_text().splitlines()[1:]:
        cols = line.split("\t")
        if cols[0] == folder and cols[1] == name:
            return cols[6]
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA / "README.md").exists():
        pytest.skip(f"benchmark data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def house(data_dir) -> np.ndarray:
    """CBM3D House (256x256 RGB), float in [0, 1], checked against the manifest."""
    from deepprior import load_image

    rel = "CBM3D_color9/image_House256rgb.png"
    path = data_dir / rel
    assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest_sha(rel)
    return load_image(path).pixels


@pytest.fixture()
def rgb32(house) -> np.ndarray:
    """A 32x32 crop of a real photo."""
    return np.ascontiguousarray(house[100:132, 60:92])
