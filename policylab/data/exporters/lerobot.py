"""Export a ReplayBuffer store to a local LeRobotDataset v3.0 folder, which LeRobot >= 0.4 loads
with `LeRobotDataset(repo_id=<any name>, root=<folder>)`.

    python -m policylab.data.exporters.lerobot store=<store> out=<folder>
        [task=<task config name> | checkpoint=<checkpoint dir>] [fps=10] [images=video|png]
        [task_text="Push the T onto the target."] [robot_type=...] [crf=10] [overwrite=false]

Which arrays, and their LeRobot names:
- no task: every store key. Image keys (N, H, W, C) -> `observation.images.<key>`, `action` ->
  `action`, `reward`/`done`/`success` -> `next.<key>`, anything else -> `observation.<key>`.
  Importing the folder back (`policylab.data.importers.lerobot`) gives the same keys and arrays
  (low-dim exactly; images within the video codec's error, or exactly with images=png).
- task=<name> (a config/task/ name) or checkpoint=<dir> (the task in its config.yaml): the data as
  that task reads it. Its rgb obs -> `observation.images.<name>`; its low-dim obs ->
  `observation.state` when there is one (the key LeRobot's policies read), else
  `observation.<name>`; `index: [a, b]` slices are applied; the action -> `action`. The frame rate
  is the task's `env_runner.fps` unless fps= is given.

Layout written (LeRobot's v3.0 format, the same the importer reads):

    meta/info.json        codebase_version v3.0, fps, features (+ video info), totals, path templates
    meta/stats.json       per feature min/max/mean/std/count (+ q01..q99 for low-dim); images per
                          channel in [0, 1], shape (3, 1, 1), over at most 256 evenly spaced frames
    meta/tasks.parquet    the one task string (index) -> task_index 0
    meta/episodes/chunk-000/file-000.parquet   per episode: length, tasks, data and video file
                          indices, dataset_from/to_index, videos/<key>/from/to_timestamp
    data/chunk-000/file-000.parquet            per frame: low-dim features (+ PNG images with
                          images=png), timestamp, frame_index, episode_index, index, task_index
    videos/<key>/chunk-000/file-000.mp4        the episodes' frames back to back

Videos are H.264 (LeRobot records AV1 by default; every FFmpeg-based decoder reads both), a
keyframe every 2 frames as LeRobot writes them (random access decodes at most one extra frame),
yuv420p (yuv444p for odd sizes), frame i of a file at pts i/fps. Data and video files roll over
to the next file at LeRobot's default sizes (100 MB of rows, 200 MB of video). The folder is
written under a hidden name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import tqdm

from policylab.common.extras import require
from policylab.common.overrides import MISSING, parse_overrides
from policylab.common.shape_meta import ShapeMeta
from policylab.data.inspect import is_image, key_stats, to_uint8_rgb
from policylab.data.replay_buffer import ReplayBuffer

PROG = "policylab.data.exporters.lerobot"
CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory
DATA_FILE_MB, VIDEO_FILE_MB = 100, 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
NEXT_KEYS = ("reward", "done", "success")  # per-step outcomes: LeRobot's next.* features
BOOKKEEPING = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64",
               "index": "int64", "task_index": "int64"}
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


@dataclasses.dataclass
class ExportConfig:
    store: str = MISSING
    out: str = MISSING
    task: str | None = None
    checkpoint: str | None = None
    fps: int | None = None
    images: str = "video"
    task_text: str | None = None
    robot_type: str | None = None
    crf: int = 10
    overwrite: bool = False


@dataclasses.dataclass(frozen=True)
class Column:
    """One LeRobot feature: the store array it comes from, optionally a slice of its last axis."""

    feature: str
    zarr_key: str
    image: bool
    index: tuple[int, int] | None = None

    def values(self, episode: dict[str, np.ndarray]) -> np.ndarray:
        """(L, H, W, 3) uint8 for images, else (L, *shape) with shape (1,) for per-step scalars."""
        value = np.asarray(episode[self.zarr_key])
        if self.image:
            return to_uint8_rgb(value)
        if self.index is not None:
            value = value[..., self.index[0]:self.index[1]]
        return value.reshape(len(value), 1) if value.ndim == 1 else value


def default_feature(key: str, image: bool) -> str:
    """The LeRobot name of store key `key` (the importer's `store_key` maps it back)."""
    if image:
        return f"observation.images.{key}"
    if key == "action":
        return key
    return f"next.{key}" if key in NEXT_KEYS else f"observation.{key}"


def plan_columns(buffer: ReplayBuffer, shape_meta: ShapeMeta | None = None) -> list[Column]:
    """The features to export: every store key, or what `shape_meta` reads (see the module docstring)."""
    if shape_meta is None:
        columns = [Column(default_feature(k, is_image(tuple(buffer.data[k].shape))), k,
                          is_image(tuple(buffer.data[k].shape))) for k in sorted(buffer.keys())]
    else:
        low_dim = shape_meta.low_dim_keys
        columns = [Column(f"observation.images.{name}" if spec.is_rgb else
                          ("observation.state" if len(low_dim) == 1 else f"observation.{name}"),
                          spec.zarr_key, spec.is_rgb, spec.index) for name, spec in shape_meta.obs.items()]
        if shape_meta.action_shape is not None:
            columns.append(Column("action", shape_meta.action_zarr_key, False))
    for column in columns:
        if column.zarr_key not in buffer:
            raise KeyError(f"the store has no key {column.zarr_key!r} (for {column.feature}); it has {sorted(buffer.keys())}")
        if column.image and not is_image(tuple(buffer.data[column.zarr_key].shape)):
            raise ValueError(f"data/{column.zarr_key} is {buffer.data[column.zarr_key].shape}, not (N, H, W, C) images")
    return columns


def feature_spec(column: Column, sample: np.ndarray, fps: int, images: str) -> dict:
    """info.json's entry for `column`, given one episode's values `sample` (L, ...)."""
    shape = list(sample.shape[1:])
    if not column.image:
        return {"dtype": str(sample.dtype), "shape": shape, "names": None}
    codec = video_codec(shape)
    spec = {"dtype": "video" if images == "video" else "image", "shape": shape,
            "names": ["height", "width", "channels"]}
    if images == "video":
        spec["info"] = {"video.height": shape[0], "video.width": shape[1], "video.codec": codec[0],
                        "video.pix_fmt": codec[1], "video.is_depth_map": False, "video.fps": fps,
                        "video.channels": 3, "has_audio": False}
    return spec


def feature_stats(buffer: ReplayBuffer, column: Column, shape: list[int]) -> dict:
    """stats.json's entry: low-dim exact over every step (with quantiles), images per channel in [0, 1]."""
    arr = buffer.data[column.zarr_key]
    if column.image:
        stats = key_stats(arr, buffer.n_steps)
        high = 255.0 if arr.dtype == np.uint8 or stats["max"].max() > 1.0 else 1.0
        out = {k: (stats[k][:3] / high).reshape(3, 1, 1) for k in ("min", "max", "mean", "std")}
        return {**{k: v.tolist() for k, v in out.items()}, "count": [int(stats["samples"])]}
    values = column.values({column.zarr_key: arr[: buffer.n_steps]}).astype(np.float64)
    out = {"min": values.min(0), "max": values.max(0), "mean": values.mean(0), "std": values.std(0)}
    out |= {f"q{round(q * 100):02d}": np.quantile(values, q, axis=0) for q in QUANTILES}
    return {**{k: v.reshape(shape).tolist() for k, v in out.items()}, "count": [buffer.n_steps]}


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == CHUNKS_SIZE - 1 else (chunk, file + 1)


class VideoFiles:
    """One video feature's mp4 files: episodes appended back to back, a new file past VIDEO_FILE_MB."""

    def __init__(self, root: Path, feature: str, fps: int, crf: int):
        self.root, self.feature, self.fps, self.crf = root, feature, fps, crf
        self.chunk, self.file, self.container, self.n_frames = 0, 0, None, 0

    @property
    def path(self) -> Path:
        return self.root / VIDEO_PATH.format(video_key=self.feature, chunk_index=self.chunk, file_index=self.file)

    def add(self, frames: np.ndarray) -> dict:
        """Append (L, H, W, 3) uint8 frames; -> this episode's `videos/<feature>/...` entries."""
        import av

        if self.container is not None and self.path.stat().st_size > VIDEO_FILE_MB * 2**20:
            self.close()
            self.chunk, self.file = _next_file(self.chunk, self.file)
        if self.container is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.container = av.open(str(self.path), mode="w", format="mp4")
            self.stream = self.container.add_stream("libx264", rate=self.fps)
            self.stream.height, self.stream.width = frames.shape[1:3]
            self.stream.pix_fmt = video_codec(frames.shape[1:3])[1]
            self.stream.codec_context.time_base = Fraction(1, self.fps)
            self.stream.options = {"crf": str(self.crf), "g": "2"}
            self.n_frames = 0
        start = self.n_frames
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts, video_frame.time_base = self.n_frames, Fraction(1, self.fps)
            self.container.mux(self.stream.encode(video_frame))
            self.n_frames += 1
        prefix = f"videos/{self.feature}/"
        return {prefix + "chunk_index": self.chunk, prefix + "file_index": self.file,
                prefix + "from_timestamp": start / self.fps, prefix + "to_timestamp": self.n_frames / self.fps}

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode(None))
            self.container.close()
            self.container = None


