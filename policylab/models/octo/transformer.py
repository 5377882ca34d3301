"""Block-wise causal transformer over named token groups (Octo's `BlockTransformer`).

The sequence is ``[prefix groups] + per timestep [timestep groups]``. Who attends to whom is
decided per pair of groups by an `AttentionRule` looked up with fnmatch patterns on the other
group's name (first match wins, no match = NEVER), then AND-ed with a key-padding mask built from
the groups' masks. Octo's rules:

- task prefix (``task_*``): attends to ``task_*`` only;
- observations (``obs_*``): ``task_*`` and ``obs_*`` at timesteps <= own;
- readouts (``readout_<name>``): ``task_*``, ``obs_*`` and their own readout at timesteps <= own;
  nothing else attends to a readout, so readouts read without writing.

Blocks are pre-LN ViT blocks with Flax conventions: LayerNorm eps 1e-6, GELU with the tanh
approximation, masked logits replaced by the dtype's most negative finite value (not -inf), so
fully masked rows (padding queries) give a uniform average instead of NaN.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PREFIX_TIMESTEP = -1


class AttentionRule(enum.Enum):
    """When a token at timestep t attends to a token of another group at timestep t'."""

    NEVER = "never"
    CAUSAL = "t' <= t"
    CURRENT = "t' == t"
    STRICT_PAST = "t' < t"


@dataclass
class TokenGroup:
    """A named group of tokens.

    Prefix groups: ``tokens (B, n, D)``, ``mask (B, n)``. Timestep groups: ``tokens (B, To, n, D)``,
    ``mask (B, To, n)``. ``mask`` is True for real tokens, False for padding.
    """

    name: str
    tokens: torch.Tensor
    mask: torch.Tensor
    rules: Mapping[str, AttentionRule]

    @property
    def n_tokens(self) -> int:
        return self.tokens.shape[-2]


def find_rule(rules: Mapping[str, AttentionRule], other_name: str) -> AttentionRule:
    for pattern, rule in rules.items():
        if fnmatch.fnmatchcase(other_name, pattern):
            return rule
    return AttentionRule.NEVER


def _rule_allows(rule: AttentionRule, t_self: torch.Tensor, t_other: torch.Tensor) -> torch.Tensor:
    if rule is AttentionRule.CAUSAL:
        return t_other <= t_self
    if rule is AttentionRule.CURRENT:
        return t_other == t_self
    if rule is AttentionRule.STRICT_PAST:
        return t_other < t_self
    return torch.zeros_like(t_self, dtype=torch.bool)


def check_causality(prefix: Sequence[TokenGroup], timestep: Sequence[TokenGroup]) -> None:
    """Prefix tokens sit before all timesteps, so a prefix attending to a timestep group would
    read the future; reject such layouts."""
    for p in prefix:
        for g in timestep:
            if find_rule(p.rules, g.name) is not AttentionRule.NEVER:
                raise ValueError(f"prefix group {p.name!r} may not attend to timestep group {g.name!r}")


def group_attention_mask(
    prefix: Sequence[tuple[str, int, Mapping[str, AttentionRule]]],
    timestep: Sequence[tuple[str, int, Mapping[str, AttentionRule]]],
    horizon: int,
) -> torch.Tensor:
    """The rule part of the mask, independent of the batch.

    Args:
        prefix, timestep: ``(name, n_tokens, rules)`` per group, in sequence order.
        horizon: number of timesteps To.
    Returns:
        ``(N, N)`` bool, row = attending token, column = attended token,
        N = sum(prefix n) + To * sum(timestep n).
    """
    layout = list(prefix) + list(timestep)
    group_ids, steps = [], []
    for gid, (_, n, _) in enumerate(prefix):
        group_ids += [gid] * n
        steps += [PREFIX_TIMESTEP] * n
    for t in range(horizon):
        for gid, (_, n, _) in enumerate(timestep, start=len(prefix)):
            group_ids += [gid] * n
            steps += [t] * n
    group_ids, steps = torch.tensor(group_ids), torch.tensor(steps)
    t_self, t_other = steps[:, None], steps[None, :]
    mask = torch.zeros(len(steps), len(steps), dtype=torch.bool)
    for gi, (_, _, rules) in enumerate(layout):
        rows = group_ids == gi
        for gj, (other_name, _, _) in enumerate(layout):
            rule = find_rule(rules, other_name)
            if rule is AttentionRule.NEVER:
                continue
            block = rows[:, None] & (group_ids == gj)[None, :]
            mask |= block & _rule_allows(rule, t_self, t_other)
    return mask


