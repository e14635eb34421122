"""The models behind the planner (Schubert et al. 2023, §3 and §4).

- `TrajectoryTransformer`: a decoder-only transformer over per-dimension tokens (tdm.tokenizer).
  As a TDM (`role="dynamics"`) it is trained with cross-entropy on the state and reward tokens
  and predicts the next state token by token; as a generalist policy (`role="policy"`, the
  behaviour-cloning baseline of §5.3) the same network is trained on the action tokens.
- `MLPDynamics`: the MLP baselines on the same data: one deterministic MLP (MSE), or a
  probabilistic ensemble (PETS, Chua et al. 2018: Gaussian heads, NLL, bounded log-variance,
  trajectory sampling TS-∞ where each candidate follows one member).

Both expose `imagine(history, actions) -> (rewards (N, H), next observations (N, H, D))`: roll N
candidate action sequences (N, H, A) forward from the end of a real history, the only thing a
planner needs from a model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from common.kernels.attention import KVCache, attention, decode_attention
from tdm.tokenizer import Tokenizer

ROLES = ("dynamics", "policy")


@dataclass
class History:
    """The real trajectory so far: obs (t + 1, D), actions (t, A), rewards (t,), float32."""

    obs: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor

    def last(self, steps: int) -> History:
        """The last `steps` complete timesteps and the current observation."""
        t = self.actions.shape[0]
        s = max(0, t - steps)
        return History(self.obs[s:], self.actions[s:], self.rewards[s:])


@dataclass
class TransformerConfig:
    dim: int = 128
    layers: int = 4
    heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    max_timesteps: int = 33  # timestep embeddings: rows of the longest window (+ the next state)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class Block(nn.Module):
    """Pre-LayerNorm causal self-attention + GELU MLP (GPT-2)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.norm1, self.norm2 = nn.LayerNorm(cfg.dim), nn.LayerNorm(cfg.dim)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        b, t, _ = x.shape
        h, d = self.cfg.heads, self.cfg.head_dim
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
        if cache is None:
            y = attention(q, k, v, causal=True)
        else:
            cache.append(k, v)
            y = decode_attention(q, cache)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(b, t, h * d)))
        return x + self.drop(self.mlp(self.norm2(x)))


