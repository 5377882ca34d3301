"""Look at a ReplayBuffer store: episodes, keys, stats, seeds, integrity; an episode as video + contact sheet.

    python -m policylab.data.inspect <store>                        # the printout below
    python -m policylab.data.inspect <store> episode=3 out=<dir>    # + <dir>/episode_003.{mp4,png}

<store> is a `.zarr` directory, a `.zarr.zip` file, or a Diffusion Policy real-robot dataset folder
(the one holding `replay_buffer.zarr`). Options (key=value):

    episode=<i>        print that episode's per-key stats; with out=, write its frames and plot
    out=<dir>          where episode_<i>.mp4 (image keys side by side, at fps) and episode_<i>.png
                       (a contact sheet of evenly spaced frames over a plot of its actions) go
    fps=<hz>           video frame rate (default: the store's, from an imported LeRobot info, else 10)
    image_samples=256  frames sampled, evenly spaced, per image key for its per-channel stats
    sheet_frames=8     frames on the contact sheet
    scale=0            magnification of frames in the video and the sheet (0: auto, ~256 px high)

Printed: the episode count and lengths (with `meta/episode_seeds` when the store has them), every
data key with its shape, dtype and chunks, per-key stats (low-dim: min/max/mean/std per dimension
over every step, or over all dimensions when there are more than 8; images (..., H, W, C): per
channel over the sampled frames), the other meta arrays, and integrity: `data.repair`'s diagnosis
plus every array's length against `meta/episode_ends`. Exits 1 when the store has a problem.
Everything is drawn with numpy and OpenCV (core dependencies), so it runs on a core install.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from policylab.common.overrides import MISSING, parse_overrides
from policylab.data.checksums import CHECKSUMS_KEY, status_line
from policylab.data.repair import diagnose, per_episode_lengths
from policylab.data.replay_buffer import ReplayBuffer, ReplayBufferError

PROG = "policylab.data.inspect"
PER_DIM_MAX = 8  # low-dim keys with more dimensions get one overall min/max/mean/std
DEFAULT_FPS = 10.0
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]  # RGB


@dataclasses.dataclass
class InspectConfig:
    store: str = MISSING
    episode: int | None = None
    out: str | None = None
    fps: float | None = None
    image_samples: int = 256
    sheet_frames: int = 8
    scale: int = 0


def resolve_store(path: str | Path) -> Path:
    """The zarr store at `path`, or inside it for a DP real-robot dataset folder."""
    path = Path(path)
    if (path / "replay_buffer.zarr").exists() and not (path / ".zgroup").exists() and not (path / "zarr.json").exists():
        return path / "replay_buffer.zarr"
    return path


def is_image(shape: tuple[int, ...]) -> bool:
    """(N, H, W, C) with C in 1, 3, 4: an image key (uint8 0..255 or float 0..1 / 0..255)."""
    return len(shape) == 4 and shape[-1] in (1, 3, 4) and shape[1] > 4 and shape[2] > 4


def key_stats(arr, n_steps: int, image_samples: int = 256) -> dict:
    """min/max/mean/std of `arr[:n_steps]`: images per channel over at most `image_samples`
    evenly spaced frames, (C,) each; other keys per flattened dimension over every step, (D,) each.
    float64 accumulation; "samples" says how many steps went in."""
    if is_image(tuple(arr.shape)):
        idx = np.unique(np.linspace(0, n_steps - 1, min(n_steps, image_samples)).round().astype(np.int64))
        values = np.asarray(arr.oindex[idx] if hasattr(arr, "oindex") else arr[idx], dtype=np.float64)
        values = values.reshape(-1, arr.shape[-1])
    else:
        idx = np.arange(n_steps)
        values = np.asarray(arr[:n_steps], dtype=np.float64).reshape(n_steps, -1)
    if not len(values):
        return {"samples": 0}
    return {"samples": len(idx), "min": values.min(0), "max": values.max(0),
            "mean": values.mean(0), "std": values.std(0)}


def integrity(buffer: ReplayBuffer) -> list[str]:
    """`data.repair.diagnose` plus arrays longer than `meta/episode_ends` says (an interrupted
    append: those steps belong to no episode). Shorter arrays fail to open at all. A store without
    any `meta/episode_seeds` is not a problem here: only policylab's generators write them."""
    absent = [f"meta/{k} is missing" for k, n in per_episode_lengths(buffer).items() if n is None]
    problems = [p for p in diagnose(buffer) if not p.startswith(tuple(absent))]
    for key, arr in buffer.items():
        length = arr.shape[0]
        if length != buffer.n_steps:
            problems.append(f"data/{key} has {length} steps but meta/episode_ends ends at {buffer.n_steps} "
                            f"(an interrupted append; the extra steps are ignored)")
    return problems


