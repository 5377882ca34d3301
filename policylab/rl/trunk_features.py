"""The critic's frozen image trunk, run once per frame: features stored with the transitions.

ConRFT's critic reads each camera through a frozen ResNet-10 (`FrozenTrunkEncoder`); only the
head after it learns. Running the trunk on every sample of every update is what made the image
learner slow on a CPU (0.06 updates/s at batch 256), so here each frame's trunk features are
computed once, when its episode reaches a store (the demos at the start of a stage, each online
episode when the learner receives it), and stored as `trunk_<key>` (L, C, h, w) float16 next to
the images. The learner's batches carry them (`TransitionSpec.trunk_keys`) and the critic's head
reads them: no conv trunk runs in an update.

Computing them on the learner, not on the actor, keeps the actor's control loop free of them
(a robot's 10 Hz loop never waits for a ResNet) and needs no trunk weights on the actor's machine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from policylab.common.obs import stored_to_policy
from policylab.common.shape_meta import ShapeMeta
from policylab.models.critic import CriticObsEncoder, trunk_key

FEATURE_DTYPE = np.float16  # half the bytes; the head's output moves by < 1e-3 (tests)


def episode_trunk_features(encoder: CriticObsEncoder, episode: Mapping[str, np.ndarray], shape_meta: ShapeMeta,
                           batch_size: int = 64) -> dict[str, np.ndarray]:
    """`{trunk_<key>: (L, C, h, w) float16}` for each cached rgb key of the critic's `encoder`.

    Args:
        encoder: the critic's observation encoder (`cached_keys`, `trunk_features`).
        episode: one episode `{zarr_key: (L, ...)}` as stored (rgb (L, H, W, 3) uint8).
        shape_meta: the task's (parsed), which maps obs keys to store keys.
        batch_size: frames per trunk pass.
    """
    return episode_feature_maps(encoder.trunk_features, encoder.cached_keys, trunk_key, episode, shape_meta,
                                next(encoder.parameters()).device, batch_size)


@torch.no_grad()
def episode_feature_maps(features: Callable[[str, torch.Tensor], torch.Tensor], keys, name: Callable[[str], str],
                         episode: Mapping[str, np.ndarray], shape_meta: ShapeMeta, device: torch.device | str = "cpu",
                         batch_size: int = 64) -> dict[str, np.ndarray]:
    """`{name(key): (L, C, h, w) float16}`: `features(key, frames (N, 3, H, W) in [0, 1])` on every
    frame of each rgb obs key in `keys` (a critic's trunk, an actor image head's stems)."""
    out = {}
    for key in keys:
        spec = shape_meta.obs[key]
        frames = np.asarray(episode[spec.zarr_key])
        rows = []
        for lo in range(0, len(frames), batch_size):
            images = torch.from_numpy(stored_to_policy(spec, frames[lo:lo + batch_size], n_lead=1)).to(device)
            rows.append(features(key, images).to("cpu", torch.float32).numpy().astype(FEATURE_DTYPE))
        out[name(key)] = np.concatenate(rows, axis=0)
    return out


def trunk_identity(encoder: CriticObsEncoder) -> str:
    """One string naming the trunk of every cached key, e.g. `front=resnet10(random):1a2b...;wrist=...`."""
    return ";".join(f"{key}={identity}" for key, identity in sorted(encoder.trunk_identity().items()))


def megabytes_per_1k_transitions(encoder: CriticObsEncoder) -> float:
    """Storage of the cached features per 1,000 env steps, all cameras (MB = 1e6 bytes)."""
    itemsize = np.dtype(FEATURE_DTYPE).itemsize
    cells = sum(int(np.prod(encoder.image_encoders[k].feature_shape)) for k in encoder.cached_keys)
    return 1000 * cells * itemsize / 1e6
