"""Fixtures for the web-app tests: the demo prepared once, a gaussian trained on it, app factories."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web app needs the 'app' extra (fastapi, uvicorn, sqlalchemy, alembic)")
pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")
pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="session")
def demo_model_dir(prepared_demo, tmp_path_factory) -> Path:
    from synthehr.models.training import train_model

    out = tmp_path_factory.mktemp("app_models") / "gaussian"
    train_model("gaussian", prepared_demo, out)
    return out


@pytest.fixture
def make_client(tmp_path, prepared_demo, demo_model_dir):
    """make_client(data=True, token=None, **settings) → a TestClient on a fresh store in tmp_path."""
    from fastapi.testclient import TestClient

    from synthehr.app import Settings, create_app

    clients = []

    def make(data: bool = True, **kw):
        kw.setdefault("data_dir", tmp_path / "userdata")
        kw.setdefault("allowed_hosts", ["testserver", "127.0.0.1", "localhost"])
        settings = Settings(models=[demo_model_dir], data=prepared_demo.root if data else None, **kw)
        client = TestClient(create_app(settings))
        client.settings = settings
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def client(make_client):
    return make_client()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