def store_fps(buffer: ReplayBuffer) -> float | None:
    """The frame rate an imported LeRobot dataset recorded (meta/lerobot_info), else None."""
    if "lerobot_info" not in buffer.meta:
        return None
    try:
        return float(json.loads(bytes(np.asarray(buffer.meta["lerobot_info"][:])).decode())["fps"])
    except (ValueError, KeyError, UnicodeDecodeError):
        return None


def _fmt(values: np.ndarray) -> str:
    values = np.atleast_1d(values)
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return "[" + " ".join(f"{v:.4g}" for v in values) + "]"


def _stats_line(key: str, stats: dict, image: bool) -> str:
    if not stats["samples"]:
        return f"  {key:16s} (empty)"
    parts = {name: stats[name] for name in ("min", "max", "mean", "std")}
    what = f"per channel, {stats['samples']} frames" if image else "per dim"
    if not image and len(stats["min"]) > PER_DIM_MAX:
        parts = {"min": stats["min"].min(), "max": stats["max"].max(), "mean": stats["mean"].mean()}
        what = f"over all {len(stats['min'])} dims"
    text = "  ".join(f"{name} {_fmt(v)}" for name, v in parts.items())
    return f"  {key:16s} {text}  ({what})"


def episode_lines(buffer: ReplayBuffer, head: int = 10, tail: int = 5) -> list[str]:
    """The episode table: index, length, step range, seed; the middle elided for long stores."""
    lengths, ends = buffer.episode_lengths, buffer.episode_ends
    seeds = np.asarray(buffer.meta["episode_seeds"][:]) if "episode_seeds" in buffer.meta else None
    if not len(lengths):
        return ["episodes: 0"]
    lines = [(f"episodes: {len(lengths)}, lengths min {lengths.min()} / mean {lengths.mean():.1f} / "
             f"max {lengths.max()}, {buffer.n_steps} steps"),
             f"  {'episode':>7s} {'length':>7s}  {'steps':>15s}" + ("  seed" if seeds is not None else "")]
    shown = list(range(len(lengths)))
    if len(shown) > head + tail:
        shown = shown[:head] + [-1] + shown[-tail:]
    for i in shown:
        if i < 0:
            lines.append(f"  {'...':>7s}")
            continue
        seed = f"  {seeds[i]}" if seeds is not None and i < len(seeds) else ("  (none)" if seeds is not None else "")
        lines.append(f"  {i:7d} {lengths[i]:7d}  {f'{ends[i] - lengths[i]}..{ends[i] - 1}':>15s}{seed}")
    return lines


def summary(buffer: ReplayBuffer, image_samples: int, episode: int | None = None) -> list[str]:
    """Keys, shapes, dtypes and stats of the whole store, or of `episode` alone."""
    lines = [f"{'key':18s} {'shape':22s} {'dtype':8s} chunks"]
    for key in sorted(buffer.keys()):
        arr = buffer.data[key]
        lines.append(f"  {key:16s} {tuple(arr.shape)!s:22s} {arr.dtype!s:8s} {tuple(getattr(arr, 'chunks', ()))}")
    if episode is None:
        lines.append("stats (low-dim: every step; images: per channel over evenly spaced frames):")
        view, n_steps = buffer.data, buffer.n_steps
    else:
        lines.append(f"stats of episode {episode} ({buffer.episode_lengths[episode]} steps):")
        view, n_steps = buffer.get_episode(episode), int(buffer.episode_lengths[episode])
    for key in sorted(buffer.keys()):
        lines.append(_stats_line(key, key_stats(view[key], n_steps, image_samples), is_image(tuple(view[key].shape))))
    others = [k for k in sorted(buffer.meta.array_keys()) if k not in ("episode_ends", CHECKSUMS_KEY)]
    if others:
        lines.append("meta: " + ", ".join(f"{k} {tuple(buffer.meta[k].shape)} {buffer.meta[k].dtype}" for k in others))
    return [*lines, status_line(buffer.checksum_status())]


