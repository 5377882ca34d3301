"""The env-runner interface: evaluate a policy by rolling it out, return flat metrics."""

import abc


class EnvRunner(abc.ABC):
    """Rolls a policy out in an environment and reports scalars and media paths.

    Args:
        output_dir: run directory; media (videos) go under `<output_dir>/media/`.
    """

    def __init__(self, output_dir: str):
        self.output_dir = output_dir

    @abc.abstractmethod
    def run(self, policy) -> dict:
        """Evaluate `policy` (see `Policy.predict_action`).

        Returns:
            flat dict: `<split>/mean_score`, `<split>/success_rate`, per-seed
            `<split>/sim_max_reward_<seed>` (floats) and `<split>/sim_video_<seed>` (mp4 paths).
        """

    def close(self) -> None:
        """Release worker processes and files; the default has none."""