def video_codec(size) -> tuple[str, str]:
    """(codec, pix_fmt): yuv420p needs even sizes."""
    return ("h264", "yuv420p" if size[0] % 2 == 0 and size[1] % 2 == 0 else "yuv444p")


class DataFiles:
    """The per-frame parquet files: episodes' rows gathered, a new file past DATA_FILE_MB."""

    def __init__(self, root: Path, features: dict):
        self.root, self.features = root, features
        self.chunk, self.file, self.rows, self.nbytes = 0, 0, [], 0

    def add(self, columns: dict[str, np.ndarray]) -> dict:
        """Append one episode's columns {feature: (L, ...)}; -> its `data/...` entries."""
        size = sum(v.nbytes if isinstance(v, np.ndarray) else sum(len(b) for b in v) for v in columns.values())
        if self.rows and self.nbytes + size > DATA_FILE_MB * 2**20:
            self.flush()
            self.chunk, self.file = _next_file(self.chunk, self.file)
        self.rows.append(columns)
        self.nbytes += size
        return {"data/chunk_index": self.chunk, "data/file_index": self.file}

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.rows:
            return
        arrays = {name: _arrow(name, [r[name] for r in self.rows], self.features[name]) for name in self.rows[0]}
        path = self.root / DATA_PATH.format(chunk_index=self.chunk, file_index=self.file)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(arrays), path)
        self.rows, self.nbytes = [], 0


