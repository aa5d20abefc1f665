"""Shared test fixtures: where the bundled demo and the shared real datasets live."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def demo_meds() -> Path:
    return DEMO / "mimic-iv-demo-meds"


@pytest.fixture(scope="session")
def demo_raw() -> Path:
    return DEMO / "mimic-iv-demo-2.2"


@pytest.fixture(scope="session")
def physionet_dir() -> Path:
    p = SHARED / "physionet-challenge-2012"
    if not p.is_dir():
        pytest.skip(f"shared PhysioNet 2012 data not found at {p}")
    return p


@pytest.fixture(scope="session")
def prepared_demo(tmp_path_factory, demo_raw, demo_meds):
    """The bundled demo prepared once per session (about 1 s)."""
    from synthehr.data import prepare

    out = tmp_path_factory.mktemp("prepared_demo")
    return prepare("mimic-iv", demo_raw, out, meds=demo_meds, progress=False)
