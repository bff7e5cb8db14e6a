"""The export with the accounts of one deployment that test_access.py and test_credentials.py
share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ddnn.core.manifest import read_manifest
from ddnn.live.access import write_access
from ddnn.live.wire import Topics
from tests.inprocess import DEPLOYMENT


@pytest.fixture(scope="module")
def secured(plain, tmp_path_factory, request) -> tuple[Path, Topics]:
    """An export with the accounts of deployment DEPLOYMENT."""
    artifacts = tmp_path_factory.mktemp("secured") / "export"
    shutil.copytree(plain, artifacts)
    manifest = read_manifest(artifacts)
    access = write_access(
        artifacts, manifest.ddnn_config().model, DEPLOYMENT, manifest.model_version
    )
    return access, Topics(DEPLOYMENT, manifest.model_version)
