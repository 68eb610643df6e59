"""One asset's optimisation: live trainer and generators, one `step` per iteration, and
`snapshot` / `restore` / `retry` to and from a `RunState` (checkpoints and the NaN rollback).

An iteration (docs/METHOD.md "Training settings"): host-side draws (cameras, background, depth /
flip flags, timesteps; drawn ahead for `PLAN_CHUNK` iterations and sent to the device in one copy,
`IterationPlan`) -> render -> optional depth-as-input and horizontal flip -> encode ->
distillation gradient (method from `stages.methods.METHODS`; never a branch on its name; its
per-asset `MethodState` gives the noise and may update itself from the gradient) -> extra
losses (`stages.losses`) -> backward -> `GaussianTrainer.step` (clip, Adam, LR schedules,
densify / prune) -> one fused finiteness check. Nothing is read back from the device before that
check; loss terms stay on the device until `read_terms` (logging and checkpoint iterations). Nothing
is copied to the device either, outside the plan's one copy per chunk: the noise generator lives on
the device (SDS noise, VAE sampling), timesteps index a device `arange` (`stages.priors.guidance`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.cameras import Cameras, CameraSamplerParams, sample_training_cameras
from kernels.ddim import TimestepSample
from kernels.distill import DistillMethod, Schedule, latent_grad_loss
from kernels.gaussians import Gaussians
from kernels.render import RenderOutput, render
from kernels.trainer import GaussianTrainer
from stages.checkpoint import RunState
from stages.kernel_params import camera_params, trainer_params
from stages.losses import add_weighted, extra_losses, loss_weights
from stages.priors.guidance import make_guided_eps_from_config, perp_neg_params, perp_neg_weights, warm_embeddings

PLAN_CHUNK = 256   # iterations drawn ahead on the host and copied to the device at once


def depth_image(depth: Tensor) -> Tensor:
    """(B, H, W, 1) depth -> (B, H, W, 3) in [0, 1] (divided by each view's max) for encoding."""
    m = depth.detach().flatten(1).amax(dim=1).clamp_min(1e-8).view(-1, 1, 1, 1)
    return (depth / m).expand(-1, -1, -1, 3)


def sample_backgrounds(n: int, p_random: float, gen: torch.Generator) -> Tensor:
    """(n, 3): black, or with probability p_random a uniform random colour (per view)."""
    use = torch.rand(n, generator=gen) < p_random
    colours = torch.rand(n, 3, generator=gen)
    return torch.where(use[:, None], colours, torch.zeros_like(colours))


@dataclass
class IterationDraw:
    """The host-side random inputs of one iteration (drawn from the CPU generator `gen`)."""

    cameras: Cameras
    azimuths: list[float]
    background: Tensor
    use_depth: bool
    flip: bool
    ts: TimestepSample


def draw_iteration(it: int, batch: int, res: int, cam_p: CameraSamplerParams, aug, method: DistillMethod,
                   sched: Schedule, gen: torch.Generator) -> IterationDraw:
    """Cameras, backgrounds, depth/flip flags and timesteps, in the order that fixes a seed's run.

    All of it lives on the host, so reading these values (azimuths for the view prompts, the
    flags, the timesteps) never waits for the device."""
    cams = sample_training_cameras(batch, res, res, it, cam_p, gen)
    bg = sample_backgrounds(batch, aug.background_random_p, gen)
    use_depth = bool(torch.rand((), generator=gen) < aug.depth_input_p)
    flip = bool(torch.rand((), generator=gen) < aug.flip_p)
    ts = method.sample(it, sched, gen)
    return IterationDraw(cams, cams.azimuth_deg.tolist(), bg, use_depth, flip, ts)


class IterationPlan:
    """The host draws of iterations `first`..`first + n - 1`, their device tensors and the host
    generator's state after each draw (what a snapshot at that iteration saves).

    Cameras, backgrounds and Perp-Neg view weights of the whole chunk are packed into one float32
    tensor and copied to the device once (from pinned memory, without blocking, on CUDA), so the
    iterations themselves copy nothing from the host. The draws are the loop's own, in its order,
    so a seed gives the same run as drawing one iteration at a time."""

    def __init__(self, first: int, n: int, draw, gen: torch.Generator, device: torch.device,
                 view_weights=None) -> None:
        self.first, self.state0 = first, gen.get_state()
        self.draws: list[IterationDraw] = []
        self.states: list[Tensor] = []
        rows = []
        for it in range(first, first + n):
            d = draw(it)
            self.draws.append(d)
            self.states.append(gen.get_state())
            c = d.cameras
            cols = [c.viewmats.reshape(len(c), 16), c.Ks.reshape(len(c), 9), d.background.float(),
                    torch.stack([c.azimuth_deg, c.elevation_deg, c.radius, c.fovy], dim=1)]
            if view_weights is not None:
                cols.append(torch.tensor(view_weights(d.azimuths), dtype=torch.float32).reshape(len(c), -1))
            rows.append(torch.cat(cols, dim=1))
        packed = torch.stack(rows)                      # (n, B, 32 [+ weights])
        if device.type == "cuda":
            packed = packed.pin_memory()
        p = packed.to(device, non_blocking=True)
        n_, b = p.shape[:2]                             # split on the device into contiguous tensors
        self.viewmats = p[..., :16].reshape(n_, b, 4, 4).contiguous()
        self.Ks = p[..., 16:25].reshape(n_, b, 3, 3).contiguous()
        self.backgrounds = p[..., 25:28].contiguous()
        self.per_view = p[..., 28:32].transpose(1, 2).contiguous()   # (n, 4, B): az, el, radius, fovy
        self.view_weights = p[..., 32:].contiguous() if p.shape[2] > 32 else None

    def covers(self, it: int) -> bool:
        return self.first <= it < self.first + len(self.draws)

    def state_after(self, it: int) -> Tensor:
        """The host generator's state once iteration `it` (first - 1 .. last) has drawn."""
        return self.state0 if it == self.first - 1 else self.states[it - self.first]

    def at(self, it: int) -> tuple[IterationDraw, Cameras, Tensor, Tensor | None]:
        """(host draw, device cameras, device backgrounds (B, 3), device view weights or None)."""
        i = it - self.first
        d, v = self.draws[i], self.per_view[i]
        cams = Cameras(self.viewmats[i], self.Ks[i], d.cameras.width, d.cameras.height, v[0], v[1], v[2], v[3])
        return d, cams, self.backgrounds[i], (self.view_weights[i] if self.view_weights is not None else None)


def read_terms(history: list[dict]) -> None:
    """Replace the 0-d device tensors among `history`'s terms by floats, in one transfer.

    The loop keeps each iteration's norms on the device and reads them only on logging and
    checkpoint iterations (and at the end), so the other iterations never wait for the device.
    """
    slots = [(h, k) for h in history for k, v in h.items() if isinstance(v, Tensor)]
    if not slots:
        return
    values = torch.stack([h[k].detach().reshape(()).to(torch.float64) for h, k in slots]).tolist()
    for (h, k), v in zip(slots, values):
        h[k] = v


def check_finite(named: list[tuple[str, Tensor]]) -> None:
    """Raise FloatingPointError naming the first non-finite tensor; one device read for all."""
    ok = torch.stack([torch.isfinite(t).all() for _, t in named])
    if not bool(ok.all()):
        first = next(name for (name, _), good in zip(named, ok.tolist()) if not good)
        raise FloatingPointError(f"{first} is not finite")


def _host(state) -> dict[str, Tensor]:
    """A method state's tensors as host copies (a snapshot must not change with the live state)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in state.state_dict().items()}


def noise_seed(seed: int, attempt: int) -> int:
    """The noise generator's seed of retry `attempt` (0 = the first try)."""
    return (seed * 1_000_003 + 7_919 * attempt + 1) % (2**63 - 1)


class Optimisation:
    """The live state of one asset's generation and the iteration that advances it.

    Built from the config once per asset; `restore(fresh_state())` or `restore(checkpoint)` makes
    it live, `step(it)` runs iteration `it` (raising FloatingPointError on a non-finite value),
    `snapshot(it, elapsed_s)` captures a RunState, `retry(state, attempt)` rolls back to it with
    the noise of retry `attempt`.
    """

    def __init__(self, cfg, prompt: str, seed: int, prior) -> None:
        g = cfg.generate
        self.cfg, self.prompt, self.seed, self.prior = cfg, prompt, seed, prior
        from stages.methods import MethodContext, get_method

        self.method = get_method(g.method)      # its grad, sampler, params, schedule and state
        self.device = torch.device(prior.device)
        # alpha_bar as host floats (the float32 values): reading a_t never waits for the device
        self.alphas = tuple(prior.alphas_cumprod.detach().to("cpu", torch.float32).tolist())
        self.res = int(prior.image_size)
        self.batch = g.batch_views
        self.latent_shape = (self.batch, *prior.latent_shape)
        self.distill = self.method.params(cfg)
        self.schedule = self.method.schedule(cfg)
        self.method_ctx = MethodContext(self.latent_shape, self.device, prior)
        self.state = self.method.new_state(cfg, self.method_ctx)   # the method's per-asset state
        self.cameras = camera_params(cfg)
        self.trainer_params = trainer_params(cfg, seed)
        self.augment = g.augment
        self.loss_weights = loss_weights(g.losses)
        self.backend = g.render_backend
        self.perp_neg = perp_neg_params(cfg.prior)
        self.trainer: GaussianTrainer | None = None
        self.plan: IterationPlan | None = None
        self.gen = self.gen_noise = None
        self.history: list[dict] = []
        self.unet_calls = self.attempt = self.noise_seed = 0

    # state ---------------------------------------------------------------------------------------
    def fresh_state(self) -> RunState:
        """Iteration 0: the init's Gaussians, generators seeded from the asset's seed."""
        from stages.init import init_gaussians

        g0 = init_gaussians(self.cfg.init, self.prompt, torch.Generator().manual_seed(self.seed),
                            toy_catalogue=self.cfg.toy.catalogue or None)
        tr = GaussianTrainer(g0.to(self.device), self.trainer_params)
        gen = torch.Generator().manual_seed(self.seed + 1)
        ns = noise_seed(self.seed, 0)
        gn = torch.Generator(device=self.device).manual_seed(ns)
        state = self.method.new_state(self.cfg, self.method_ctx)
        state.reseed(gn)
        return RunState(0, tr.state_dict(), gen.get_state(), gn.get_state(), _host(state), 0, ns, [], 0, 0.0)

    def restore(self, st: RunState) -> None:
        g = Gaussians.from_state_dict(st.trainer["gaussians"]).to(self.device)
        self.trainer = GaussianTrainer(g, self.trainer_params)
        self.gen = torch.Generator()
        self.gen.set_state(st.gen)
        self.gen_noise = torch.Generator(device=self.device)   # on the device: no noise copied per iteration
        try:
            self.trainer.load_state_dict(st.trainer)
            self.gen_noise.set_state(st.gen_noise)
        except RuntimeError as e:  # a device generator's state only fits a generator of its device type
            raise ValueError(f"iteration-{st.iteration} state: its random generator states are not those of "
                             f"{self.device.type} generators ({e}); it was written on another device type or "
                             f"by a version that drew noise on the host. Move the asset's checkpoints/ folder "
                             f"aside to generate it again") from e
        self.state.load_state_dict({k: v.to(self.device, copy=True) for k, v in st.method_state.items()})
        self.history = list(st.history)
        self.unet_calls = st.unet_calls
        self.attempt, self.noise_seed = st.attempt, st.noise_seed
        warm_embeddings(self.prior, self.cfg.prior, self.prompt)  # the text encoder runs here, not mid-run
        self._plan_from(st.iteration + 1)

    def _plan_from(self, first: int) -> None:
        n = min(PLAN_CHUNK, self.cfg.generate.iterations - first + 1)
        if n < 1:
            self.plan = None
            return
        weights = (lambda az: perp_neg_weights(az, self.perp_neg)) if self.perp_neg is not None else None
        self.plan = IterationPlan(first, n, self._draw, self.gen, self.device, weights)

    def _draw(self, it: int) -> IterationDraw:
        return draw_iteration(it, self.batch, self.res, self.cameras, self.augment, self.method, self.schedule,
                              self.gen)

    def retry(self, st: RunState, attempt: int) -> None:
        """Back to `st` with a new noise seed (and fixed noise) for retry number `attempt`."""
        self.restore(st)
        self.attempt, self.noise_seed = attempt, noise_seed(self.seed, attempt)
        self.gen_noise = torch.Generator(device=self.device).manual_seed(self.noise_seed)
        self.state.reseed(self.gen_noise)

    def snapshot(self, iteration: int, elapsed_s: float) -> RunState:
        read_terms(self.history)
        gen = (self.plan.state_after(iteration) if self.plan is not None
               and self.plan.first - 1 <= iteration < self.plan.first + len(self.plan.draws) else self.gen.get_state())
        return RunState(iteration, self.trainer.state_dict(), gen, self.gen_noise.get_state(),
                        _host(self.state), self.attempt, self.noise_seed, list(self.history),
                        self.unet_calls, elapsed_s)

    @property
    def gaussians(self) -> Gaussians:
        return self.trainer.g

    @property
    def eps_star(self) -> Tensor | None:
        """The fixed noise of a fixed-noise method (its state's), else None."""
        return getattr(self.state, "eps_star", None)

    # one iteration -------------------------------------------------------------------------------
    def step(self, it: int) -> dict:
        """Run iteration `it`; its terms join the history (norms still on the device)."""
        terms = self._iteration(it)
        self.history.append(terms)
        self.unet_calls += int(terms.get("unet_calls", 0))
        return terms

    def _iteration(self, it: int) -> dict:
        trainer, prior = self.trainer, self.prior
        if self.plan is None or not self.plan.covers(it):
            self._plan_from(it)
        d, cams, bg, view_w = self.plan.at(it)
        noise = self.state.noise(self.gen_noise)
        guided = make_guided_eps_from_config(prior, self.cfg.prior, self.prompt, d.azimuths,  # before device work
                                             weights=view_w, cameras=cams)

        out: RenderOutput = render(trainer.g, cams, background=bg, backend=self.backend)
        img = depth_image(out.depth) if d.use_depth else out.rgb
        img = img.permute(0, 3, 1, 2)
        if d.flip:
            img = img.flip(-1)
        z = prior.encode(img, generator=self.gen_noise)
        grad, terms = self.method.grad(z, d.ts, self.alphas, guided, noise.to(z.dtype), self.distill)
        terms = dict(terms)
        grad = self.state.update(it, z, d.ts, grad, terms)   # the method's state advances (may change grad)
        loss = latent_grad_loss(z, grad)
        extra = extra_losses(self.loss_weights, out, trainer.g)
        loss = add_weighted(loss, extra, self.loss_weights)
        loss.backward()
        grad_norms = trainer.step(it, out)
        check_finite([("render", out.rgb), ("distillation gradient", grad),
                      *((f"gradient norm of {n}", v) for n, v in grad_norms.items()),
                      *((f"parameter {n}", t) for n, t in trainer.g.params().items())])
        terms.update({k: v.detach() for k, v in extra.items()})
        terms["depth_input"] = float(d.use_depth)
        terms["gaussians"] = float(trainer.g.num())
        return terms
