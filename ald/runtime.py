"""Asynchronous actors (Parisotto & Salakhutdinov 2021, §4; the actor/learner split of IMPALA).

Each actor owns `num_envs` environments and a copy of the acting network. It collects unrolls
of `unroll` steps, pushes them to the learner's trajectory queue, and picks up the newest
weights the learner has published before each unroll. Two runtimes share `actor_loop`:

- `ProcessRuntime` (default): actors are torch.multiprocessing processes on this machine.
- `RayRuntime` (`runtime=ray`, `pip install -e .[ray]`): actors are Ray actors, on a local
  Ray instance or on a cluster the user connects to; queues are `ray.util.queue.Queue`.

Unrolls travel as numpy arrays (time-major buffers transposed to batch-major (E, T, ...)).
"""

from __future__ import annotations

import queue
import time
from typing import Any

import numpy as np
import torch
import torch.multiprocessing as mp

from ald.envs import EPISODE_KEYS, make_env
from ald.model import build_net

Unroll = dict[str, Any]


class Actor:
    """Environments + acting network + the recurrent state carried across unrolls."""

    def __init__(self, spec: dict, task: Any, num_envs: int, unroll: int, seed: int) -> None:
        torch.manual_seed(seed)
        self.env = make_env(task, num_envs, seed)
        self.net = build_net(spec, self.env.obs_dim, self.env.num_actions)
        self.unroll, self.num_envs = unroll, num_envs
        self.obs = torch.as_tensor(self.env.reset())
        self.first = torch.ones(num_envs, dtype=torch.bool)
        self.state = self.net.initial_state(num_envs)

    def load(self, weights: dict[str, np.ndarray]) -> None:
        self.net.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})

    @torch.no_grad()
    def collect(self) -> Unroll:
        """One unroll: T steps of every env plus the bootstrap observation (T + 1 inputs)."""
        t_len, e = self.unroll, self.num_envs
        obs = torch.empty(t_len + 1, e, self.obs.shape[-1])
        first = torch.empty(t_len + 1, e, dtype=torch.bool)
        action = torch.empty(t_len, e, dtype=torch.int64)
        logits = torch.empty(t_len, e, self.env.num_actions)
        reward, done = torch.empty(t_len, e), torch.empty(t_len, e)
        finished: dict[str, list[float]] = {key: [] for key in EPISODE_KEYS}
        act_s = env_s = 0.0
        for t in range(t_len):
            obs[t], first[t] = self.obs, self.first
            tick = time.perf_counter()
            step_logits, _, self.state = self.net(
                self.obs[:, None], self.first[:, None], self.state
            )
            logits[t] = step_logits[:, 0]
            action[t] = torch.distributions.Categorical(logits=logits[t]).sample()
            tock = time.perf_counter()
            next_obs, r, d, info = self.env.step(action[t].numpy())
            env_s += time.perf_counter() - tock
            act_s += tock - tick
            reward[t], done[t] = torch.as_tensor(r), torch.as_tensor(d, dtype=torch.float32)
            self.obs = torch.as_tensor(next_obs)
            self.first = torch.as_tensor(d)
            if d.any():
                for key in finished:
                    finished[key].extend(info[key][d].tolist())
        obs[t_len], first[t_len] = self.obs, self.first
        tensors = {
            "obs": obs,
            "first": first,
            "action": action,
            "behaviour_logits": logits,
            "reward": reward,
            "done": done,
        }
        unroll = {k: v.transpose(0, 1).contiguous().numpy() for k, v in tensors.items()}
        unroll.update(finished=finished, act_s=act_s, env_s=env_s)
        return unroll


def actor_loop(
    actor_id: int,
    spec: dict,
    task: Any,
    num_envs: int,
    unroll: int,
    seed: int,
    trajectories: Any,
    weights: Any,
    stop: Any,
    max_unrolls: int | None = None,
) -> None:
    """Act until `stop.is_set()`: newest weights in, unrolls out. `trajectories.put` and
    `weights.get` take `timeout=` and raise queue.Full / queue.Empty (or their Ray subclasses)."""
    torch.set_num_threads(1)
    actor = Actor(spec, task, num_envs, unroll, seed)
    version = -1
    try:
        count = 0
        while not stop.is_set() and (max_unrolls is None or count < max_unrolls):
            newest = None
            while newest is None or not weights.empty():
                try:
                    newest = weights.get(timeout=0.5 if version < 0 else 0.001)
                except queue.Empty:
                    if version >= 0 or stop.is_set():
                        break
            if newest is not None:
                version = newest[0]
                actor.load(newest[1])
            if version < 0:
                continue
            item = actor.collect()
            item.update(actor=actor_id, version=version)
            while not stop.is_set():
                try:
                    trajectories.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue
            count += 1
    except KeyboardInterrupt:
        pass  # the learner handles Ctrl-C and shuts everything down
    finally:
        actor.env.close()


