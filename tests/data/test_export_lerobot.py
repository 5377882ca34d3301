"""ReplayBuffer -> LeRobotDataset v3.0 folder: the layout LeRobot reads, and back through our importer.

CI has no lerobot (it pulls a CUDA torch), so the round trip through `policylab.data.importers.lerobot`
(written from the v3.0 spec) and the layout checks below carry the weight; `test_lerobot_loads_it`
runs only where lerobot is importable.
"""

import json

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from policylab.data.exporters.lerobot import export_lerobot, main
from policylab.data.importers.lerobot import import_lerobot
from policylab.data.replay_buffer import ReplayBuffer

LENGTHS = [6, 9, 5]
SIZE = 32


def frame_colour(episode: int, t: int) -> np.ndarray:
    """A flat colour per frame, so lossy video still identifies (episode, step)."""
    return np.array([30 + 70 * episode, 20 + 20 * t, 220 - 15 * t], np.uint8)


def make_store(path) -> list[dict]:
    """Diffusion Policy's PushT keys (img, state, keypoint (9, 2), action, n_contacts) plus a reward."""
    rng = np.random.default_rng(0)
    episodes = []
    with ReplayBuffer.create_from_path(path, mode="w") as buffer:
        for ep, length in enumerate(LENGTHS):
            img = np.stack([np.broadcast_to(frame_colour(ep, t), (SIZE, SIZE, 3)) for t in range(length)])
            episode = {"img": np.ascontiguousarray(img), "state": rng.normal(size=(length, 5)).astype(np.float32),
                       "keypoint": rng.normal(size=(length, 9, 2)).astype(np.float32),
                       "action": rng.uniform(0, 512, size=(length, 2)).astype(np.float32),
                       "n_contacts": rng.integers(0, 3, size=(length, 1)).astype(np.float32),
                       "reward": np.linspace(0, 1, length, dtype=np.float32)}
            buffer.add_episode(episode)
            episodes.append(episode)
    return episodes


def test_layout_is_lerobot_v3(tmp_path):
    truth = make_store(tmp_path / "s.zarr")
    out = tmp_path / "lr"
    assert main([f"store={tmp_path / 's.zarr'}", f"out={out}", "fps=10", "task_text=push it"]) == 0
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 10
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 20, 1)
    assert info["splits"] == {"train": "0:3"}
    features = info["features"]
    assert sorted(features) == ["action", "episode_index", "frame_index", "index", "next.reward",
                                "observation.images.img", "observation.keypoint", "observation.n_contacts",
                                "observation.state", "task_index", "timestamp"]
    assert features["observation.images.img"]["dtype"] == "video"
    assert features["observation.images.img"]["info"]["video.codec"] == "h264"
    assert features["observation.keypoint"]["shape"] == [9, 2] and features["next.reward"]["shape"] == [1]

    episodes = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert [e["length"] for e in episodes] == LENGTHS and all(e["tasks"] == ["push it"] for e in episodes)
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == [(0, 6), (6, 15), (15, 20)]
    assert [e["videos/observation.images.img/from_timestamp"] for e in episodes] == [0.0, 0.6, 1.5]
    tasks = pq.read_table(out / "meta" / "tasks.parquet")
    assert tasks.column("__index_level_0__").to_pylist() == ["push it"]  # pandas' index: the task string
    assert b"pandas" in tasks.schema.metadata

    data = pq.read_table(out / "data" / "chunk-000" / "file-000.parquet")
    assert data.column("index").to_pylist() == list(range(20))
    assert data.column("timestamp").to_pylist()[6:9] == pytest.approx([0.0, 0.1, 0.2])
    state_type = data.schema.field("observation.state").type
    assert pa.types.is_fixed_size_list(state_type) and state_type.list_size == 5
    assert state_type.value_type == pa.float32()
    assert data.schema.field("next.reward").type == pa.float32()  # shape (1,): a scalar column, as HF types it

    with av.open(str(out / "videos" / "observation.images.img" / "chunk-000" / "file-000.mp4")) as container:
        stream = container.streams.video[0]
        pts = [float(f.pts * stream.time_base) for f in container.decode(stream)]
    assert pts == pytest.approx([i / 10 for i in range(20)], abs=1e-6)  # frame i of the file at i / fps

    stats = json.loads((out / "meta" / "stats.json").read_text())
    action = np.concatenate([e["action"] for e in truth]).astype(np.float64)
    np.testing.assert_allclose(stats["action"]["mean"], action.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["action"]["q50"], np.quantile(action, 0.5, axis=0), rtol=1e-12)
    assert stats["action"]["count"] == [20] and np.array(stats["observation.keypoint"]["min"]).shape == (9, 2)
    assert np.array(stats["observation.images.img"]["mean"]).shape == (3, 1, 1)
    assert 0 <= np.min(stats["observation.images.img"]["min"]) <= np.max(stats["observation.images.img"]["max"]) <= 1


