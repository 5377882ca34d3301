"""Import a local LeRobotDataset (format v3.0) folder into a zarr ReplayBuffer.

    python -m policylab.data.importers.lerobot in=<dataset folder> out=data/lerobot/<name>.zarr
        [keys=observation.state,observation.images.front,action] [overwrite=false]
        [image_compressor=image|disk] [task_name=<name>] [out_task=<dir>/task/<name>.yaml|none]

Besides the store it writes a task config, so `python train.py task=<name>` trains on it with no
hand-written YAML: shape_meta from info.json's features (images and videos -> rgb [C, H, W],
other observations -> low_dim, `action`; `next.*` outcomes are stored but not observed), the
store as dataset.zarr_path, no env runner (evaluation is offline: val loss). It goes to
policylab's config/task/<task_name>.yaml (task_name defaults to the store's name), or to out_task=
(a file in a folder named `task`; train with `python train.py --config-dir <the folder above
task/> task=<name>`, the flag first); out_task=none skips it. It names one target, the SequenceDataset (on the
checkpoint allow-list), and never replaces a task file it did not write.

The v3.0 layout (LeRobot >= 0.4), many episodes per file:

    meta/info.json                         codebase_version "v3.0", fps, features, path templates
    meta/episodes/chunk-XXX/file-XXX.parquet   one row per episode: episode_index, length,
                                           videos/<key>/{chunk_index, file_index, from_timestamp}
    data/chunk-XXX/file-XXX.parquet        one row per frame: every non-video feature +
                                           episode_index, frame_index, timestamp, index, task_index
    videos/<key>/chunk-XXX/file-XXX.mp4    frames of consecutive episodes, at `fps`

Store keys drop LeRobot's prefixes ("observation.images.", "observation.", "next.") and turn the
remaining dots into underscores: observation.state -> state, observation.images.front -> front,
next.reward -> reward, action -> action. Frames of an episode are read from its rows sorted by
frame_index; video frames from `from_timestamp * fps` on, one per row. Video features
(`dtype: video`, any codec FFmpeg decodes: AV1, H.264, ...) and image features (`dtype: image`,
PNG/JPEG bytes in the parquet) become (N, H, W, 3) uint8 keys; numeric features float32 (ints
and bools keep their dtype). Bookkeeping columns (index, frame_index, timestamp, episode_index,
task_index) are not copied; meta/episode_index keeps the source episode numbers.

Problems raise `ImportFormatError` naming the file and the key: another codebase version, a
missing info.json / feature column / video file, an episode whose row count disagrees with its
`length`, a video with too few frames.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import tqdm

from policylab.common.extras import require
from policylab.data.importers.common import ImportFormatError, parse_cli, write_episodes
from policylab.paths import config_dir

BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
PREFIXES = ("observation.images.", "observation.", "next.")
TASK_MARKER = "# Written by policylab.data.importers.lerobot"  # a task file this importer may replace
SAFE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def store_key(feature: str) -> str:
    """LeRobot feature name -> ReplayBuffer key (see the module docstring)."""
    for prefix in PREFIXES:
        if feature.startswith(prefix):
            feature = feature[len(prefix):]
            break
    return feature.replace(".", "_")


def read_info(root: Path) -> dict:
    path = root / "meta" / "info.json"
    if not path.exists():
        raise ImportFormatError(f"{root}: no meta/info.json (not a LeRobotDataset folder)")
    info = json.loads(path.read_text())
    version = str(info.get("codebase_version", "?"))
    if not version.startswith("v3"):
        raise ImportFormatError(f"{path}: codebase_version {version}; this importer reads v3.0 "
                                "(convert v2.1 with lerobot's convert_dataset_v21_to_v30)")
    for key in ("fps", "features"):
        if key not in info:
            raise ImportFormatError(f"{path}: missing {key!r}")
    return info


def _read_parquets(folder: Path, what: str):
    require("pyarrow", extra="tasks")
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted(folder.glob("chunk-*/file-*.parquet"))
    if not files:
        raise ImportFormatError(f"{folder}: no chunk-*/file-*.parquet files ({what})")
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def _column(table, name: str, where: str) -> np.ndarray:
    if name not in table.column_names:
        raise ImportFormatError(f"{where}: missing column {name!r} (has {table.column_names})")
    column = table.column(name)
    if column.null_count:
        raise ImportFormatError(f"{where}: missing column {name!r} in some files, or null values "
                                f"({column.null_count} of {len(column)} rows)")
    if column.num_chunks and hasattr(column.type, "value_type"):  # list / fixed-size list rows
        return np.stack([np.asarray(v, dtype=None) for v in column.to_pylist()])
    return column.to_numpy(zero_copy_only=False)


class VideoFrames:
    """Decodes one mp4 at a time (the last one asked for stays cached)."""

    def __init__(self, root: Path, template: str):
        self.root, self.template = root, template
        self._path = self._frames = None

    def get(self, key: str, chunk: int, file: int, start: int, length: int, shape) -> np.ndarray:
        path = self.root / self.template.format(video_key=key, chunk_index=chunk, file_index=file)
        if path != self._path:
            if not path.exists():
                raise ImportFormatError(f"{key}: video file {path} is missing")
            self._frames, self._path = self._decode(path), path
        frames = self._frames[start:start + length]
        if len(frames) < length:
            raise ImportFormatError(f"{path}: {len(self._frames)} frames, but an episode needs "
                                    f"frames {start}..{start + length - 1}")
        if tuple(frames.shape[1:]) != tuple(shape):
            raise ImportFormatError(f"{path}: frames are {frames.shape[1:]}, info.json says {tuple(shape)}")
        return frames

    @staticmethod
    def _decode(path: Path) -> np.ndarray:
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)


def _decode_images(values, where: str) -> np.ndarray:
    import cv2

    frames = []
    for value in values:
        data = value.get("bytes") if isinstance(value, dict) else value
        if data is None:
            raise ImportFormatError(f"{where}: an image row has no embedded bytes")
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if frame is None:
            raise ImportFormatError(f"{where}: an image row could not be decoded")
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def import_lerobot(src: str | Path, out: str | Path, keys: list[str] | None = None,
                   overwrite: bool = False, image_compressor: str = "image",
                   progress: bool = True) -> dict:
    """Convert the LeRobotDataset v3 folder `src` into a ReplayBuffer at `out`; returns counts."""
    root = Path(src)
    info = read_info(root)
    features = {k: v for k, v in info["features"].items() if k not in BOOKKEEPING}
    if keys is not None:
        unknown = [k for k in keys if k not in features]
        if unknown:
            raise ImportFormatError(f"{root}/meta/info.json: no feature(s) {unknown}; has {sorted(features)}")
        features = {k: features[k] for k in keys}
    names = {}
    for feature in features:
        key = store_key(feature)
        if key in names:
            raise ImportFormatError(f"features {names[key]!r} and {feature!r} both map to store key {key!r}")
        names[key] = feature
    fps = float(info["fps"])
    video = {k for k, v in features.items() if v.get("dtype") == "video"}

    data = _read_parquets(root / "data", "frames")
    where = f"{root}/data"
    episode_index = _column(data, "episode_index", where).astype(np.int64)
    frame_index = _column(data, "frame_index", where).astype(np.int64)
    columns = {f: _column(data, f, where) if features[f].get("dtype") != "image"
               else data.column(f).to_pylist() for f in features if f not in video}

    episodes_meta = _read_parquets(root / "meta" / "episodes", "episode metadata") if video else None
    meta_rows = {}
    if episodes_meta is not None:
        meta_where = f"{root}/meta/episodes"
        ep_ids = _column(episodes_meta, "episode_index", meta_where).astype(np.int64)
        cols = {name: _column(episodes_meta, name, meta_where) for name in
                ["length"] + [f"videos/{k}/{c}" for k in video for c in
                              ("chunk_index", "file_index", "from_timestamp")]}
        meta_rows = {int(e): {n: c[i] for n, c in cols.items()} for i, e in enumerate(ep_ids)}

    videos = VideoFrames(root, info.get("video_path",
                                        "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"))
    ep_ids = np.unique(episode_index)

    def episodes():
        for ep in ep_ids:
            rows = np.flatnonzero(episode_index == ep)
            rows = rows[np.argsort(frame_index[rows], kind="stable")]
            episode = {}
            for feature, spec in features.items():
                key = store_key(feature)
                if feature in video:
                    if int(ep) not in meta_rows:
                        raise ImportFormatError(f"{root}/meta/episodes: no row for episode {ep}")
                    m = meta_rows[int(ep)]
                    if int(m["length"]) != len(rows):
                        raise ImportFormatError(f"episode {ep}: meta/episodes says length {int(m['length'])} "
                                                f"but data/ has {len(rows)} frames")
                    start = round(float(m[f"videos/{feature}/from_timestamp"]) * fps)
                    episode[key] = videos.get(feature, int(m[f"videos/{feature}/chunk_index"]),
                                              int(m[f"videos/{feature}/file_index"]), start, len(rows),
                                              spec["shape"])
                elif spec.get("dtype") == "image":
                    episode[key] = _decode_images([columns[feature][i] for i in rows], f"{where}/{feature}")
                else:
                    value = np.asarray(columns[feature][rows])
                    if value.dtype.kind == "f":
                        value = value.astype(np.float32)
                    episode[key] = value.reshape(len(rows), *[int(s) for s in spec.get("shape", [])] or [])
            yield episode

    iterator = episodes()
    if progress:
        iterator = tqdm.tqdm(iterator, total=len(ep_ids), desc=f"import {root.name}")
    meta = {"episode_index": ep_ids.astype(np.int64),
            "lerobot_info": np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)}
    buffer = write_episodes(iterator, out, meta=meta, overwrite=overwrite,
                            image_compressor=image_compressor)
    return {"out": str(out), "n_episodes": buffer.n_episodes, "n_steps": buffer.n_steps,
            "keys": {k: names[k] for k in sorted(names)}, "fps": fps}


def task_shape_meta(info: dict, keys: list[str] | None = None) -> dict:
    """shape_meta (plain dict) for the store the import of `info` (info.json) writes; the imported
    features only (`keys`, or all). Raises ImportFormatError without an `action` feature."""
    obs, action = {}, None
    for feature, spec in info["features"].items():
        if feature in BOOKKEEPING or (keys is not None and feature not in keys) or feature.startswith("next."):
            continue
        shape = [int(s) for s in spec.get("shape", [])] or [1]
        if feature == "action":
            action = {"shape": [int(np.prod(shape))]}
        elif spec.get("dtype") in ("video", "image"):
            obs[store_key(feature)] = {"shape": [shape[2], shape[0], shape[1]], "type": "rgb"}
        elif spec.get("dtype") != "string":
            obs[store_key(feature)] = {"shape": [int(np.prod(shape))], "type": "low_dim"}
    if action is None:
        raise ImportFormatError("no 'action' feature imported: a task config needs one (out_task=none skips it)")
    unsafe = [k for k in obs if not SAFE_NAME.fullmatch(k)]
    if unsafe:
        raise ImportFormatError(f"feature names {unsafe} are not usable as config keys (out_task=none skips the task)")
    return {"obs": obs, "action": action}


def task_yaml(info: dict, store: str | Path, name: str, source: str | Path, keys: list[str] | None = None) -> str:
    """The text of a task config training on the imported `store` (see the module docstring)."""
    from omegaconf import OmegaConf

    if "${" in str(store) or not SAFE_NAME.fullmatch(name):
        raise ImportFormatError(f"task_name {name!r} / store path {str(store)!r}: names are letters, digits and _; "
                                "paths may not contain '${'")
    shape_meta = task_shape_meta(info, keys)
    rgb = [v["shape"] for v in shape_meta["obs"].values() if v["type"] == "rgb"]
    task = {
        "name": name,
        "image_crop_shape": [int(rgb[0][1] * 0.875), int(rgb[0][2] * 0.875)] if rgb else None,  # DP: 84 of 96
        "shape_meta": shape_meta,
        "dataset": {"_target_": "policylab.data.datasets.sequence.SequenceDataset", "shape_meta": "${task.shape_meta}",
                    "zarr_path": str(store), "horizon": "${horizon}", "n_obs_steps": "${n_obs_steps}",
                    "n_action_steps": "${n_action_steps}", "val_ratio": 0.02, "max_train_episodes": None, "seed": 42},
        "env_runner": None,
    }
    header = (f"{TASK_MARKER} from {source}/meta/info.json\n# ({info.get('total_episodes', '?')} episodes at "
              f"{info['fps']} fps). Train: python train.py task={name}\n")
    return header + OmegaConf.to_yaml(OmegaConf.create(task))


def check_task_path(path: Path, overwrite: bool) -> None:
    """Refuse, before anything is imported, a task file this importer may not write."""
    if path.parent.name != "task":
        raise SystemExit(f"out_task={path}: put it in a folder named 'task' (Hydra's task group), e.g. "
                         f"<dir>/task/{path.stem}.yaml, and train with --config-dir <dir>")
    if path.exists() and not path.read_text().startswith(TASK_MARKER):
        raise FileExistsError(f"{path} exists and was not written by this importer; choose another task_name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=true to replace it")


def write_task(text: str, path: Path) -> None:
    """Write `text` to `path` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_cli(sys.argv[1:] if argv is None else argv, required=("in", "out"),
                     optional=("keys", "overwrite", "image_compressor", "task_name", "out_task"),
                     prog="policylab.data.importers.lerobot", usage=__doc__)
    keys = args["keys"].split(",") if args.get("keys") else None
    overwrite = args.get("overwrite", "false").lower() in ("1", "true")
    name = args.get("task_name") or re.sub(r"\W", "_", Path(args["out"]).name.split(".")[0])
    out_task = args.get("out_task", str(config_dir() / "task" / f"{name}.yaml"))
    text = None
    if out_task.lower() != "none":  # every check before anything is imported
        text = task_yaml(read_info(Path(args["in"])), args["out"], name, args["in"], keys)
        check_task_path(Path(out_task), overwrite)
    stats = import_lerobot(args["in"], args["out"], keys=keys, overwrite=overwrite,
                           image_compressor=args.get("image_compressor", "image"))
    print(f"imported {stats['n_episodes']} episodes ({stats['n_steps']} steps, {stats['fps']:g} fps) "
          f"into {stats['out']}")
    for key, feature in stats["keys"].items():
        print(f"  {key:24s} <- {feature}")
    if text is not None:
        write_task(text, Path(out_task))
        in_config = Path(out_task).resolve().parent == (config_dir() / "task").resolve()
        config_flag = "" if in_config else f"--config-dir {Path(out_task).resolve().parent.parent} "
        print(f"task config: {out_task}\n  train: python train.py {config_flag}task={name}")
        stats["task"] = out_task
    return stats


if __name__ == "__main__":
    main()
