"""Shared fixtures: a throw-away project folder and its settings."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from newsletter.config import Settings, load_settings

from .support import EXAMPLE_DIGEST


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own folder, blind to the developer's settings and secrets."""
    for name in list(os.environ):
        if name.startswith("NEWSLETTER_") or name == "SENDGRID_API_KEY":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder holding the example digest, as a fresh clone would."""
    (tmp_path / "digests").mkdir()
    shutil.copy(EXAMPLE_DIGEST, tmp_path / "digests" / EXAMPLE_DIGEST.name)
    return tmp_path


@pytest.fixture
def settings(project: Path) -> Settings:
    return load_settings(
        database_url=f"sqlite:///{project / 'newsletter.db'}",
        secret_key="test-signing-key",
        config_dir=project,
    )