def to_uint8_rgb(frames: np.ndarray) -> np.ndarray:
    """(L, H, W, C) images, uint8 or float in [0, 1] or [0, 255] -> (L, H, W, 3) uint8."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = frames.astype(np.float32)
        if frames.size and frames.max() <= 1.0:
            frames = frames * 255.0
        frames = np.clip(frames.round(), 0, 255).astype(np.uint8)
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    return np.ascontiguousarray(frames[..., :3])


def episode_video_frames(episode: dict[str, np.ndarray], scale: int) -> np.ndarray:
    """Every image key of an episode side by side (sorted by name), magnified `scale` times
    (nearest neighbour), as (L, H*scale, W_total*scale, 3) uint8; keys of other heights are
    resized to the first key's height."""
    import cv2

    keys = sorted(k for k, v in episode.items() if is_image(tuple(v.shape)))
    if not keys:
        return np.zeros((0, 0, 0, 3), np.uint8)
    height = episode[keys[0]].shape[1]
    panels = []
    for key in keys:
        frames = to_uint8_rgb(episode[key])
        if frames.shape[1] != height:
            width = round(frames.shape[2] * height / frames.shape[1])
            frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) for f in frames])
        panels.append(frames)
    tiled = np.concatenate(panels, axis=2)
    return np.repeat(np.repeat(tiled, scale, axis=1), scale, axis=2) if scale > 1 else tiled


def auto_scale(height: int, target: int = 256) -> int:
    return max(1, math.ceil(target / max(height, 1)))


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """(L, H, W, 3) uint8 -> an H.264 mp4 (yuv420p, odd sizes padded by one black pixel); the
    file appears complete or not at all."""
    import av

    frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)))
    tmp = path.with_name(f".tmp-{path.name}")
    with av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps) if float(fps).is_integer() else fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    os.replace(tmp, path)


def _text(img: np.ndarray, text: str, org: tuple[int, int], color=(0, 0, 0), size: float = 0.45) -> None:
    import cv2

    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, size, color, 1, cv2.LINE_AA)


def plot_lines(values: np.ndarray, width: int, height: int, title: str, marks=()) -> np.ndarray:
    """A line plot of `values` (L, D), one coloured line per dimension, on a white (height, width, 3)
    uint8 RGB image, with the y range, the step axis, a legend, and grey verticals at `marks`."""
    import cv2

    img = np.full((height, width, 3), 255, np.uint8)
    left, right, top, bottom = 70, 12, 40, 28
    values = np.asarray(values, np.float64).reshape(len(values), -1)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    w, h, n = width - left - right, height - top - bottom, max(len(values) - 1, 1)
    xs = left + np.arange(len(values)) * w / n
    cv2.rectangle(img, (left, top), (left + w, top + h), (0, 0, 0), 1)
    for t in marks:
        x = round(left + t * w / n)
        cv2.line(img, (x, top), (x, top + h), (200, 200, 200), 1)
        _text(img, str(t), (x - 8, top + h + 18), (90, 90, 90), 0.4)
    for d in range(values.shape[1]):
        ys = top + h - (values[:, d] - lo) / (hi - lo) * h
        pts = np.stack([xs, ys], 1).round().astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(img, [pts], False, PALETTE[d % len(PALETTE)], 2, cv2.LINE_AA)
        _text(img, f"[{d}]", (left + 8 + 40 * d, top - 8), PALETTE[d % len(PALETTE)], 0.5)
    _text(img, f"{hi:.4g}", (4, top + 10))
    _text(img, f"{lo:.4g}", (4, top + h))
    _text(img, title, (left + 8 + 40 * values.shape[1] + 10, top - 8))
    return img


def contact_sheet(frames: np.ndarray, values: np.ndarray | None, title: str, n_frames: int,
                  scale: int, plot_name: str = "action") -> np.ndarray:
    """`n_frames` evenly spaced frames of (L, H, W, 3) uint8 `frames` in a grid (up to 4 per row),
    each labelled with its step, over a plot of `values` (L, D) that marks the same steps.
    Either part may be absent (no image keys / nothing to plot). -> (H', W', 3) uint8 RGB."""
    import cv2

    length = len(frames) if len(frames) else len(values)
    steps = np.unique(np.linspace(0, length - 1, min(n_frames, length)).round().astype(int)).tolist()
    rows = []
    if len(frames):
        thumbs = [np.repeat(np.repeat(frames[t], scale, 0), scale, 1) for t in steps]
        for thumb, t in zip(thumbs, steps):
            cv2.rectangle(thumb, (0, 0), (60, 18), (0, 0, 0), -1)
            _text(thumb, f"t={t}", (3, 13), (255, 255, 255))
        per_row = min(4, len(thumbs))
        thumbs += [np.zeros_like(thumbs[0])] * (-len(thumbs) % per_row)
        rows = [np.concatenate(thumbs[i:i + per_row], axis=1) for i in range(0, len(thumbs), per_row)]
    width = rows[0].shape[1] if rows else 800
    header = np.full((28, width, 3), 255, np.uint8)
    _text(header, title, (6, 19), size=0.5)
    parts = [header, *rows]
    if values is not None:
        parts.append(plot_lines(values, width, 260, f"{plot_name} ({values.shape[-1]} dims)", marks=steps))
    return np.concatenate(parts, axis=0)


