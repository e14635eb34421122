"""Memory models for recurrent PPO: S5 with a resettable scan (Lu et al. 2023, §3) and the
LSTM, GRU and Transformer baselines, behind one interface.

A memory core maps inputs x (B, T, H) with episode-start flags `reset` (B, T) and a carried
state to outputs (B, T, H) and the state after the last step, in two modes that compute the
same numbers (tested):

    forward(x, reset, state) -> (y, state)   the whole sequence at once (PPO updates);
    step(x, reset, state)    -> (y, state)   one step, x (B, H), reset (B,) (acting).

`reset[:, t]` is True where a new episode starts at step t: the state carried into step t is
dropped. Every state is one tensor with the batch on dim -2, so a minibatch of environments is
`state[..., idx, :]`. Cores: `S5`, `RNN` (LSTM or GRU cells), `WindowTransformer`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from common.kernels.attention import attention
from common.kernels.backend import resolve_backend
from common.kernels.scan import linear_scan, linear_scan_chunked
from common.kernels.scan.triton import TRITON_DTYPES

# ----------------------------------------------------------------------------------------- S5


def hippo_n(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues Λ (size,) and unitary eigenvectors V (size, size) of HiPPO-N, the normal part
    of HiPPO-LegS (S5, Smith et al. 2023, §4.1): S = A + p pᵀ with
    A_nk = −√(2n+1)√(2k+1) (n > k), −(n+1) (n = k), 0 (n < k) and p_n = √(n + ½).
    S = −½ I + K with K skew-symmetric, so Λ = −½ + i·eig(−iK) and V comes from `eigh`."""
    n = torch.arange(size, dtype=torch.float64)
    q = torch.sqrt(2 * n + 1)
    legs = -torch.tril(torch.outer(q, q), -1) - torch.diag(n + 1)
    p = torch.sqrt(n + 0.5)
    skew = legs + torch.outer(p, p) + 0.5 * torch.eye(size, dtype=torch.float64)
    imag, vectors = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    return torch.complex(torch.full_like(imag, -0.5), imag), vectors