def _arrow(name: str, parts: list, spec: dict):
    """One parquet column as HF `datasets` types it from LeRobot's features: shape (1,) a scalar,
    (D,) a fixed-size list, (A, B, ...) nested fixed-size lists, images {bytes, path} structs."""
    import pyarrow as pa

    if spec["dtype"] == "image":
        blobs = [b for part in parts for b in part]
        return pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array([None] * len(blobs), pa.string())],
                                          names=["bytes", "path"])
    values = np.concatenate(parts)
    if list(spec["shape"]) == [1]:
        return pa.array(values.reshape(-1))
    array = pa.array(values.reshape(-1))
    for size in reversed(spec["shape"]):
        array = pa.FixedSizeListArray.from_arrays(array, int(size))
    return array


def _png(frames: np.ndarray) -> list[bytes]:
    import cv2

    return [cv2.imencode(".png", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1].tobytes() for f in frames]


def _write_tasks(root: Path, task_text: str) -> None:
    """meta/tasks.parquet as pandas writes a frame indexed by the task string (LeRobot reads it with
    pandas; written with pyarrow so exporting needs no pandas)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [],
                   "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                "numpy_type": "int64", "metadata": None},
                               {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                                "numpy_type": "object", "metadata": None}],
                   "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0"}
    table = pa.table({"task_index": pa.array([0], pa.int64()), "__index_level_0__": pa.array([task_text])})
    table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
    pq.write_table(table, root / "meta" / "tasks.parquet")


def _write_episodes(tmp: Path, buffer: ReplayBuffer, columns: list[Column], fps: int, images: str,
                    task_text: str, crf: int, progress: bool) -> tuple[list[dict], dict]:
    """data/ and videos/ for every episode; -> (meta/episodes rows, info.json features)."""
    first = buffer.get_episode(0)
    features = {c.feature: feature_spec(c, c.values(first), fps, images) for c in columns}
    features |= {k: {"dtype": v, "shape": [1], "names": None} for k, v in BOOKKEEPING.items()}
    videos = {c.feature: VideoFiles(tmp, c.feature, fps, crf) for c in columns if c.image and images == "video"}
    data = DataFiles(tmp, features)
    rows, start = [], 0
    for ep in tqdm.trange(buffer.n_episodes, desc="export", disable=not progress):
        episode, length = buffer.get_episode(ep), int(buffer.episode_lengths[ep])
        frame = np.arange(length)
        table = {"timestamp": (frame / fps).astype(np.float32), "frame_index": frame,
                 "episode_index": np.full(length, ep), "index": start + frame, "task_index": np.zeros(length, np.int64)}
        row = {"episode_index": ep, "tasks": [task_text], "length": length, "dataset_from_index": start,
               "dataset_to_index": start + length, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
        for column in columns:
            values = column.values(episode)
            if column.feature in videos:
                row |= videos[column.feature].add(values)
            else:
                table[column.feature] = _png(values) if column.image else values
        row |= data.add(table)
        rows.append(row)
        start += length
    data.flush()
    for writer in videos.values():
        writer.close()
    return rows, features


def export_lerobot(store: str | Path, out: str | Path, shape_meta: ShapeMeta | None = None, fps: int = 10,
                   images: str = "video", task_text: str | None = None, robot_type: str | None = None,
                   crf: int = 10, overwrite: bool = False, progress: bool = True) -> dict:
    """Write the store at `store` as a LeRobotDataset v3.0 folder `out`; returns counts and features."""
    require("pyarrow", extra="tasks")  # missing: the install hint, before anything is written
    import pyarrow as pa
    import pyarrow.parquet as pq

    if images not in ("video", "png"):
        raise ValueError(f"images must be 'video' or 'png', got {images!r}")
    if int(fps) != fps or fps <= 0:
        raise ValueError(f"fps must be a positive integer (LeRobot's info.json holds an int), got {fps}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=true to replace it")
    buffer = ReplayBuffer.create_from_path(store, mode="r")
    if not buffer.n_episodes:
        raise ValueError(f"{store} has no episodes to export")
    columns = plan_columns(buffer, shape_meta)
    task_text = task_text or f"policylab export of {Path(store).name}"
    tmp = out.with_name(f".partial-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "meta" / "episodes" / "chunk-000").mkdir(parents=True)
    rows, features = _write_episodes(tmp, buffer, columns, int(fps), images, task_text, crf, progress)
    pq.write_table(pa.Table.from_pylist(rows), tmp / "meta" / "episodes" / "chunk-000" / "file-000.parquet")
    _write_tasks(tmp, task_text)
    stats = {c.feature: feature_stats(buffer, c, features[c.feature]["shape"]) for c in columns}
    (tmp / "meta" / "stats.json").write_text(json.dumps(stats, indent=2))
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": buffer.n_episodes,
            "total_frames": buffer.n_steps, "total_tasks": 1, "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": DATA_FILE_MB, "video_files_size_in_mb": VIDEO_FILE_MB, "fps": int(fps),
            "splits": {"train": f"0:{buffer.n_episodes}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if any(f["dtype"] == "video" for f in features.values()) else None,
            "features": features}
    (tmp / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return {"out": str(out), "n_episodes": buffer.n_episodes, "n_steps": buffer.n_steps, "fps": int(fps),
            "features": {c.feature: c.zarr_key for c in columns}}


def task_source(cfg: ExportConfig) -> tuple[ShapeMeta | None, int | None]:
    """(shape_meta, fps) of task=<name> or of the task in checkpoint=<dir>'s config.yaml; (None, None)
    without either. A checkpoint's config is data from elsewhere: only checked interpolations resolve."""
    if cfg.task and cfg.checkpoint:
        raise SystemExit(f"{PROG}: give task= or checkpoint=, not both")
    if cfg.task:
        from policylab.common.config import compose

        task = compose([f"task={cfg.task}"]).task
    elif cfg.checkpoint:
        from policylab.common.checkpoint import load_config
        from policylab.common.safe_config import resolve_checked

        task = load_config(cfg.checkpoint).task
        task = {"shape_meta": resolve_checked(task.shape_meta, "task.shape_meta"),
                "env_runner": resolve_checked(task.env_runner, "task.env_runner") if task.get("env_runner") else None}
    else:
        return None, None
    runner = task.get("env_runner") or {}
    return ShapeMeta.parse(task["shape_meta"]), runner.get("fps")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_overrides(ExportConfig, argv, prog=PROG, usage=__doc__)
    shape_meta, task_fps = task_source(cfg)
    stats = export_lerobot(cfg.store, cfg.out, shape_meta, fps=cfg.fps or task_fps or 10, images=cfg.images,
                           task_text=cfg.task_text, robot_type=cfg.robot_type, crf=cfg.crf, overwrite=cfg.overwrite)
    print(f"exported {stats['n_episodes']} episodes ({stats['n_steps']} steps, {stats['fps']} fps) to {stats['out']}")
    for feature, key in stats["features"].items():
        print(f"  {feature:32s} <- {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