def _actor_args(cfg: Any, spec: dict, seed: int, actor_id: int) -> tuple:
    """`actor_loop`'s leading arguments for actor `actor_id` (both runtimes): its id, network,
    task, sizes and seed (`seed · 1000 + id`, so actors never share environment seeds)."""
    return (actor_id, spec, cfg.task, cfg.num_envs, cfg.unroll, seed * 1000 + actor_id)


def _numpy_weights(net: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in net.state_dict().items()}


class _Runtime:
    """What both runtimes share: publishing weights and taking unrolls off the queue."""

    trajectories: Any
    weights: list[Any]

    def publish(self, net: torch.nn.Module, version: int) -> None:
        """Replace each actor's pending weights with the newest."""
        payload = (version, _numpy_weights(net))
        for q in self.weights:
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            q.put(payload)

    def get(self, timeout: float = 600.0) -> Unroll:
        """The next unroll; raises if an actor died or nothing arrives within `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_actors()
            try:
                return self.trajectories.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no unroll from the actors in {timeout} s") from None

    def check_actors(self) -> None:
        """Raise if an actor has stopped."""
        raise NotImplementedError


class ProcessRuntime(_Runtime):
    """Actors as spawned processes; a bounded trajectory queue gives backpressure (actors wait
    when the learner falls behind, which bounds the policy lag)."""

    def __init__(self, cfg: Any, spec: dict, seed: int) -> None:
        ctx = mp.get_context("spawn")
        self.stop = ctx.Event()
        self.trajectories = ctx.Queue(maxsize=cfg.runtime.queue_size)
        self.weights = [ctx.Queue(maxsize=1) for _ in range(cfg.runtime.num_actors)]
        self.processes = [
            ctx.Process(
                target=actor_loop,
                args=(
                    *_actor_args(cfg, spec, seed, i),
                    self.trajectories,
                    self.weights[i],
                    self.stop,
                ),
                daemon=True,
            )
            for i in range(cfg.runtime.num_actors)
        ]
        for p in self.processes:
            p.start()

    def check_actors(self) -> None:
        for i, p in enumerate(self.processes):
            if p.exitcode is not None:
                raise RuntimeError(f"actor {i} exited with code {p.exitcode}")

    def close(self) -> None:
        """Stop the actors, wait briefly, then terminate any that are still running."""
        self.stop.set()
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and any(p.is_alive() for p in self.processes):
            try:  # drain so that actors blocked on a full queue can see the stop flag
                self.trajectories.get(timeout=0.1)
            except queue.Empty:
                pass
        for p in self.processes:
            if p.is_alive():
                p.terminate()
            p.join(timeout=5.0)
        for q in (self.trajectories, *self.weights):  # never block exit on unread items
            q.cancel_join_thread()
            q.close()


class _RayStop:
    """`is_set()` over a Ray queue that the learner fills to say stop."""

    def __init__(self, flag: Any) -> None:
        self.flag = flag

    def is_set(self) -> bool:
        return not self.flag.empty()


class RayRuntime(_Runtime):
    """The same actors as Ray actors (one CPU each): `ray.init()` is called if Ray is not
    already initialised, so a user connects to a cluster by calling `ray.init(address=...)`
    before `run`, or by setting RAY_ADDRESS."""

    def __init__(self, cfg: Any, spec: dict, seed: int) -> None:
        try:
            import ray
            from ray.util.queue import Queue
        except ImportError as error:
            raise ImportError("runtime=ray needs Ray: pip install -e .[ray]") from error
        if not ray.is_initialized():
            ray.init(num_cpus=cfg.runtime.ray_num_cpus, include_dashboard=False)
        self.ray = ray
        self.trajectories = Queue(maxsize=cfg.runtime.queue_size)
        self.weights = [Queue(maxsize=1) for _ in range(cfg.runtime.num_actors)]
        self.stop_flag = Queue(maxsize=1)
        remote = ray.remote(num_cpus=1)(_RayActor)
        self.actors = [
            remote.remote(
                *_actor_args(cfg, spec, seed, i), self.trajectories, self.weights[i], self.stop_flag
            )
            for i in range(cfg.runtime.num_actors)
        ]
        self.runs = [a.run.remote() for a in self.actors]

    def check_actors(self) -> None:
        done, _ = self.ray.wait(self.runs, timeout=0)
        for ref in done:
            self.ray.get(ref)  # re-raises the actor's error
            raise RuntimeError("a Ray actor stopped before the learner")

    def close(self) -> None:
        self.stop_flag.put(True)
        self.ray.wait(self.runs, num_returns=len(self.runs), timeout=10.0)
        for a in self.actors:
            self.ray.kill(a)


class _RayActor:
    def __init__(self, *args: Any) -> None:
        self.args = args

    def run(self) -> None:
        *head, stop_flag = self.args
        actor_loop(*head, _RayStop(stop_flag))


RUNTIMES = {"process": ProcessRuntime, "ray": RayRuntime}
