"""Two processes appending to one store: the second is refused with a clear error, not interleaved."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from policylab.common.locking import LockError
from policylab.data.replay_buffer import ReplayBuffer

GENERATOR = textwrap.dedent("""
    import sys
    import numpy as np
    from policylab.data.replay_buffer import ReplayBuffer
    rb = ReplayBuffer.create_from_path(sys.argv[1], mode="a")
    rb.add_episode({"obs": np.full((5, 2), 1.0, np.float32)})
    print("appended", flush=True)
    sys.stdin.read()
    rb.add_episode({"obs": np.full((5, 2), 1.0, np.float32)})
""")


def _start_generator(path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", GENERATOR, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "appended"
    return proc


@pytest.mark.parametrize("mode", ["a", "w"])
def test_second_writer_is_refused_while_the_first_appends(tmp_path, mode):
    path = tmp_path / "demos.zarr"
    gen = _start_generator(path)
    try:
        with pytest.raises(LockError, match=rf"store .*demos.zarr is being written by pid {gen.pid}"):
            ReplayBuffer.create_from_path(path, mode=mode)
        assert ReplayBuffer.create_from_path(path).n_episodes == 1  # readers are not locked out
    finally:
        gen.stdin.close()
        assert gen.wait(timeout=60) == 0
    with ReplayBuffer.create_from_path(path, mode="a") as rb:  # free once the first writer exits
        rb.add_episode({"obs": np.full((3, 2), 2.0, np.float32)})
        np.testing.assert_array_equal(rb.episode_ends, [5, 10, 13])
    assert not list(tmp_path.glob(".*.lock"))


def test_a_killed_writers_lock_is_recovered(tmp_path):
    path = tmp_path / "demos.zarr"
    gen = _start_generator(path)
    gen.send_signal(signal.SIGKILL)
    gen.wait(timeout=30)
    with pytest.warns(UserWarning, match="stale writer lock"):
        rb = ReplayBuffer.create_from_path(path, mode="a")
    rb.add_episode({"obs": np.zeros((2, 2), np.float32)})
    np.testing.assert_array_equal(rb.episode_ends, [5, 7])
    rb.close()
