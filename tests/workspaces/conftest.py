"""What the workspace tests share: a PushT-layout store per module."""

import pytest

from tests.helpers import make_pusht_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_pusht_store(tmp_path_factory.mktemp("data") / "pusht.zarr")

