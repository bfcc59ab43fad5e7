"""Vectorised training: many networks of ONE architecture at once.

Members share the architecture (builder + kwargs), the data and the batch size; each has
its own :class:`MemberConfig` — seed (initialisation, label noise, batch order), learning
rate, weight decay, label-noise fraction, initialisation scale and number of epochs.

How: the members' parameters and buffers are stacked along a leading axis and one step is
``vmap(grad(loss))`` over ``torch.func.functional_call`` of a template module, followed by
an AdamW update written on the stacked tensors with per-member learning rate and weight
decay. BatchNorm trains with per-member batch statistics (each member sees its own batch)
and its running statistics are threaded through the loss as auxiliary outputs, so every
member's buffers evolve exactly as if it were trained alone. Members are sorted by epochs,
longest first, so the members still training at any epoch are a prefix of the stack: a
finished member costs nothing (``params[:k]``), and the AdamW step count is shared by all
members still training.

:func:`train_alone` is the plain reference loop (``nn.Module.train()``, autograd,
``torch.optim.AdamW``) that the tests compare against; both use :func:`member_streams` for
labels and batch order, so they agree up to floating-point reassociation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

BETAS = (0.9, 0.999)
EPS = 1e-8


@dataclass(frozen=True)
class MemberConfig:
    """One member's training hyperparameters. ``epochs`` >= 1; ``label_noise`` in [0, 1] is
    the fraction of training labels replaced by uniformly random classes (fixed per member);
    ``init_scale`` multiplies every parameter with at least 2 dimensions after the builder's
    default initialisation."""

    seed: int
    lr: float
    epochs: int
    weight_decay: float = 0.0
    label_noise: float = 0.0
    init_scale: float = 1.0


@dataclass(frozen=True)
class MemberResult:
    """Trained state dict (the module's ``state_dict()`` keys and dtypes, detached CPU
    tensors) and accuracies in [0, 1]: ``train_acc`` on the clean training labels,
    ``test_acc`` on the test split, both in eval mode."""

    state_dict: dict[str, torch.Tensor]
    train_acc: float
    test_acc: float


def _sub_seed(seed: int, stream: int) -> int:
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0] >> 1)


def init_model(builder: Callable[..., nn.Module], kwargs: dict, member: MemberConfig) -> nn.Module:
    """``builder(**kwargs)`` initialised from ``member.seed`` (global RNG untouched), with
    weights (parameters of >= 2 dims) multiplied by ``member.init_scale``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_sub_seed(member.seed, 0))
        model = builder(**kwargs)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(member.init_scale)
    return model


def member_streams(member: MemberConfig, y_train: torch.Tensor,
                   num_classes: int = 10) -> tuple[torch.Tensor, torch.Generator]:
    """The member's (possibly noisy) training labels and the generator of its batch order
    (one ``torch.randperm(N, generator=g)`` per epoch)."""
    g = torch.Generator().manual_seed(_sub_seed(member.seed, 1))
    n = y_train.shape[0]
    flip = torch.rand(n, generator=g) < member.label_noise
    labels = torch.where(flip, torch.randint(0, num_classes, (n,), generator=g), y_train)
    return labels, torch.Generator().manual_seed(_sub_seed(member.seed, 2))


def _evaluate(model: nn.Module, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor,
              chunk: int) -> torch.Tensor:
    """Accuracy ``[M]`` of every stacked member on ``(x, y)`` in eval mode."""
    was_training = model.training
    model.eval()
    fwd = vmap(lambda p, b, xb: functional_call(model, (p, b), (xb,)), in_dims=(0, 0, None))
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            logits = fwd(params, buffers, x[i:i + chunk])
            correct = correct + (logits.argmax(-1) == y[i:i + chunk]).sum(-1)
    model.train(was_training)
    return correct.double() / x.shape[0]


