"""add_episode is atomic: SIGKILL a writer mid-episode and every earlier episode is intact."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from policylab.data.replay_buffer import ReplayBuffer

WRITER = textwrap.dedent("""
    import sys, numpy as np
    from policylab.data.replay_buffer import ReplayBuffer
    rb = ReplayBuffer.create_from_path(sys.argv[1], mode="a")
    i = rb.n_episodes
    while True:
        n = 500 + 37 * (i % 5)
        rb.add_episode({"obs": np.full((n, 256), i, np.float32), "step": np.arange(n, dtype=np.int64)},
                       chunks={"obs": (128, 256)}, compressors={"obs": "disk"})
        print(i, flush=True)
        i += 1
""")


def episode_length(i: int) -> int:
    return 500 + 37 * (i % 5)


@pytest.mark.parametrize("delay", [0.0, 0.003, 0.011, 0.029])
def test_sigkill_mid_append_keeps_earlier_episodes(tmp_path, delay):
    path = tmp_path / "crash.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        for _ in range(3):  # let three episodes complete, then kill inside a later one
            assert proc.stdout.readline(), "writer died early"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    rb = ReplayBuffer.create_from_path(path, mode="a")
    assert rb.n_episodes >= 3
    for i in range(rb.n_episodes):
        ep = rb.get_episode(i)
        assert ep["obs"].shape == (episode_length(i), 256)
        assert np.all(ep["obs"] == i), f"episode {i} corrupted"
        np.testing.assert_array_equal(ep["step"], np.arange(episode_length(i)))
    assert rb["obs"].shape[0] == rb.n_steps
    # and the store keeps accepting episodes after recovery
    rb.add_episode({"obs": np.zeros((3, 256), np.float32), "step": np.arange(3)})
    assert ReplayBuffer.create_from_path(path).n_episodes == rb.n_episodes
