"""Fit many INRs of one architecture at once, one signal each.

The members' parameters are stacked along a leading axis; one full-batch step (every
coordinate of the signal) is ``vmap(grad(mse))`` over ``torch.func.functional_call`` of one
template module, followed by an Adam update on the stacked tensors. Parameters named in
:data:`~gmn_models.inr.families.FROZEN` (random Fourier features) keep their initial values.
:func:`fit_alone` is the plain reference loop (autograd, ``torch.optim.Adam``) the tests compare
against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .families import FROZEN, inr

BETAS = (0.9, 0.999)
EPS = 1e-8


@dataclass(frozen=True)
class FitResult:
    """A fitted INR: its state dict (detached CPU tensors) and its reconstruction PSNR in dB,
    ``10 log10(range² / MSE)`` with ``range`` the signal dataset's value range."""

    state_dict: dict[str, torch.Tensor]
    psnr: float


def init_inr(kwargs: dict, seed: int) -> nn.Module:
    """``inr(**kwargs)`` initialised from ``seed`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(np.random.SeedSequence([seed, 11]).generate_state(1)[0]))
        return inr(**kwargs)


def psnr(mse: torch.Tensor, value_range: float = 1.0) -> torch.Tensor:
    return 10 * torch.log10(value_range ** 2 / mse.clamp_min(1e-12))


def fit_group(kwargs: dict, seeds: list[int], coords: torch.Tensor, targets: torch.Tensor,
              steps: int, lr: float, value_range: float = 1.0) -> list[FitResult]:
    """Fit ``len(seeds)`` INRs ``inr(**kwargs)`` (member ``j`` initialised from ``seeds[j]``)
    to ``targets[j]`` (``[M, P, out]``) at ``coords`` (``[P, in]``) with ``steps`` full-batch
    Adam steps of learning rate ``lr`` on the mean squared error."""
    models = [init_inr(kwargs, s) for s in seeds]
    template = models[0]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
              for n, _ in template.named_parameters()}
    trained = [n for n in params if n not in FROZEN]
    exp_avg = {n: torch.zeros_like(params[n]) for n in trained}
    exp_avg_sq = {n: torch.zeros_like(params[n]) for n in trained}

    def loss_fn(p, target):
        return ((functional_call(template, p, (coords,)) - target) ** 2).mean()

    step_fn = vmap(grad(loss_fn))
    for t in range(1, steps + 1):
        grads = step_fn(params, targets)
        with torch.no_grad():
            _adam_step({n: params[n] for n in trained}, grads, exp_avg, exp_avg_sq, lr, t)
    with torch.no_grad():
        mse = vmap(lambda p, target: loss_fn(p, target))(params, targets)
    values = psnr(mse, value_range)
    return [FitResult({n: params[n][j].clone() for n in params}, float(values[j])) for j in range(len(seeds))]


def _adam_step(params: dict, grads: dict, exp_avg: dict, exp_avg_sq: dict, lr: float, t: int) -> None:
    """In-place Adam (``torch.optim.Adam``'s formula, no weight decay) on stacked tensors."""
    b1, b2 = BETAS
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    for name, p in params.items():
        g, m, v = grads[name], exp_avg[name], exp_avg_sq[name]
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        p.sub_(lr / bc1 * m / (v.sqrt() / bc2 ** 0.5).add_(EPS))


def fit_alone(kwargs: dict, seed: int, coords: torch.Tensor, target: torch.Tensor, steps: int,
              lr: float, value_range: float = 1.0) -> FitResult:
    """Reference for :func:`fit_group`: one INR, ``torch.optim.Adam``, autograd."""
    model = init_inr(kwargs, seed)
    trained = [p for n, p in model.named_parameters() if n not in FROZEN]
    opt = torch.optim.Adam(trained, lr=lr, betas=BETAS, eps=EPS, foreach=False)
    for _ in range(steps):
        opt.zero_grad()
        ((model(coords) - target) ** 2).mean().backward()
        opt.step()
    with torch.no_grad():
        mse = ((model(coords) - target) ** 2).mean()
    return FitResult({k: v.detach().clone() for k, v in model.state_dict().items()}, float(psnr(mse, value_range)))