def train_group(builder: Callable[..., nn.Module], kwargs: dict, members: list[MemberConfig],
                x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                y_test: torch.Tensor, batch_size: int = 64, eval_chunk: int = 256,
                num_classes: int = 10, dtype: torch.dtype = torch.float32) -> list[MemberResult]:
    """Train every member of ``members`` (same architecture ``builder(**kwargs)``) with
    AdamW, cross-entropy, shuffled mini-batches of ``batch_size`` (the last partial batch of
    an epoch is dropped). ``x_*`` are already in the model's input layout. Returns one
    result per member, in the order given. Deterministic for a fixed thread count.
    ``dtype``: the dtype of parameters and computation (float64 for exactness checks)."""
    if not members:
        return []
    x_train, x_test = x_train.to(dtype), x_test.to(dtype)
    order = sorted(range(len(members)), key=lambda i: -members[i].epochs)
    mem = [members[i] for i in order]
    models = [init_model(builder, kwargs, m).to(dtype) for m in mem]
    template = models[0]
    template.train()
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
              for n, _ in template.named_parameters()}
    buffers = {n: torch.stack([dict(m.named_buffers())[n] for m in models])
               for n, _ in template.named_buffers()}
    streams = [member_streams(m, y_train, num_classes) for m in mem]
    labels = torch.stack([s[0] for s in streams])
    exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
    exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
    lr = torch.tensor([m.lr for m in mem], dtype=dtype)
    wd = torch.tensor([m.weight_decay for m in mem], dtype=dtype)

    def loss_fn(p, b, xb, yb):
        b = {k: v.clone() for k, v in b.items()}  # BatchNorm updates these in place
        return F.cross_entropy(functional_call(template, (p, b), (xb,)), yb), b

    step_fn = vmap(grad(loss_fn, has_aux=True))
    n = x_train.shape[0]
    steps = max(n // batch_size, 1)
    t = 0
    for epoch in range(mem[0].epochs):
        k = sum(m.epochs > epoch for m in mem)
        perm = torch.stack([torch.randperm(n, generator=s[1]) for s in streams[:k]])
        for s in range(steps):
            idx = perm[:, s * batch_size:(s + 1) * batch_size]
            grads, new_buffers = step_fn({q: v[:k] for q, v in params.items()},
                                         {q: v[:k] for q, v in buffers.items()},
                                         x_train[idx], labels[:k].gather(1, idx))
            t += 1
            with torch.no_grad():
                _adamw_step(params, grads, exp_avg, exp_avg_sq, lr[:k], wd[:k], k, t)
                for q, v in new_buffers.items():
                    buffers[q][:k].copy_(v)
    train_acc = _evaluate(template, params, buffers, x_train, y_train, eval_chunk)
    test_acc = _evaluate(template, params, buffers, x_test, y_test, eval_chunk)
    keys = list(template.state_dict().keys())
    stacked = {**params, **buffers}
    results: list[MemberResult | None] = [None] * len(members)
    for j, i in enumerate(order):
        sd = {key: stacked[key][j].clone() for key in keys}
        results[i] = MemberResult(sd, float(train_acc[j]), float(test_acc[j]))
    return results  # type: ignore[return-value]


def _adamw_step(params: dict, grads: dict, exp_avg: dict, exp_avg_sq: dict, lr: torch.Tensor,
                wd: torch.Tensor, k: int, t: int) -> None:
    """In-place AdamW (torch.optim.AdamW's formula) on the first ``k`` stacked members."""
    b1, b2 = BETAS
    bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
    for name, g in grads.items():
        p, m, v = params[name][:k], exp_avg[name][:k], exp_avg_sq[name][:k]
        shape = (k,) + (1,) * (p.dim() - 1)
        lr_b, wd_b = lr.view(shape), wd.view(shape)
        p.mul_(1 - lr_b * wd_b)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v.sqrt() / bc2 ** 0.5).add_(EPS)
        p.sub_(lr_b / bc1 * m / denom)


def train_alone(builder: Callable[..., nn.Module], kwargs: dict, member: MemberConfig,
                x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor,
                y_test: torch.Tensor, batch_size: int = 64, num_classes: int = 10,
                dtype: torch.dtype = torch.float32) -> MemberResult:
    """Reference: the same recipe as :func:`train_group` for one member, written as an
    ordinary PyTorch loop (module in train mode, autograd, ``torch.optim.AdamW``)."""
    x_train, x_test = x_train.to(dtype), x_test.to(dtype)
    model = init_model(builder, kwargs, member).to(dtype)
    labels, gen = member_streams(member, y_train, num_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=member.lr, betas=BETAS, eps=EPS,
                            weight_decay=member.weight_decay, foreach=False)
    n = x_train.shape[0]
    model.train()
    for _ in range(member.epochs):
        perm = torch.randperm(n, generator=gen)
        for s in range(max(n // batch_size, 1)):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x_train[idx]), labels[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        train_acc = (model(x_train).argmax(-1) == y_train).double().mean()
        test_acc = (model(x_test).argmax(-1) == y_test).double().mean()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return MemberResult(sd, float(train_acc), float(test_acc))
