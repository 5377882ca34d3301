"""`python -m policylab.robot_apps.rl_demos`: teleop demos -> the RL episode layout, through the one
key=value parser; re-running adds only new demos."""

import numpy as np
import pytest

from policylab.data.replay_buffer import ReplayBuffer
from policylab.rl.episodes import validate_episode
from policylab.robot_apps.rl_demos import main


def test_converts_appends_once_and_names_bad_arguments(tmp_path, capsys):
    src = ReplayBuffer.create_from_path(str(tmp_path / "demos.zarr"), mode="a")
    for n in (4, 6):
        pose = np.tile([0.4, 0.0, 0.3, 0.0, np.pi, 0.0], (n, 1)).astype(np.float32)
        target = pose + np.array([0.01, -0.03, 0.0, 0, 0, 0], np.float32)  # +0.5 / -1.5 max_delta -> clipped
        src.add_episode({"robot_eef_pose": pose, "action": target, "timestamp": np.arange(n, dtype=np.float64)})
    out = tmp_path / "rl.zarr"
    assert main([f"src={tmp_path / 'demos.zarr'}", f"out={out}", "max_delta=0.02"]) == {"added": 2, "episodes": 2}
    rl = ReplayBuffer.create_from_path(str(out), mode="r")
    episode = rl.get_episode(1, copy=True)
    validate_episode(episode)  # the RL contract holds
    assert "timestamp" not in episode and episode["action"].shape == (6, 3)
    np.testing.assert_allclose(episode["action"][0], [0.5, -1.0, 0.0], atol=1e-5)
    assert episode["reward"].tolist() == [0.0] * 5 + [1.0] and episode["terminal"].tolist() == [0] * 5 + [1]
    assert main([f"src={tmp_path / 'demos.zarr'}", f"out={out}"])["added"] == 0
    with pytest.raises(SystemExit, match="unknown key 'max_detla'"):
        main([f"src={tmp_path / 'demos.zarr'}", f"out={out}", "max_detla=0.01"])
    with pytest.raises(SystemExit, match=r"missing required argument\(s\): out="):
        main(["src=x"])
