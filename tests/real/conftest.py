"""Fixtures for the real-robot stack: a fake UR controller on a loopback address of its own,
RealSense recordings generated once per session, and a fake spacenavd socket.

Tests that need real hardware are marked `hardware` and skipped unless `--hardware` is given:
    pytest tests/real -m hardware --hardware
"""

import os
import shutil
import tempfile

import pytest

from policylab.real.testing.fake_spacenavd import FakeSpacenavd
from policylab.real.testing.fake_ur import FakeURController, free_loopback_host


def pytest_addoption(parser):
    parser.addoption("--hardware", action="store_true", default=False,
                     help="run tests marked `hardware` against a real robot, camera and SpaceMouse")


def pytest_configure(config):
    config.addinivalue_line("markers", "hardware: needs a real robot / camera / SpaceMouse (run with --hardware)")


def pytest_collection_modifyitems(config, items):
    try:
        enabled = config.getoption("--hardware")
    except ValueError:  # option registered too late (pytest run from the repository root)
        enabled = False
    skip = pytest.mark.skip(reason="needs real hardware: pytest tests/real -m hardware --hardware")
    for item in items:
        if "hardware" in item.keywords and not enabled:
            item.add_marker(skip)


@pytest.fixture
def fake_ur(tmp_path):
    """A FakeURController on a fresh 127.x.y.z, logging what it receives."""
    with FakeURController(free_loopback_host(), log_path=tmp_path / "ur_commands.jsonl") as ur:
        yield ur


@pytest.fixture(scope="session")
def recordings(tmp_path_factory):
    """Two 2-second 320x240 colour + depth recordings (camera ids 0 and 1) at 30 fps."""
    from policylab.real.testing.realsense_recording import make_recording

    pytest.importorskip("pyrealsense2")
    root = tmp_path_factory.mktemp("recordings")
    return [str(make_recording(root / f"camera_{i}", camera_id=i, n_frames=60)) for i in range(2)]


@pytest.fixture
def short_dir():
    """A short directory path: Unix socket paths are limited to 107 bytes."""
    path = tempfile.mkdtemp(prefix="pl")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def spacenavd(short_dir):
    with FakeSpacenavd(os.path.join(short_dir, "spnav.sock")) as fake:
        yield fake