def write_episode(buffer: ReplayBuffer, episode: int, out: Path, fps: float, sheet_frames: int,
                  scale: int) -> list[Path]:
    """<out>/episode_<i>.mp4 (when the store has image keys) and <out>/episode_<i>.png; returns the paths."""
    import cv2

    data = buffer.get_episode(episode)
    images = [k for k, v in data.items() if is_image(tuple(v.shape))]
    height = data[min(images)].shape[1] if images else 0
    scale = scale or auto_scale(height)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    frames = episode_video_frames(data, 1)
    if images:
        written.append(out / f"episode_{episode:03d}.mp4")
        write_mp4(written[-1], episode_video_frames(data, scale), fps)
    lowdim = [k for k, v in data.items() if not is_image(tuple(v.shape))]
    plot_key = "action" if "action" in data else (min(lowdim) if lowdim else None)
    values = np.asarray(data[plot_key]).reshape(len(data[plot_key]), -1) if plot_key else None
    seeds = buffer.meta.get("episode_seeds", None)
    seed = f", seed {int(seeds[episode])}" if seeds is not None and episode < seeds.shape[0] else ""
    title = f"episode {episode}: {int(buffer.episode_lengths[episode])} steps{seed}; {', '.join(sorted(images))}"
    sheet = contact_sheet(frames, values, title, sheet_frames, max(1, scale * 2 // 3), plot_key or "")
    written.append(out / f"episode_{episode:03d}.png")
    tmp = written[-1].with_name(f".tmp-{written[-1].name}")
    if not cv2.imwrite(str(tmp), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {tmp}")
    os.replace(tmp, written[-1])
    return written


def inspect(cfg: InspectConfig) -> tuple[list[str], list[str]]:
    """(printout lines, problems) for the store `cfg.store`; writes the episode files if asked."""
    path = resolve_store(cfg.store)
    try:
        buffer = ReplayBuffer.create_from_path(path, mode="r", check_chunks=False)
    except (ReplayBufferError, FileNotFoundError) as err:
        return [f"{path}: cannot be opened as a ReplayBuffer store"], [str(err)]
    kind = "zip" if path.is_file() else "directory"
    lines = [f"{path} (zarr v{buffer.root.metadata.zarr_format} {kind})", *episode_lines(buffer)]
    if cfg.episode is not None and not 0 <= cfg.episode < buffer.n_episodes:
        raise SystemExit(f"{PROG}: episode={cfg.episode} is out of range; the store has {buffer.n_episodes} episodes")
    lines += summary(buffer, cfg.image_samples, cfg.episode)
    problems = integrity(buffer)
    lines.append("integrity: " + ("ok (episode_ends agree with every array, per-episode meta complete, "
                                  "no missing chunks)" if not problems else f"{len(problems)} problem(s)"))
    if cfg.out is not None:
        if cfg.episode is None:
            raise SystemExit(f"{PROG}: out= needs episode=<i> (which episode to write)")
        fps = cfg.fps or store_fps(buffer) or DEFAULT_FPS
        for written in write_episode(buffer, cfg.episode, Path(cfg.out), fps, cfg.sheet_frames, cfg.scale):
            lines.append(f"wrote {written}")
    return lines, problems


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):
        argv[0] = f"store={argv[0]}"
    cfg = parse_overrides(InspectConfig, argv, prog=PROG, usage=__doc__)
    lines, problems = inspect(cfg)
    print("\n".join(lines))
    for problem in problems:
        print(f"  problem: {problem}")
    if problems:
        print(f"  more, and repairs: python -m policylab.data.repair {resolve_store(cfg.store)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
