"""H.264 video on a fixed time grid, written with PyAV inside the camera process.

Frame k of the file shows the scene at `start_time + k / fps`: a camera frame that arrives late
is repeated to fill the ticks it skipped, and frames arriving within one tick are dropped. The
video therefore lines up with the episode's steps by index, whatever the camera's jitter.

PyAV is imported where it is used (in the camera processes): loaded before OpenCV's Qt build in
one process, it makes `cv2.imshow` hang (seen with av 18 and opencv-python 5.0), which would
freeze the demo's live preview.
"""

from __future__ import annotations

import os

import numpy as np

from policylab.real.timing import grid_indices


class GridVideoWriter:
    """RGB uint8 frames (H, W, 3) with timestamps -> an mp4 on the `1/fps` grid from `start_time`."""

    def __init__(self, path: str, fps: float, start_time: float, crf: int = 22, threads: int = 1):
        self.path, self.fps, self.start_time = path, fps, start_time
        self.crf, self.threads = crf, threads
        self.n_frames = 0
        self._next_tick = 0
        self._container = self._stream = None

    def write(self, frame: np.ndarray, timestamp: float) -> int:
        """Write `frame` for every grid tick it covers; returns how many times it was written."""
        _, ticks, self._next_tick = grid_indices([timestamp], self.start_time, 1.0 / self.fps, self._next_tick)
        if len(ticks) and self._container is None:
            self._open(frame.shape[1], frame.shape[0])
        import av

        for _ in ticks:
            self._container.mux(self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        self.n_frames += len(ticks)
        return len(ticks)

    def _open(self, width: int, height: int) -> None:
        import av

        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._container = av.open(self.path, mode="w")
        stream = self._container.add_stream("h264", rate=round(self.fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(self.crf)}
        stream.thread_type, stream.thread_count = "FRAME", self.threads
        self._stream = stream

    def close(self) -> int:
        """Flush; returns the number of frames in the file."""
        if self._container is not None:
            self._container.mux(self._stream.encode(None))
            self._container.close()
            self._container = self._stream = None
        return self.n_frames


def read_video_frames(path: str) -> np.ndarray:
    """All frames of a video as (N, H, W, 3) uint8 RGB (for tests and dataset checks)."""
    import av

    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
