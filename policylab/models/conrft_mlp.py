"""ConRFT's consistency-policy network (`ConsistencyPolicy_octo` in cccedric/conrft), as a backbone.

    F(x (B, T, Da), tau (B,), cond (B, Dc)) -> (B, T, Da)

tau is the already scaled noise level, 250 ln(sigma): `KarrasConsistencyPolicy.consistency_fn`
passes it, and also applies c_in to x, c_skip / c_out to the output and the [-1, 1] clip, so this
module is ConRFT's inner network only:

    time:  tau -> sinusoidal 16 (8 sin, 8 cos) -> Dense 32 -> tanh -> Dense 16
    cond:  Dense(cond_proj_dim) -> LayerNorm -> tanh      (ConRFT does this to proprio; optional)
    trunk: concat[x flattened (T*Da), time (16), cond] -> [Dense -> LayerNorm -> tanh] x hidden_dims
           -> Dense(T*Da)

Every Dense kernel is xavier-uniform with a zero bias and LayerNorm eps is 1e-6, as in flax.
ConRFT predicts one action (T = 1); a chunk (B, T, Da) is flattened, so T > 1 works too.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from policylab.models.unet1d import SinusoidalPosEmb, Timestep

LAYER_NORM_EPS = 1e-6  # flax's nn.LayerNorm default, not torch's 1e-5


def _dense(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _dense_ln_tanh(in_features: int, out_features: int) -> nn.Sequential:
    return nn.Sequential(_dense(in_features, out_features), nn.LayerNorm(out_features, eps=LAYER_NORM_EPS), nn.Tanh())


class ConRFTMLP(nn.Module):
    """ConRFT's actor MLP on a (B, T, Da) action chunk with a global observation condition.

    input_dim: Da. global_cond_dim: Dc, the encoded observation window (B, Dc).
    horizon: T, the chunk length the first layer is sized for.
    hidden_dims: trunk widths (ConRFT: [256, 256]). time_dim: size of the sinusoidal embedding and
    of the time feature (ConRFT: 16; its hidden layer is twice that).
    cond_proj_dim: width of the Dense -> LayerNorm -> tanh applied to the condition first (ConRFT:
    64 on proprio); None feeds the condition to the trunk as it is.
    """

    # How a policy feeds it observations: one flat vector (B, To*Do) as `global_cond`.
    obs_conditioning = "global"

    def __init__(self, input_dim: int, global_cond_dim: int, horizon: int = 1,
                 hidden_dims: Sequence[int] = (256, 256), time_dim: int = 16, cond_proj_dim: int | None = 64):
        super().__init__()
        if time_dim % 2:
            raise ValueError(f"time_dim must be even (half sines, half cosines), got {time_dim}")
        self.input_dim, self.global_cond_dim, self.horizon = input_dim, global_cond_dim, horizon
        self.time_mlp = nn.Sequential(
            SinusoidalPosEmb(time_dim), _dense(time_dim, 2 * time_dim), nn.Tanh(), _dense(2 * time_dim, time_dim))
        if cond_proj_dim is None:
            self.cond_proj, cond_features = nn.Identity(), global_cond_dim
        else:
            self.cond_proj, cond_features = _dense_ln_tanh(global_cond_dim, cond_proj_dim), cond_proj_dim
        widths = [horizon * input_dim + time_dim + cond_features, *hidden_dims]
        # activate_final: the last hidden layer has its LayerNorm and tanh too, before the output Dense
        self.trunk = nn.Sequential(*(_dense_ln_tanh(a, b) for a, b in itertools.pairwise(widths)))
        self.head = _dense(widths[-1], horizon * input_dim)

    def forward(self, sample: torch.Tensor, timestep: Timestep, global_cond: torch.Tensor) -> torch.Tensor:
        """`sample (B, T, Da)`, `timestep (B,)` or a scalar (250 ln sigma), `global_cond (B, Dc)`
        -> `(B, T, Da)`."""
        batch = sample.shape[0]
        if tuple(sample.shape[1:]) != (self.horizon, self.input_dim):
            raise ValueError(f"sample must be (B, T={self.horizon}, Da={self.input_dim}), got {tuple(sample.shape)}; "
                             "the backbone's horizon must equal the policy's")
        if global_cond.shape != (batch, self.global_cond_dim):
            raise ValueError(f"global_cond must be (B={batch}, {self.global_cond_dim}), got {tuple(global_cond.shape)}")
        tau = torch.as_tensor(timestep, device=sample.device, dtype=sample.dtype).reshape(-1).expand(batch)
        features = torch.cat([sample.reshape(batch, -1), self.time_mlp(tau), self.cond_proj(global_cond)], dim=-1)
        return self.head(self.trunk(features)).reshape(batch, self.horizon, self.input_dim)