class S5SSM(nn.Module):
    """The S5 state space layer (Smith et al. 2023, §3): a complex diagonal state x ∈ C^P,

        x_k = Λ̄ ⊙ x_{k−1} + B̄ u_k,   y_k = 2·Re(C̃ x_k) + D ⊙ u_k,

    ZOH discretisation with a learnable step Δ = exp(log_step):  Λ̄ = exp(ΛΔ),
    B̄ = (Λ̄ − 1)/Λ ⊙ B̃.  Λ is initialised from HiPPO-N in `blocks` diagonal blocks (S5 §4.1,
    the block-diagonal initialisation), B̃ = V⁻¹B and C̃ = CV in its eigenbasis. Conjugate
    symmetry: only one eigenvalue of each conjugate pair is kept (P = state_size / 2), hence 2·Re.
    `resettable=False` ignores episode starts, so the state leaks across episodes (the ablation).
    `scan`: auto (the Triton kernel for CUDA tensors, the chunked scan otherwise) | reference |
    triton | chunked, see `scan_path`.
    """

    def __init__(
        self,
        width: int,
        state_size: int,
        blocks: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        resettable: bool = True,
        scan: str = "auto",
    ):
        super().__init__()
        if state_size % (2 * blocks):
            raise ValueError(f"state_size={state_size} must be divisible by 2·blocks={2 * blocks}")
        block = state_size // blocks
        eigenvalues, vectors = hippo_n(block)
        keep = slice(0, block // 2)  # one eigenvalue of each conjugate pair
        lam = eigenvalues[keep].repeat(blocks)
        v_half = vectors[:, keep]  # (block, block/2)
        b = torch.randn(blocks, block, width, dtype=torch.float64) / math.sqrt(width)
        c = torch.randn(blocks, width, block, dtype=torch.float64) / math.sqrt(state_size)
        b_tilde = torch.cat([v_half.conj().T @ b[j].to(torch.complex128) for j in range(blocks)])
        c_tilde = torch.cat([c[j].to(torch.complex128) @ v_half for j in range(blocks)], dim=1)
        self.lambda_re = nn.Parameter(lam.real.float())
        self.lambda_im = nn.Parameter(lam.imag.float())
        self.b_re, self.b_im = (
            nn.Parameter(b_tilde.real.float()),
            nn.Parameter(b_tilde.imag.float()),
        )
        self.c_re, self.c_im = (
            nn.Parameter(c_tilde.real.float()),
            nn.Parameter(c_tilde.imag.float()),
        )
        self.d = nn.Parameter(torch.randn(width))
        log_dt = torch.rand(lam.shape[0]) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_step = nn.Parameter(log_dt)
        self.state_size, self.resettable, self.scan = lam.shape[0], resettable, scan
        self._cached_key, self._cached = None, None

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Λ̄ (P,), B̄ (P, H), C̃ (H, P)) by zero-order hold; Re Λ is kept ≤ −1e-4 (stable)."""
        lam = torch.complex(self.lambda_re.clamp(max=-1e-4), self.lambda_im)
        lam_bar = torch.exp(lam * torch.exp(self.log_step))
        b_bar = ((lam_bar - 1) / lam)[:, None] * torch.complex(self.b_re, self.b_im)
        return lam_bar, b_bar, torch.complex(self.c_re, self.c_im)

    def discretized(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`discretize()`, computed once while no gradient is needed (acting step by step) and
        again only after a parameter changes (an optimiser step bumps its version counter)."""
        if torch.is_grad_enabled():
            return self.discretize()
        key = [(p.data_ptr(), p._version) for p in self.parameters()]
        if key != self._cached_key:
            self._cached_key, self._cached = key, self.discretize()
        return self._cached

    def initial_state(self, batch: int) -> torch.Tensor:
        dtype = self.d.dtype.to_complex()
        return torch.zeros(batch, self.state_size, dtype=dtype, device=self.d.device)

    def scan_path(self, a: torch.Tensor, b: torch.Tensor) -> str:
        """The scan `forward` runs on (a, b): `auto` is "triton" where `linear_scan`'s dispatch
        picks the Triton kernel (CUDA tensors) and "chunked" elsewhere; other values as given."""
        if self.scan != "auto":
            return self.scan
        triton = resolve_backend("auto", a, b, dtypes=TRITON_DTYPES) == "triton"
        return "triton" if triton else "chunked"

    def forward(
        self, u: torch.Tensor, reset: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """u (B, T, H) → y (B, T, H) with ONE scan over the batch, episode starts included."""
        lam_bar, b_bar, c_tilde = self.discretized()
        bu = u.to(b_bar.dtype) @ b_bar.T  # (B, T, P)
        a = lam_bar.expand_as(bu)
        reset = reset if self.resettable else None
        path = self.scan_path(a, bu)
        if path == "chunked":
            x, last = linear_scan_chunked(a, bu, reset, state)
        else:
            x, last = linear_scan(a, bu, reset=reset, h0=state, backend=path)
        return 2 * (x @ c_tilde.T).real + self.d * u, last

    def step(
        self, u: torch.Tensor, reset: torch.Tensor, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """u (B, H): one recurrence step."""
        lam_bar, b_bar, c_tilde = self.discretized()
        if self.resettable:
            state = torch.where(reset[:, None], torch.zeros_like(state), state)
        x = lam_bar * state + u.to(b_bar.dtype) @ b_bar.T
        return 2 * (x @ c_tilde.T).real + self.d * u, x


class S5Block(nn.Module):
    """Pre-norm residual block: u + GLU(GELU(S5(LayerNorm(u)))), with the 'half GLU'
    y ⊙ σ(W y) of the S5 code base (S5 App. B)."""

    def __init__(self, width: int, **ssm_kwargs):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.ssm = S5SSM(width, **ssm_kwargs)
        self.gate = nn.Linear(width, width)

    def _mix(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = F.gelu(y)
        return u + y * torch.sigmoid(self.gate(y))

    def forward(self, u, reset, state):
        y, state = self.ssm(self.norm(u), reset, state)
        return self._mix(u, y), state

    def step(self, u, reset, state):
        y, state = self.ssm.step(self.norm(u), reset, state)
        return self._mix(u, y), state


class S5(nn.Module):
    """A stack of S5 blocks; state (layers, B, P) complex."""

    def __init__(self, width: int, layers: int, **ssm_kwargs):
        super().__init__()
        self.blocks = nn.ModuleList(S5Block(width, **ssm_kwargs) for _ in range(layers))

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.stack([blk.ssm.initial_state(batch) for blk in self.blocks])

    def forward(self, x, reset, state):
        states = []
        for blk, s in zip(self.blocks, state, strict=True):
            x, s = blk(x, reset, s)
            states.append(s)
        return x, torch.stack(states)

    def step(self, x, reset, state):
        states = []
        for blk, s in zip(self.blocks, state, strict=True):
            x, s = blk.step(x, reset, s)
            states.append(s)
        return x, torch.stack(states)


# ---------------------------------------------------------------------------------- LSTM, GRU


class RNN(nn.Module):
    """Stacked LSTM or GRU cells, state zeroed at episode starts. State: (layers, 2, B, H) for
    the LSTM (h and c), (layers, 1, B, H) for the GRU. The sequence mode is a loop over time
    (resets inside a sequence rule out the fused nn.LSTM; `bench.s4rl` also times nn.LSTM)."""

    def __init__(self, width: int, layers: int, cell: str = "lstm"):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell={cell!r} must be 'lstm' or 'gru'")
        make = nn.LSTMCell if cell == "lstm" else nn.GRUCell
        self.cells = nn.ModuleList(make(width, width) for _ in range(layers))
        self.parts = 2 if cell == "lstm" else 1

    def initial_state(self, batch: int) -> torch.Tensor:
        weight = self.cells[0].weight_hh
        return weight.new_zeros(len(self.cells), self.parts, batch, weight.shape[1])

    def step(self, x, reset, state):
        state = torch.where(reset[:, None], torch.zeros_like(state), state)
        states = []
        for cell, s in zip(self.cells, state, strict=True):
            if self.parts == 2:
                h, c = cell(x, (s[0], s[1]))
                states.append(torch.stack([h, c]))
            else:
                h = cell(x, s[0])
                states.append(h[None])
            x = h
        return x, torch.stack(states)

    def forward(self, x, reset, state):
        outputs = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], reset[:, t], state)
            outputs.append(y)
        return torch.stack(outputs, 1), state


# -------------------------------------------------------------------------------- Transformer


class TransformerBlock(nn.Module):
    """Pre-norm causal self-attention + GELU MLP. With `mask` (N, 1, L, L) bool (True = attend),
    SDPA does the attention; without one, `common.kernels.attention` (causal)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        n, length, width = x.shape
        # (3, N, heads, L, head_dim): the (B, H, T, D) layout of common attention and SDPA.
        q, k, v = self.qkv(self.norm1(x)).view(n, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        if mask is None:
            y = attention(q, k, v, causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(y.transpose(1, 2).reshape(n, length, width))
        return x + self.mlp(self.norm2(x))


class WindowTransformer(nn.Module):
    """The Transformer memory baseline: the output at step t is a causal Transformer applied to
    the last `window` + 1 inputs of the current episode (older steps and other episodes are
    masked). The state is the previous `window` inputs with a 'same episode' flag,
    (window, B, H + 1); both modes recompute every step's window, so they agree exactly and
    acting costs O(window) per layer per step instead of a growing O(t)."""

    def __init__(self, width: int, layers: int, heads: int, window: int):
        super().__init__()
        self.window, self.width = window, width
        self.position = nn.Parameter(torch.zeros(window + 1, width))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)

    def initial_state(self, batch: int) -> torch.Tensor:
        return self.position.new_zeros(self.window, batch, self.width + 1)

    def forward(self, x, reset, state):
        batch, steps, width = x.shape
        w = self.window
        past, past_valid = state[..., :width].transpose(0, 1), state[..., width].T  # (B, W, ·)
        seq = torch.cat([past, x], 1)  # (B, W + T, H)
        # Episode ids: the carried steps (if valid) belong to episode 0, the one running at t=0.
        episode = torch.cat([torch.where(past_valid > 0, 0, -1), torch.cumsum(reset.long(), 1)], 1)
        windows = seq.unfold(1, w + 1, 1).permute(0, 1, 3, 2)  # (B, T, W+1, H)
        ids = episode.unfold(1, w + 1, 1)  # (B, T, W+1)
        keep = ids == ids[..., -1:]  # steps of the query's episode
        causal = torch.tril(torch.ones(w + 1, w + 1, dtype=torch.bool, device=x.device))
        mask = causal & (keep[..., None, :] | torch.eye(w + 1, dtype=torch.bool, device=x.device))
        h = windows.reshape(batch * steps, w + 1, width) + self.position
        mask = mask.reshape(batch * steps, 1, w + 1, w + 1)
        for blk in self.blocks:
            h = blk(h, mask)
        y = self.norm(h[:, -1]).view(batch, steps, width)
        last_valid = (episode[:, -w:] == episode[:, -1:]).to(x.dtype)
        new_state = torch.cat([seq[:, -w:], last_valid[..., None]], -1).transpose(0, 1)
        return y, new_state

    def step(self, x, reset, state):
        y, state = self.forward(x[:, None], reset[:, None], state)
        return y[:, 0], state


# ------------------------------------------------------------------------------ actor-critic


def build_core(cfg) -> nn.Module:
    """The memory core named by `cfg.name` (s5 | lstm | gru | transformer)."""
    if cfg.name == "s5":
        return S5(
            cfg.width,
            cfg.layers,
            state_size=cfg.state_size,
            blocks=cfg.blocks,
            resettable=cfg.resettable,
            scan=cfg.scan,
        )
    if cfg.name in ("lstm", "gru"):
        return RNN(cfg.width, cfg.layers, cell=cfg.name)
    if cfg.name == "transformer":
        return WindowTransformer(cfg.width, cfg.layers, cfg.heads, cfg.window)
    raise ValueError(f"model.name={cfg.name!r} must be one of s5, lstm, gru, transformer")


def layer_init(layer: nn.Linear, gain: float = math.sqrt(2)) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ActorCritic(nn.Module):
    """Observation encoder → memory core → actor and critic heads (PPO, §4 of the paper uses
    PureJaxRL's recurrent PPO). Discrete actions: categorical logits; continuous (Box(-1, 1)):
    a Gaussian with a state-independent log-std."""

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, core: nn.Module, width: int):
        super().__init__()
        self.discrete = discrete
        self.encoder = nn.Sequential(layer_init(nn.Linear(obs_dim, width)), nn.GELU())
        self.core = core
        self.actor = nn.Sequential(
            layer_init(nn.Linear(width, width)),
            nn.Tanh(),
            layer_init(nn.Linear(width, action_dim), 0.01),
        )
        self.critic = nn.Sequential(
            layer_init(nn.Linear(width, width)), nn.Tanh(), layer_init(nn.Linear(width, 1), 1.0)
        )
        self.log_std = None if discrete else nn.Parameter(torch.zeros(action_dim))

    def initial_state(self, batch: int) -> torch.Tensor:
        return self.core.initial_state(batch)

    def distribution(self, features: torch.Tensor) -> torch.distributions.Distribution:
        out = self.actor(features)
        if self.discrete:
            return torch.distributions.Categorical(logits=out)
        return torch.distributions.Normal(out, self.log_std.exp().expand_as(out))

    def forward(self, obs, reset, state):
        """obs (B, T, O) → (action distribution over (B, T), value (B, T), state)."""
        features, state = self.core(self.encoder(obs), reset, state)
        return self.distribution(features), self.critic(features).squeeze(-1), state

    def step(self, obs, reset, state):
        """obs (B, O) → (distribution over (B,), value (B,), state)."""
        features, state = self.core.step(self.encoder(obs), reset, state)
        return self.distribution(features), self.critic(features).squeeze(-1), state

    def log_prob(
        self, dist: torch.distributions.Distribution, action: torch.Tensor
    ) -> torch.Tensor:
        lp = dist.log_prob(action)
        return lp if self.discrete else lp.sum(-1)

    def entropy(self, dist: torch.distributions.Distribution) -> torch.Tensor:
        ent = dist.entropy()
        return ent if self.discrete else ent.sum(-1)