class TrajectoryTransformer(nn.Module):
    """Tokens (B, L) of rows [o¹…o^D, a¹…a^A, r] → next-token logits (B, L, bins).

    Token i of a window is slot i mod S of row i div S: its embedding is
    token + slot + timestep (all learned), the Gato-style local position encoding (§2.1)."""

    def __init__(self, cfg: TransformerConfig, tokenizer: Tokenizer, role: str):
        super().__init__()
        if role not in ROLES:
            raise ValueError(f"role={role!r} is not valid: one of {ROLES}")
        self.cfg, self.tokenizer, self.role = cfg, tokenizer, role
        self.slots = tokenizer.slots
        self.token_embed = nn.Embedding(tokenizer.bins, cfg.dim)
        self.slot_embed = nn.Embedding(self.slots, cfg.dim)
        self.time_embed = nn.Embedding(cfg.max_timesteps, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, tokenizer.bins, bias=False)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2's scaled init of the residual projections
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * cfg.layers))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, tokens: torch.Tensor, start: int = 0, caches: list[KVCache] | None = None
    ) -> torch.Tensor:
        """tokens (B, L) at window positions start … start + L − 1 (the window begins at a row
        boundary). With `caches`, append to them and attend to everything cached."""
        pos = torch.arange(start, start + tokens.shape[1], device=tokens.device)
        if int(pos[-1]) // self.slots >= self.cfg.max_timesteps:
            raise ValueError(
                f"a window of {int(pos[-1]) // self.slots + 1} timesteps; the model embeds "
                f"{self.cfg.max_timesteps} (model.window + 1)"
            )
        x = (
            self.token_embed(tokens)
            + self.slot_embed(pos % self.slots)
            + self.time_embed(pos // self.slots)
        )
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.norm(x))

    def target_mask(self, length: int, device=None) -> torch.Tensor:
        """(length,) bool: which tokens are trained on — state and reward tokens for a TDM,
        action tokens for a policy; never token 0 (nothing precedes it)."""
        slot = torch.arange(length, device=device) % self.slots
        d, a = self.tokenizer.obs_dim, self.tokenizer.act_dim
        is_action = (slot >= d) & (slot < d + a)
        mask = is_action if self.role == "policy" else ~is_action
        mask[0] = False
        return mask

    def loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the role's target tokens given all tokens before them."""
        logits = self(tokens[:, :-1])
        mask = self.target_mask(tokens.shape[1], tokens.device)[1:]
        return F.cross_entropy(logits[:, mask].flatten(0, 1), tokens[:, 1:][:, mask].flatten())

    def new_caches(self, batch: int, max_len: int) -> list[KVCache]:
        p = self.head.weight
        return [
            KVCache.allocate(
                batch, self.cfg.heads, max_len, self.cfg.head_dim, dtype=p.dtype, device=p.device
            )
            for _ in self.blocks
        ]

    def history_tokens(self, history: History) -> torch.Tensor:
        """(1, t · S + D): the complete rows of `history`, then the current observation."""
        tok = self.tokenizer
        rows = tok.encode_steps(history.obs[:-1], history.actions, history.rewards)
        return torch.cat([rows, tok.encode(history.obs[-1], "obs")])[None].to(
            self.head.weight.device
        )

    @torch.no_grad()
    def imagine(
        self, history: History, actions: torch.Tensor, *, context: int, use_cache: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """TDM rollout of candidates actions (N, H, A) after the last `context` rows of history.

        Per step: feed the action tokens, read the reward as the expectation over its bins, feed
        the greedy reward token, then predict the next state one dimension at a time, feeding
        each greedy token back (N forward passes of 1 token with the KV cache; without it, every
        pass reruns the whole window — the speed baseline)."""
        if self.role != "dynamics":
            raise ValueError("imagine needs a dynamics model (role=dynamics)")
        tok = self.tokenizer
        n, horizon, _ = actions.shape
        d = tok.obs_dim
        device = self.head.weight.device
        prefix = self.history_tokens(history.last(context)).expand(n, -1)
        action_tokens = tok.encode(actions.to(device), "action")
        reward_values = tok.bin_values("reward")[:, 0].to(device)
        caches = self.new_caches(n, prefix.shape[1] + horizon * self.slots) if use_cache else None
        seq = prefix[:, :0]

        def step(new: torch.Tensor) -> torch.Tensor:
            nonlocal seq
            start = seq.shape[1]
            seq = torch.cat([seq, new], 1)
            if use_cache:
                return self(new, start, caches)[:, -1]
            return self(seq)[:, -1]

        pending = prefix
        rewards, states = [], []
        for h in range(horizon):
            logits = step(torch.cat([pending, action_tokens[:, h]], 1))
            rewards.append(logits.softmax(-1) @ reward_values)
            logits = step(logits.argmax(-1, keepdim=True))
            state = [logits.argmax(-1, keepdim=True)]
            for _ in range(d - 1):
                state.append(step(state[-1]).argmax(-1, keepdim=True))
            state = torch.cat(state, 1)
            states.append(tok.decode(state, "obs"))
            pending = state[:, -1:]  # o¹ … o^(D-1) were fed while predicting the next one
        return torch.stack(rewards, 1), torch.stack(states, 1)

    @torch.no_grad()
    def act(self, history: History, *, context: int) -> torch.Tensor:
        """Generalist-policy action (A,) after the last `context` rows: greedy action tokens."""
        if self.role != "policy":
            raise ValueError("act needs a policy model (role=policy)")
        seq = self.history_tokens(history.last(context))
        action = []
        for _ in range(self.tokenizer.act_dim):
            action.append(self(seq)[:, -1].argmax(-1, keepdim=True))
            seq = torch.cat([seq, action[-1]], 1)
        return self.tokenizer.decode(torch.cat(action, 1)[0], "action").clamp(-1, 1).cpu()

    def config_dict(self) -> dict:
        return asdict(self.cfg)


class EnsembleLinear(nn.Module):
    """E independent linear layers applied as one batched matmul: (E, B, in) → (E, B, out)."""

    def __init__(self, members: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(members, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(members, 1, d_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class MLPDynamics(nn.Module):
    """(o_t, a_t) → (o_{t+1} − o_t, r_t), inputs and targets standardised with training data.

    members = 1, probabilistic = False: the deterministic MLP (MSE). members = E, probabilistic:
    PETS's ensemble, each head a diagonal Gaussian with log-variance softly bounded between
    learned limits (Chua et al. 2018, App. A.1), trained with the Gaussian NLL."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: int,
        layers: int,
        members: int,
        probabilistic: bool,
        stats: dict[str, torch.Tensor],
    ):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.members, self.probabilistic = members, probabilistic
        out = obs_dim + 1
        dims = [obs_dim + act_dim] + [hidden] * layers
        self.body = nn.ModuleList(
            EnsembleLinear(members, a, b) for a, b in zip(dims, dims[1:], strict=False)
        )
        self.head = EnsembleLinear(members, hidden, 2 * out if probabilistic else out)
        self.max_logvar = nn.Parameter(torch.full((1, 1, out), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, out), -10.0))
        for name in ("in_mean", "in_std", "out_mean", "out_std"):
            self.register_buffer(name, stats[name].float())

    @staticmethod
    def fit_stats(obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor) -> dict:
        """Standardisation from transitions obs (n, T + 1, D), actions (n, T, A), rewards (n, T)."""
        x = torch.cat([obs[:, :-1], actions], -1).flatten(0, 1)
        y = torch.cat([obs[:, 1:] - obs[:, :-1], rewards[..., None]], -1).flatten(0, 1)
        return {
            "in_mean": x.mean(0),
            "in_std": x.std(0).clamp_min(1e-6),
            "out_mean": y.mean(0),
            "out_std": y.std(0).clamp_min(1e-6),
        }

    def forward(self, obs: torch.Tensor, actions: torch.Tensor):
        """obs (E, B, D), actions (E, B, A) → standardised mean (E, B, D + 1) and log-variance
        (None when deterministic)."""
        x = (torch.cat([obs, actions], -1) - self.in_mean) / self.in_std
        for layer in self.body:
            x = F.silu(layer(x))
        y = self.head(x)
        if not self.probabilistic:
            return y, None
        mean, logvar = y.chunk(2, -1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def loss(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        next_obs: torch.Tensor,
        rewards: torch.Tensor,
    ) -> torch.Tensor:
        """Batches with a leading member axis E (each member its own minibatch)."""
        target = torch.cat([next_obs - obs, rewards[..., None]], -1)
        target = (target - self.out_mean) / self.out_std
        mean, logvar = self(obs, actions)
        if logvar is None:
            return F.mse_loss(mean, target)
        nll = ((mean - target) ** 2 * torch.exp(-logvar) + logvar).mean()
        return nll + 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())

    @torch.no_grad()
    def predict(self, obs: torch.Tensor, actions: torch.Tensor, generator=None):
        """One step for (N, D) obs and (N, A) actions; candidate n follows member n mod E and,
        when probabilistic, samples from its Gaussian (TS-∞). Returns next obs, reward."""
        n = obs.shape[0]
        member = torch.arange(n, device=obs.device) % self.members
        per = -(-n // self.members)
        order = torch.argsort(member, stable=True)
        pad = per * self.members - n

        def split(x):  # (N, ·) → (E, per, ·), member-major, padded with copies of the last row
            x = torch.cat([x[order], x[order][-1:].expand(pad, -1)], 0)
            return x.view(self.members, per, -1)

        mean, logvar = self(split(obs), split(actions))
        if logvar is not None:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device)
            mean = mean + noise * (0.5 * logvar).exp()
        y = (mean * self.out_std + self.out_mean).reshape(-1, self.obs_dim + 1)[:n]
        y = y[torch.argsort(order)]
        return obs + y[:, :-1], y[:, -1]

    @torch.no_grad()
    def imagine(self, history: History, actions: torch.Tensor, generator=None):
        """Markov rollout from the current observation (the MLPs see no history)."""
        n, horizon, _ = actions.shape
        device = self.in_mean.device
        obs = history.obs[-1].to(device).expand(n, -1)
        rewards, states = [], []
        for h in range(horizon):
            obs, r = self.predict(obs, actions[:, h].to(device), generator)
            rewards.append(r)
            states.append(obs)
        return torch.stack(rewards, 1), torch.stack(states, 1)