@pytest.mark.parametrize("images", ["video", "png"])
def test_round_trip_through_the_importer(tmp_path, images):
    truth = make_store(tmp_path / "s.zarr")
    export_lerobot(tmp_path / "s.zarr", tmp_path / "lr", images=images, progress=False)
    import_lerobot(tmp_path / "lr", tmp_path / "back.zarr", image_compressor="disk", progress=False)
    back = ReplayBuffer.create_from_path(tmp_path / "back.zarr")
    assert sorted(back.keys()) == sorted(truth[0]) and list(back.episode_lengths) == LENGTHS
    for ep, episode in enumerate(truth):
        got = back.get_episode(ep)
        for key in ("state", "keypoint", "action", "n_contacts", "reward"):
            assert got[key].dtype == episode[key].dtype
            np.testing.assert_array_equal(got[key].reshape(episode[key].shape), episode[key])
        if images == "png":
            np.testing.assert_array_equal(got["img"], episode["img"])
        else:  # each frame's colour identifies it: aligned frames, within the codec's error
            err = np.abs(got["img"].astype(int) - episode["img"].astype(int)).max()
            assert err <= 4, f"episode {ep}: max error {err}"


def test_task_view(tmp_path, capsys):
    """task=pusht_image: its keys, the agent_pos slice of state, the task's fps."""
    truth = make_store(tmp_path / "s.zarr")
    assert main([f"store={tmp_path / 's.zarr'}", f"out={tmp_path / 'lr'}", "task=pusht_image"]) == 0
    assert "observation.state                <- state" in capsys.readouterr().out
    info = json.loads((tmp_path / "lr" / "meta" / "info.json").read_text())
    assert {k: v["shape"] for k, v in info["features"].items() if not k.endswith("index") and k != "timestamp"} == {
        "observation.images.image": [SIZE, SIZE, 3], "observation.state": [2], "action": [2]}
    assert info["fps"] == 10
    data = pq.read_table(tmp_path / "lr" / "data" / "chunk-000" / "file-000.parquet")
    state = np.array(data.column("observation.state").to_pylist(), np.float32)
    np.testing.assert_array_equal(state, np.concatenate([e["state"][:, 0:2] for e in truth]))


def test_refusals(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "checkpoint=<checkpoint dir>" in capsys.readouterr().out
    make_store(tmp_path / "s.zarr")
    (tmp_path / "lr").mkdir()
    with pytest.raises(FileExistsError, match="exists; pass overwrite=true"):
        export_lerobot(tmp_path / "s.zarr", tmp_path / "lr", progress=False)
    with pytest.raises(SystemExit, match="task= or checkpoint=, not both"):
        main([f"store={tmp_path / 's.zarr'}", f"out={tmp_path / 'o'}", "task=pusht_image", "checkpoint=x"])
    with ReplayBuffer.create_from_path(tmp_path / "small.zarr", mode="w") as small:
        small.add_episode({"state": np.zeros((4, 5), np.float32), "action": np.zeros((4, 2), np.float32)})
    with pytest.raises(KeyError, match="no key 'keypoint' \\(for observation.keypoint\\)"):
        main([f"store={tmp_path / 'small.zarr'}", f"out={tmp_path / 'o'}", "task=pusht_lowdim"])
    with pytest.raises(ValueError, match="fps must be a positive integer"):
        export_lerobot(tmp_path / "s.zarr", tmp_path / "o", fps=7.5, progress=False)
    assert not (tmp_path / "o").exists() and not (tmp_path / ".partial-o").exists()


def test_lerobot_loads_it(tmp_path):
    """LeRobot's own loader, where it is installed (not in CI: it needs a CUDA torch)."""
    pytest.importorskip("lerobot")
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    truth = make_store(tmp_path / "s.zarr")
    export_lerobot(tmp_path / "s.zarr", tmp_path / "lr", progress=False)
    dataset = LeRobotDataset("policylab/export", root=tmp_path / "lr")
    assert len(dataset) == 20 and dataset.num_episodes == 3 and dataset.fps == 10
    item = dataset[8]  # episode 1, step 2
    np.testing.assert_array_equal(item["action"].numpy(), truth[1]["action"][2])
    np.testing.assert_array_equal(item["observation.keypoint"].numpy(), truth[1]["keypoint"][2])
    image = (item["observation.images.img"].numpy().transpose(1, 2, 0) * 255).round()
    assert np.abs(image - truth[1]["img"][2]).max() <= 4
