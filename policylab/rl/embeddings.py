"""A frozen observation encoder's features, stored with the transitions instead of recomputed.

ConRFT freezes Octo: the actor computes the embedding once per env step and stores it; the
learner reads `embedding` / `next_embedding` from its batches and never runs the encoder. Here
the same holds for any policy whose `obs_encoder` says `frozen` (e.g. `policy/obs_encoder=octo_*`
with `frozen: true`): `rl.actor.EnvActor(embed=True)` records online episodes, and
`episode_embeddings` computes the demonstrations' once, with the same window rule (the obs window
ending at each step, the first observation repeated before the start).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from policylab.common.obs import to_policy_obs
from policylab.common.shape_meta import ShapeMeta

EMBEDDING_KEY = "embedding"


def has_frozen_encoder(policy) -> bool:
    """Whether the policy's observation encoder is frozen, so its features can be stored."""
    return bool(getattr(getattr(policy, "obs_encoder", None), "frozen", False))


@torch.no_grad()
def episode_embeddings(policy, episode: Mapping[str, np.ndarray], shape_meta: Mapping,
                       batch_size: int = 64) -> np.ndarray:
    """(L, D) float32: `policy.encode_obs` of the normalized obs window ending at each step.

    Args:
        policy: the actor (its normalizer, obs encoder and `n_obs_steps`); run in eval mode.
        episode: one episode of a store, `{zarr_key: (L, ...)}` (raw, as stored).
        shape_meta: the task's shape_meta (which keys, how stored values become observations).
        batch_size: windows encoded per forward pass.
    """
    meta = ShapeMeta.parse(shape_meta)
    zarr_keys = {spec.zarr_key for spec in meta.obs.values()}
    length = len(next(iter(episode.values())))
    to = policy.n_obs_steps
    steps = np.clip(np.arange(length)[:, None] + np.arange(1 - to, 1)[None], 0, None)  # (L, To)
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    out = []
    try:
        for lo in range(0, length, batch_size):
            idx = steps[lo:lo + batch_size]
            obs = to_policy_obs({key: np.asarray(episode[key])[idx] for key in zarr_keys}, meta, stored=True,
                                device=device)
            cond = policy.encode_window(policy.normalize_obs(obs))  # an image head's part is not stored
            out.append(cond.reshape(cond.shape[0], -1).float().cpu().numpy())
    finally:
        policy.train(was_training)
    return np.concatenate(out, axis=0)
