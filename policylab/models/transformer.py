"""Diffusion Policy's time-series diffusion transformer (DP-T).

A minGPT-style decoder over the `T` action tokens that cross-attends to a condition sequence
`[diffusion step, obs_0 .. obs_{To-1}]`. Attribute names follow Diffusion Policy's
`TransformerForDiffusion`, so a DP state_dict loads by name after dropping its empty
`_dummy_variable` (which DP adds only to find the module's device).
"""


import torch
from torch import nn

from policylab.models.unet1d import SinusoidalPosEmb, Timestep

# Scale of the normal init of linear weights and positional embeddings (GPT-2, kept by DP).
INIT_STD = 0.02
# Width of the feed-forward layers relative to n_emb.
FFN_MULT = 4


def _encoder_layer(n_emb: int, n_head: int, p_drop: float) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(
        d_model=n_emb, nhead=n_head, dim_feedforward=FFN_MULT * n_emb, dropout=p_drop,
        activation="gelu", batch_first=True, norm_first=True,
    )


def _additive_mask(allowed: torch.Tensor) -> torch.Tensor:
    """Boolean `allowed` -> float mask for nn.Transformer: 0 where allowed, -inf elsewhere."""
    return torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))


class TransformerForDiffusion(nn.Module):
    """Noise-prediction transformer: `sample (B, T, input_dim)` -> `(B, T, output_dim)`.

    - `time_as_cond=True` (the DP default): the step embedding is the first memory token and the
      action tokens go through a decoder. With `obs_as_cond`, the `To` observation features
      `cond: (B, To, cond_dim)` follow it in memory.
    - `time_as_cond=False`: BERT-like encoder over `[time, a_0 .. a_{T-1}]`, no obs condition.
    - `causal_attn`: action token t attends to action tokens <= t and to memory tokens
      `[time, obs_0 .. obs_t]`.
    - `n_cond_layers=0` encodes memory with an MLP, otherwise with that many encoder layers.

    `obs_as_cond` defaults to `cond_dim > 0`; DP silently overrode the argument that way, here a
    contradiction raises. DP's lowdim PushT config (input/output 2, horizon 16, To 2,
    cond_dim 20, 8 layers, 4 heads, n_emb 256, causal) has 8,965,122 parameters.
    """

    # How a policy feeds it observations: one token per step (B, To, Do) as `cond`.
    obs_conditioning = "tokens"

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        horizon: int,
        n_obs_steps: int | None = None,
        cond_dim: int = 0,
        n_layer: int = 12,
        n_head: int = 12,
        n_emb: int = 768,
        p_drop_emb: float = 0.1,
        p_drop_attn: float = 0.1,
        causal_attn: bool = False,
        time_as_cond: bool = True,
        obs_as_cond: bool | None = None,
        n_cond_layers: int = 0,
    ):
        super().__init__()
        n_obs_steps = horizon if n_obs_steps is None else n_obs_steps
        obs_as_cond = cond_dim > 0 if obs_as_cond is None else obs_as_cond
        if obs_as_cond != (cond_dim > 0):
            raise ValueError(
                f"obs_as_cond={obs_as_cond} contradicts cond_dim={cond_dim} (obs need cond_dim > 0)"
            )
        if obs_as_cond and not time_as_cond:
            raise ValueError("obs_as_cond requires time_as_cond (obs tokens join the time token)")

        # Token counts: T for the trunk, T_cond for the memory (time token + obs tokens).
        T = horizon if time_as_cond else horizon + 1
        T_cond = (1 if time_as_cond else 0) + (n_obs_steps if obs_as_cond else 0)

        self.input_emb = nn.Linear(input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, T, n_emb))
        self.drop = nn.Dropout(p_drop_emb)
        self.time_emb = SinusoidalPosEmb(n_emb)
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb) if obs_as_cond else None

        self.cond_pos_emb = None
        self.encoder_only = T_cond == 0
        if self.encoder_only:
            self.encoder = nn.TransformerEncoder(
                _encoder_layer(n_emb, n_head, p_drop_attn), num_layers=n_layer,
                enable_nested_tensor=False,
            )
            self.decoder = None
        else:
            self.cond_pos_emb = nn.Parameter(torch.zeros(1, T_cond, n_emb))
            self.encoder = self._cond_encoder(n_emb, n_head, p_drop_attn, n_cond_layers)
            decoder_layer = nn.TransformerDecoderLayer(
                d_model=n_emb, nhead=n_head, dim_feedforward=FFN_MULT * n_emb,
                dropout=p_drop_attn, activation="gelu", batch_first=True,
                norm_first=True,  # pre-LN: DP found it important for stability
            )
            self.decoder = nn.TransformerDecoder(decoder_layer, num_layers=n_layer)

        self._register_masks(T, T_cond, causal_attn, time_as_cond and obs_as_cond)

        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, output_dim)

        self.T = T
        self.T_cond = T_cond
        self.horizon = horizon
        self.n_obs_steps = n_obs_steps
        self.cond_dim = cond_dim
        self.input_dim = input_dim
        self.time_as_cond = time_as_cond
        self.obs_as_cond = obs_as_cond
        self._init_weights()

    @staticmethod
    def _cond_encoder(n_emb: int, n_head: int, p_drop: float, n_cond_layers: int) -> nn.Module:
        if n_cond_layers > 0:
            return nn.TransformerEncoder(
                _encoder_layer(n_emb, n_head, p_drop), num_layers=n_cond_layers,
                enable_nested_tensor=False,
            )
        return nn.Sequential(
            nn.Linear(n_emb, FFN_MULT * n_emb), nn.Mish(), nn.Linear(FFN_MULT * n_emb, n_emb)
        )

    def _register_masks(self, T: int, T_cond: int, causal: bool, obs_in_memory: bool) -> None:
        """Persistent buffers, as in DP, so DP state_dicts (which hold them) load strictly."""
        mask = memory_mask = None
        if causal:
            t = torch.arange(T)
            mask = _additive_mask(t[:, None] >= t[None, :])
            if obs_in_memory:
                # Memory index s holds obs s-1 (index 0 is the time token): token t sees obs <= t.
                s = torch.arange(T_cond)
                memory_mask = _additive_mask(t[:, None] >= s[None, :] - 1)
        self.register_buffer("mask", mask)
        self.register_buffer("memory_mask", memory_mask)

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                    if getattr(module, name) is not None:
                        nn.init.normal_(getattr(module, name), mean=0.0, std=INIT_STD)
                for name in ("in_proj_bias", "bias_k", "bias_v"):
                    if getattr(module, name) is not None:
                        nn.init.zeros_(getattr(module, name))
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.pos_emb, mean=0.0, std=INIT_STD)
        if self.cond_pos_emb is not None:
            nn.init.normal_(self.cond_pos_emb, mean=0.0, std=INIT_STD)

    def get_optim_groups(self, weight_decay: float = 1e-3) -> list[dict]:
        """Two AdamW parameter groups: Linear/attention weights decay by `weight_decay`;
        biases, LayerNorm/Embedding weights and positional embeddings do not (minGPT's rule)."""
        decay, no_decay = set(), set()
        for module_name, module in self.named_modules():
            for param_name, _ in module.named_parameters(recurse=False):
                full_name = f"{module_name}.{param_name}" if module_name else param_name
                # MultiheadAttention names its biases in_proj_bias, bias_k, bias_v.
                if param_name.endswith("bias") or param_name.startswith("bias"):
                    no_decay.add(full_name)
                elif isinstance(module, (nn.Linear, nn.MultiheadAttention)):
                    decay.add(full_name)
                else:
                    no_decay.add(full_name)
        params = dict(self.named_parameters())
        return [
            {"params": [params[n] for n in sorted(decay)], "weight_decay": weight_decay},
            {"params": [params[n] for n in sorted(no_decay)], "weight_decay": 0.0},
        ]

    def forward(
        self, sample: torch.Tensor, timestep: Timestep, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`sample: (B, T, input_dim)`, `timestep: (B,)` or scalar, `cond: (B, To, cond_dim)`
        (required iff `obs_as_cond`) -> `(B, T, output_dim)`."""
        self._check_inputs(sample, cond)
        B, T = sample.shape[:2]
        timesteps = torch.as_tensor(timestep, device=sample.device)
        timesteps = timesteps.to(sample.dtype).reshape(-1).expand(B)
        time_emb = self.time_emb(timesteps).unsqueeze(1)  # (B, 1, n_emb)
        input_emb = self.input_emb(sample)  # (B, T, n_emb)

        if self.encoder_only:
            tokens = torch.cat([time_emb, input_emb], dim=1)
            x = self.drop(tokens + self.pos_emb[:, : tokens.shape[1]])
            x = self.encoder(src=x, mask=self.mask)[:, 1:]  # drop the time token
        else:
            memory = time_emb
            if self.obs_as_cond:
                memory = torch.cat([memory, self.cond_obs_emb(cond)], dim=1)
            memory = self.encoder(self.drop(memory + self.cond_pos_emb[:, : memory.shape[1]]))
            x = self.drop(input_emb + self.pos_emb[:, :T])
            x = self.decoder(
                tgt=x, memory=memory, tgt_mask=self.mask, memory_mask=self.memory_mask
            )
        return self.head(self.ln_f(x))

    def _check_inputs(self, sample: torch.Tensor, cond: torch.Tensor | None) -> None:
        if sample.ndim != 3 or sample.shape[1:] != (self.horizon, self.input_dim):
            raise ValueError(
                f"sample must be (B, {self.horizon}, {self.input_dim}), got {tuple(sample.shape)}"
            )
        if (cond is not None) != self.obs_as_cond:
            raise ValueError("cond must be given iff obs_as_cond")
        expected = (sample.shape[0], self.n_obs_steps, self.cond_dim)
        if cond is not None and cond.shape != expected:
            raise ValueError(f"cond must be {expected}, got {tuple(cond.shape)}")