def assemble(prefix: Sequence[TokenGroup], timestep: Sequence[TokenGroup]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate groups into one sequence.

    Returns:
        tokens ``(B, N, D)`` and key mask ``(B, N)`` in the order prefix, then per timestep all
        timestep groups.
    """
    ref = timestep[0].tokens
    b, d = ref.shape[0], ref.shape[-1]
    pre_tokens = [g.tokens for g in prefix] or [ref.new_zeros(b, 0, d)]
    pre_mask = [g.mask.bool() for g in prefix] or [torch.ones(b, 0, dtype=torch.bool, device=ref.device)]
    step_tokens = torch.cat([g.tokens for g in timestep], dim=2).flatten(1, 2)
    step_mask = torch.cat([g.mask.bool() for g in timestep], dim=2).flatten(1, 2)
    tokens = torch.cat(pre_tokens + [step_tokens], dim=1)
    mask = torch.cat(pre_mask + [step_mask], dim=1)
    return tokens, mask


def split(output: torch.Tensor, prefix: Sequence[TokenGroup], timestep: Sequence[TokenGroup]) -> dict[str, TokenGroup]:
    """Inverse of `assemble`: ``(B, N, D)`` -> the groups with their output tokens."""
    n_prefix = sum(g.n_tokens for g in prefix)
    horizon = timestep[0].tokens.shape[1]
    out: dict[str, TokenGroup] = {}
    for g, tok in zip(prefix, output[:, :n_prefix].split([g.n_tokens for g in prefix], dim=1)):
        out[g.name] = TokenGroup(g.name, tok, g.mask, g.rules)
    steps = output[:, n_prefix:].unflatten(1, (horizon, -1))
    for g, tok in zip(timestep, steps.split([g.n_tokens for g in timestep], dim=2)):
        out[g.name] = TokenGroup(g.name, tok, g.mask, g.rules)
    return out


class MultiHeadAttention(nn.Module):
    """Self-attention with q/k/v packed into one projection (head-major within q, k and v)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x ``(B, N, D)``, bias ``(B, 1, N, N)`` additive (0 or most-negative finite) -> ``(B, N, D)``."""
        q, k, v = self.in_proj(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out_proj(y.transpose(1, 2).flatten(2))


class EncoderBlock(nn.Module):
    """Pre-LN block: ``x + MHA(LN0(x))`` then ``x + MLP(LN1(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = MultiHeadAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        # Flax's nn.gelu defaults to the tanh approximation; exact GELU is off by ~1e-3 per block.
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(approximate="tanh"), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool mask ``(B, N, N)`` -> additive bias ``(B, 1, N, N)``.

    Masked logits get the most negative finite value rather than -inf: a fully masked row then
    softmaxes to a uniform average (what Flax does) instead of NaN, and since |logit| is far below
    the float spacing at that magnitude, adding it is the same as replacing the logit.
    """
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)[:, None]


class BlockTransformer(nn.Module):
    """Stack of `EncoderBlock` with the final ``encoder_norm``; runs on token groups."""

    def __init__(self, dim: int, num_layers: int, num_heads: int, mlp_dim: int, eps: float):
        super().__init__()
        self.blocks = nn.ModuleList(EncoderBlock(dim, num_heads, mlp_dim, eps) for _ in range(num_layers))
        self.encoder_norm = nn.LayerNorm(dim, eps=eps)
        self._rule_mask_cache: dict[tuple, torch.Tensor] = {}

    def rule_mask(self, prefix: Sequence[TokenGroup], timestep: Sequence[TokenGroup], device) -> torch.Tensor:
        """``(N, N)`` rule mask, cached per group layout and window since it is batch independent."""
        horizon = timestep[0].tokens.shape[1]
        key = (
            tuple((g.name, g.n_tokens, tuple((p, r) for p, r in g.rules.items())) for g in prefix),
            tuple((g.name, g.n_tokens, tuple((p, r) for p, r in g.rules.items())) for g in timestep),
            horizon,
            str(device),
        )
        if key not in self._rule_mask_cache:
            check_causality(prefix, timestep)
            mask = group_attention_mask(
                [(g.name, g.n_tokens, g.rules) for g in prefix],
                [(g.name, g.n_tokens, g.rules) for g in timestep],
                horizon,
            )
            self._rule_mask_cache[key] = mask.to(device)
        return self._rule_mask_cache[key]

    def attention_mask(self, prefix: Sequence[TokenGroup], timestep: Sequence[TokenGroup]) -> torch.Tensor:
        """Full mask ``(B, N, N)``: group rules AND key padding (only columns are masked)."""
        _, key_mask = assemble(prefix, timestep)
        return self.rule_mask(prefix, timestep, key_mask.device)[None] & key_mask[:, None, :]

    def forward(self, prefix: Sequence[TokenGroup], timestep: Sequence[TokenGroup]) -> dict[str, TokenGroup]:
        """Groups in -> the same groups with output tokens (after ``encoder_norm``)."""
        x, key_mask = assemble(prefix, timestep)
        mask = self.rule_mask(prefix, timestep, x.device)[None] & key_mask[:, None, :]
        bias = attention_bias(mask, x.dtype)
        for block in self.blocks:
            x = block(x, bias)
        return split(self.encoder_norm(x), prefix, timestep)
