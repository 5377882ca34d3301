"""LeRobotDataset v3.0 folder -> ReplayBuffer, on a tiny dataset the test writes in that layout."""

import json
import os
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from policylab.common.config import compose
from policylab.common.logging import read_logs
from policylab.common.safe_config import check_config
from policylab.data.exporters.lerobot import main as export_main
from policylab.data.importers.common import ImportFormatError
from policylab.data.importers.lerobot import import_lerobot, main, store_key
from policylab.data.replay_buffer import ReplayBuffer
from tests.helpers import run_train

FPS = 10
LENGTHS = [10, 7, 12]
FILES = [[0, 1], [2]]  # episodes per data / video file
SIZE = 32


def frame_color(episode: int, t: int) -> np.ndarray:
    """A distinct flat colour per frame, so lossy video still tells frames apart."""
    return np.array([40 + 60 * episode, 20 + 15 * t, 200 - 10 * t], dtype=np.uint8)


def write_mp4(path: Path, frames: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("h264", rate=FPS)
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def write_dataset(root: Path, lengths=LENGTHS, version="v3.0") -> dict:
    """meta/info.json, meta/episodes, data/ and videos/ as LeRobot v3.0 lays them out."""
    rng = np.random.default_rng(0)
    truth = {}
    index = 0
    episode_rows = []
    for file_index, episodes in enumerate(FILES):
        rows = {k: [] for k in ("observation.state", "action", "next.reward", "observation.images.wrist",
                                "timestamp", "frame_index", "episode_index", "index", "task_index")}
        video = []
        for ep in episodes:
            n = lengths[ep]
            state = rng.normal(size=(n, 4)).astype(np.float32)
            action = rng.normal(size=(n, 2)).astype(np.float32)
            wrist = rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8)
            truth[ep] = {"state": state, "action": action, "wrist": wrist,
                         "front": np.stack([np.broadcast_to(frame_color(ep, t), (SIZE, SIZE, 3)) for t in range(n)])}
            from_ts = len(video) / FPS
            for t in range(n):
                rows["observation.state"].append(state[t].tolist())
                rows["action"].append(action[t].tolist())
                rows["next.reward"].append([float(t == n - 1)])
                _, png = cv2.imencode(".png", cv2.cvtColor(wrist[t], cv2.COLOR_RGB2BGR))
                rows["observation.images.wrist"].append({"bytes": png.tobytes(), "path": None})
                rows["timestamp"].append(t / FPS)
                rows["frame_index"].append(t)
                rows["episode_index"].append(ep)
                rows["index"].append(index)
                rows["task_index"].append(0)
                index += 1
                video.append(np.ascontiguousarray(truth[ep]["front"][t]))
            episode_rows.append({"episode_index": ep, "length": n, "data/chunk_index": 0,
                                 "data/file_index": file_index,
                                 "videos/observation.images.front/chunk_index": 0,
                                 "videos/observation.images.front/file_index": file_index,
                                 "videos/observation.images.front/from_timestamp": from_ts,
                                 "videos/observation.images.front/to_timestamp": from_ts + n / FPS})
        # rows of a file shuffled: the importer must order frames by frame_index itself
        order = rng.permutation(len(rows["index"]))
        table = pa.table({k: [v[i] for i in order] for k, v in rows.items()})
        (root / "data" / "chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / "data" / "chunk-000" / f"file-{file_index:03d}.parquet")
        write_mp4(root / "videos" / "observation.images.front" / "chunk-000" / f"file-{file_index:03d}.mp4", video)
    (root / "meta" / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episode_rows), root / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    info = {
        "codebase_version": version, "robot_type": "panda", "fps": FPS,
        "total_episodes": len(lengths), "total_frames": sum(lengths), "chunks_size": 1000,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
        "features": {
            "observation.state": {"dtype": "float32", "shape": [4], "names": None},
            "action": {"dtype": "float32", "shape": [2], "names": None},
            "next.reward": {"dtype": "float32", "shape": [1], "names": None},
            "observation.images.front": {"dtype": "video", "shape": [SIZE, SIZE, 3],
                                         "names": ["height", "width", "channels"]},
            "observation.images.wrist": {"dtype": "image", "shape": [8, 8, 3],
                                         "names": ["height", "width", "channels"]},
            **{k: {"dtype": "int64", "shape": [1], "names": None}
               for k in ("frame_index", "episode_index", "index", "task_index")},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=2))
    return truth


def test_store_keys():
    assert store_key("observation.images.front") == "front"
    assert store_key("observation.state") == "state"
    assert store_key("observation.environment_state") == "environment_state"
    assert store_key("next.reward") == "reward"
    assert store_key("action") == "action"


def test_round_trip(tmp_path):
    truth = write_dataset(tmp_path / "ds")
    stats = main([f"in={tmp_path / 'ds'}", f"out={tmp_path / 'out.zarr'}", "image_compressor=disk", "out_task=none"])
    assert stats["keys"]["front"] == "observation.images.front"
    rb = ReplayBuffer.create_from_path(tmp_path / "out.zarr")
    assert list(rb.episode_lengths) == LENGTHS
    assert sorted(rb.keys()) == ["action", "front", "reward", "state", "wrist"]
    assert list(rb.meta["episode_index"][:]) == [0, 1, 2]
    for ep in range(3):
        got = rb.get_episode(ep)
        np.testing.assert_array_equal(got["state"], truth[ep]["state"])
        np.testing.assert_array_equal(got["action"], truth[ep]["action"])
        np.testing.assert_array_equal(got["wrist"], truth[ep]["wrist"])  # PNG: lossless
        assert got["front"].shape == (LENGTHS[ep], SIZE, SIZE, 3)
        assert got["front"].dtype == np.uint8
        # lossy video: each frame's colour identifies it (episode, time)
        err = np.abs(got["front"].astype(int) - truth[ep]["front"].astype(int)).max()
        assert err <= 4, f"episode {ep}: frames misaligned or decoded wrong (max error {err})"
        assert got["reward"].shape == (LENGTHS[ep], 1)
        assert got["reward"][-1, 0] == 1


def test_keys_subset(tmp_path):
    write_dataset(tmp_path / "ds")
    import_lerobot(tmp_path / "ds", tmp_path / "out.zarr", keys=["observation.state", "action"], progress=False)
    assert sorted(ReplayBuffer.create_from_path(tmp_path / "out.zarr").keys()) == ["action", "state"]
    with pytest.raises(ImportFormatError, match=r"no feature\(s\) \['observation.nope'\]"):
        import_lerobot(tmp_path / "ds", tmp_path / "o2.zarr", keys=["observation.nope"], progress=False)


def test_wrong_version_and_missing_info(tmp_path):
    write_dataset(tmp_path / "ds", version="v2.1")
    with pytest.raises(ImportFormatError, match="codebase_version v2.1"):
        import_lerobot(tmp_path / "ds", tmp_path / "out.zarr", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImportFormatError, match="no meta/info.json"):
        import_lerobot(tmp_path / "empty", tmp_path / "out.zarr", progress=False)


def test_malformed_episode_and_files(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root)
    meta = root / "meta" / "episodes" / "chunk-000" / "file-000.parquet"
    rows = pq.read_table(meta).to_pylist()
    rows[1]["length"] = 99
    pq.write_table(pa.Table.from_pylist(rows), meta)
    with pytest.raises(ImportFormatError, match="episode 1: meta/episodes says length 99 but data/ has 7"):
        import_lerobot(root, tmp_path / "out.zarr", progress=False)
    assert not (tmp_path / "out.zarr").exists()  # all or nothing

    rows[1]["length"] = 7
    rows[2]["videos/observation.images.front/from_timestamp"] = 0.5  # past the 12 frames of file-001
    pq.write_table(pa.Table.from_pylist(rows), meta)
    with pytest.raises(ImportFormatError, match="12 frames, but an episode needs frames 5..16"):
        import_lerobot(root, tmp_path / "out.zarr", progress=False)

    (root / "videos" / "observation.images.front" / "chunk-000" / "file-001.mp4").unlink()
    with pytest.raises(ImportFormatError, match="file-001.mp4 is missing"):
        import_lerobot(root, tmp_path / "out.zarr", progress=False)

    table = pq.read_table(root / "data" / "chunk-000" / "file-000.parquet").drop_columns(["action"])
    pq.write_table(table, root / "data" / "chunk-000" / "file-000.parquet")
    with pytest.raises(ImportFormatError, match="missing column 'action'"):
        import_lerobot(root, tmp_path / "out.zarr", keys=["action"], progress=False)


def test_task_config_written(tmp_path, capsys):
    """The task YAML beside the import: shape_meta from info.json, the store, allow-listed targets only."""
    write_dataset(tmp_path / "ds")
    task_file = tmp_path / "cfg" / "task" / "mine.yaml"
    stats = main([f"in={tmp_path / 'ds'}", f"out={tmp_path / 'mine.zarr'}", f"out_task={task_file}"])
    assert stats["task"] == str(task_file)
    assert f"train: python train.py --config-dir {tmp_path / 'cfg'} task=mine" in capsys.readouterr().out
    cfg = compose(["task=mine", "hydra.searchpath=[file://{}]".format(tmp_path / "cfg")])
    assert cfg.task.shape_meta == {"obs": {"front": {"shape": [3, 32, 32], "type": "rgb"},
                                           "state": {"shape": [4], "type": "low_dim"},
                                           "wrist": {"shape": [3, 8, 8], "type": "rgb"}},
                                   "action": {"shape": [2]}}  # next.reward is stored, not observed
    assert cfg.task.dataset.zarr_path == str(tmp_path / "mine.zarr") and cfg.task.env_runner is None
    assert list(cfg.task.image_crop_shape) == [28, 28]
    check_config(cfg.task, "task")  # what a checkpoint carrying this task must pass

    # never replaces a task file it did not write; its own only with overwrite=true
    with pytest.raises(FileExistsError, match="exists; pass overwrite=true"):
        main([f"in={tmp_path / 'ds'}", f"out={tmp_path / 'other.zarr'}", f"out_task={task_file}"])
    task_file.write_text("name: handmade\n")
    with pytest.raises(FileExistsError, match="not written by this importer"):
        main([f"in={tmp_path / 'ds'}", f"out={tmp_path / 'other.zarr'}", f"out_task={task_file}", "overwrite=true"])
    assert not (tmp_path / "other.zarr").exists(), "refused before importing"
    with pytest.raises(SystemExit, match="folder named 'task'"):
        main([f"in={tmp_path / 'ds'}", f"out={tmp_path / 'other.zarr'}", f"out_task={tmp_path / 'x.yaml'}"])


def test_import_train_export(tmp_path):
    """import -> train.py task=<the written YAML> (debug=tiny, a few steps) -> export by checkpoint."""
    write_dataset(tmp_path / "ds")
    main([f"in={tmp_path / 'ds'}", f"out={tmp_path / 'imp.zarr'}", "keys=observation.state,action",
          f"out_task={tmp_path / 'cfg' / 'task' / 'imp.yaml'}"])
    run_dir = tmp_path / "run"
    result = run_train(["--config-dir", str(tmp_path / "cfg"), "task=imp", "debug=tiny", f"hydra.run.dir={run_dir}",
                        "logging.mode=disabled", "training.num_epochs=1", "training.max_train_steps=2",
                        "dataloader.batch_size=4", "val_dataloader.batch_size=4", "task.dataset.val_ratio=0.34"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_logs(run_dir / "logs.jsonl")[-1]["global_step"] == 2
    ckpt = run_dir / "checkpoints" / "latest"
    assert export_main([f"store={tmp_path / 'imp.zarr'}", f"out={tmp_path / 'again'}", f"checkpoint={ckpt}"]) == 0
    info = json.loads((tmp_path / "again" / "meta" / "info.json").read_text())
    assert info["features"]["observation.state"]["shape"] == [4] and info["features"]["action"]["shape"] == [2]
    assert os.path.isfile(tmp_path / "again" / "data" / "chunk-000" / "file-000.parquet")
