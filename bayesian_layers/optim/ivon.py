"""IVON: the improved variational online Newton optimizer (Shen et al., 2024)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["IVON"]

HESS_APPROX = ("price", "gradsq")

_Draw = tuple[list[Tensor], list[Tensor], list[Tensor]]  # params, means, perturbations


def _check_float(name: str, value: object, low: float, high: float, *, open_low: bool) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool)
    v = float(value) if ok else math.nan  # type: ignore[arg-type]
    finite = math.isfinite(v) or (name == "clip_radius" and v == math.inf)
    ok = ok and finite and (v > low if open_low else v >= low) and v <= high
    if not ok:
        bracket = "(" if open_low else "["
        close = ")" if high == math.inf and name != "clip_radius" else "]"
        raise ValueError(
            f"IVON expected `{name}` a number in {bracket}{low}, {high}{close}, got {value!r}"
        )
    return v


def _updated(params: list[Tensor]) -> list[Tensor]:
    """The parameters IVON updates (and collects statistics of): those with
    ``requires_grad`` (a frozen one, such as a LoRA model's base weight, keeps its value)."""
    return [p for p in params if p.requires_grad]


class IVON(torch.optim.Optimizer):
    r"""Improved Variational Online Newton (IVON; Shen et al., ICML 2024, Algorithm 1).

    Variational learning at Adam's cost: the optimizer keeps a diagonal Gaussian
    posterior ``q(θ) = N(m, diag(σ²))`` with ``σ² = 1 / (λ (h + δ))`` over the
    parameters it is given (their values are the means ``m``), and a Hessian estimate
    ``h`` per parameter entry. Each step:

    .. math::

        \epsilon &\sim N(0, I),\quad \theta = m + \sigma \epsilon
            \quad\text{(one draw per MC sample, inside } \texttt{sampled\_params}) \\
        \hat g &= \overline{\nabla \ell(\theta)},\qquad
        \hat h = \overline{\nabla \ell(\theta) \cdot \epsilon / \sigma}
            \quad\text{("price": reparameterisation-trick Hessian)} \\
        g_m &\leftarrow \beta_1 g_m + (1-\beta_1) \hat g \\
        h &\leftarrow \beta_2 h + (1-\beta_2) \hat h
            + \tfrac12 (1-\beta_2)^2 (h - \hat h)^2 / (h + \delta) \\
        m &\leftarrow m - \alpha\, \mathrm{clip}\!\left(
            \frac{g_m / (1-\beta_1^t) + \delta m}{h + \delta}, \pm r\right),
            \qquad \alpha = \text{lr}\,(h_0 + \delta) \text{ if rescale\_lr else lr}

    where the bar averages over the ``mc_samples`` draws, ``ℓ`` is the *mean* loss over
    the batch (no KL term: the Gaussian prior ``N(0, 1/(λ δ))`` enters through the weight
    decay ``δ``), ``λ`` = ``ess`` and ``ĥ = ess · (h + δ) · ∇ℓ · (θ - m)`` written in
    terms of the stored perturbation. The ``"gradsq"`` alternative uses
    ``ĥ = ess · mean(∇ℓ²)``. The correction term keeps ``h`` positive.

    Use exactly as the reference (``ivon-opt``): one forward and backward per MC sample
    inside :meth:`sampled_params`, with ``zero_grad`` inside the context, then
    :meth:`step`. With Bayesian layers (:func:`~bayesian_layers.optim.ivon_parameters`
    gives the means to train), run the model in
    :func:`bayesian_layers.posterior_mean` mode so the layers compute with the
    IVON-perturbed means and add no noise of their own, and call
    :meth:`write_posterior` to store ``N(m, σ²)`` in the layers.

    Args:
        params: parameters (or param-group dicts) to train; their values are the means.
            All parameters of one group share a dtype and device. Frozen ones
            (``requires_grad=False``, e.g. a LoRA model's base) are neither perturbed nor
            updated, as torch's optimizers leave them.
        lr: learning rate ``≥ 0`` (the reference uses ~0.1-0.2 with ``rescale_lr``).
        ess: effective sample size ``λ > 0``, usually the training-set size N.
        hess_init: initial Hessian ``h₀ > 0``.
        beta1: momentum of the gradient, in ``[0, 1)``.
        beta2: momentum of the Hessian, in ``[0, 1]``.
        weight_decay: ``δ ≥ 0``, the prior precision per example.
        mc_samples: number of draws per step (``≥ 1``); used by ``step(closure)``.
        hess_approx: ``"price"`` (``∇ℓ·ε/σ``) or ``"gradsq"``.
        clip_radius: elementwise clip ``r > 0`` of the preconditioned update.
        rescale_lr: multiply ``lr`` by ``h₀ + δ`` (as the reference does).
        debias: divide the momentum by ``1 - β₁ᵗ``.
        generator: a ``torch.Generator`` for the draws (default: torch's global RNG;
            one ``randn`` of the group's size per group, as the reference draws).

    State (per parameter ``p``): ``momentum`` and ``hess`` (shape of ``p``), ``step``;
    saved by ``state_dict()`` and loadable with ``torch.load(..., weights_only=True)``.
    Each operation runs once per group over all its tensors (``torch._foreach_*``).

    Data parallel: DDP averages the gradients across ranks; give every rank a
    ``generator`` seeded alike so all ranks draw the same ``ε`` and the means and
    Hessians stay identical, and freeze the parameters IVON does not train
    (``requires_grad_(False)`` on the scales) or pass ``find_unused_parameters=True``,
    since the scales get no gradient. AMP's ``GradScaler`` is not supported
    (the gradients are read at the exit of :meth:`sampled_params`, before unscaling).

    Example:
        >>> import torch, bayesian_layers as bl
        >>> from bayesian_layers.optim import IVON, ivon_parameters
        >>> _ = torch.manual_seed(0)
        >>> model = bl.layers.LinearReparameterization(3, 1)
        >>> x, y = torch.randn(32, 3), torch.randn(32, 1)
        >>> opt = IVON(ivon_parameters(model), lr=0.1, ess=32)
        >>> with bl.posterior_mean(model):
        ...     for _ in range(5):
        ...         with opt.sampled_params(train=True):
        ...             opt.zero_grad()
        ...             torch.nn.functional.mse_loss(model(x), y).backward()
        ...         opt.step()
        >>> opt.write_posterior(model)
        ['weight']
        >>> loc, scale = model.posterior_loc_scale("weight")
        >>> torch.allclose(scale, opt.posterior_scale(model.weight_loc))
        True
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        ess: float,
        hess_init: float = 1.0,
        beta1: float = 0.9,
        beta2: float = 0.99999,
        weight_decay: float = 1e-4,
        mc_samples: int = 1,
        hess_approx: str = "price",
        clip_radius: float = math.inf,
        rescale_lr: bool = True,
        debias: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"IVON expected `mc_samples` an int >= 1, got {mc_samples!r}")
        if hess_approx not in HESS_APPROX:
            raise ValueError(f"IVON expected `hess_approx` in {HESS_APPROX}, got {hess_approx!r}")
        for name, flag in (("rescale_lr", rescale_lr), ("debias", debias)):
            if not isinstance(flag, bool):
                raise ValueError(f"IVON expected `{name}` a bool, got {flag!r}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"IVON expected `generator` a torch.Generator, got {generator!r}")
        defaults = dict(
            lr=lr,
            ess=ess,
            hess_init=hess_init,
            beta1=beta1,
            beta2=beta2,
            weight_decay=weight_decay,
            clip_radius=clip_radius,
        )
        self._check_group(defaults)
        self.mc_samples = mc_samples
        self.hess_approx = hess_approx
        self.rescale_lr = rescale_lr
        self.debias = debias
        self.generator = generator
        self._count = 0  # MC samples collected since the last step
        self._inside = False
        super().__init__(params, defaults)

    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:
        inf = math.inf
        _check_float("lr", group["lr"], 0.0, inf, open_low=False)
        _check_float("ess", group["ess"], 0.0, inf, open_low=True)
        _check_float("hess_init", group["hess_init"], 0.0, inf, open_low=True)
        _check_float("weight_decay", group["weight_decay"], 0.0, inf, open_low=False)
        _check_float("clip_radius", group["clip_radius"], 0.0, inf, open_low=True)
        _check_float("beta2", group["beta2"], 0.0, 1.0, open_low=False)
        b1 = _check_float("beta1", group["beta1"], 0.0, 1.0, open_low=False)
        if b1 == 1.0:  # the debiasing 1 - β₁ᵗ would divide by zero
            raise ValueError(f"IVON expected `beta1` a number in [0, 1), got {group['beta1']!r}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (checked like the constructor's arguments); its state starts at
        ``hess = hess_init`` and zero momentum."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        params = group["params"]
        kinds = {(p.dtype, p.device) for p in params}
        if len(kinds) > 1:
            raise ValueError(
                f"IVON expected the parameters of a group on one dtype and device, got {kinds}"
            )
        for p in params:
            if not p.is_floating_point():
                raise TypeError(f"IVON expected floating-point parameters, got {p.dtype}")
            self.state[p].update(
                momentum=torch.zeros_like(p, memory_format=torch.preserve_format),
                hess=torch.full_like(p, float(group["hess_init"])),
                step=0,
            )

    # ------------------------------------------------------------------ sampling
    def posterior_scale(self, param: Tensor) -> Tensor:
        """``σ = 1 / sqrt(ess · (h + δ))`` of ``param`` (shape of ``param``)."""
        for group in self.param_groups:
            if any(p is param for p in group["params"]):
                hess = self.state[param]["hess"]
                return (group["ess"] * (hess + group["weight_decay"])).rsqrt()
        raise ValueError(
            f"IVON.posterior_scale expected a parameter of this optimizer, "
            f"got a tensor of shape {tuple(param.shape)} that it does not train"
        )

    @contextmanager
    def sampled_params(self, train: bool = False) -> Iterator[None]:
        """Context: the parameters hold one draw ``θ = m + σ ε`` inside, ``m`` after.

        Args:
            train: at exit, collect each parameter's ``.grad`` (zero where ``None``) as
                one MC sample for :meth:`step`. Call ``zero_grad`` inside the context.

        The parameters are changed in place (same tensors, so ``torch.compile`` and
        module hooks see no new objects); ``m`` is restored exactly even on an error.
        """
        if self._inside:
            raise RuntimeError("IVON.sampled_params: already inside sampled_params")
        self._inside = True
        saved: list[_Draw] = []  # per group: (params, means, perturbations)
        ok = False
        try:
            with torch.no_grad():
                for group in self.param_groups:
                    params = [p for p in group["params"] if self.trained(p)]
                    if params:
                        saved.append(self._perturb(group, params))
            yield
            ok = True
        finally:
            with torch.no_grad():
                for params, means, _ in saved:
                    torch._foreach_copy_(params, means)
            self._inside = False
        if ok and train:
            self._collect(saved)

    def trained(self, param: Tensor) -> bool:
        """Whether IVON holds a posterior for ``param``: it has ``requires_grad`` or took at
        least one step (a model frozen after training, ``model.requires_grad_(False)``,
        keeps its posterior for sampling and :func:`write_posterior`); a parameter frozen
        from the start, such as a LoRA model's base weight, is a constant."""
        state = self.state.get(param, {})
        return param.requires_grad or state.get("step", 0) > 0

    def _perturb(self, group: dict[str, Any], params: list[Tensor]) -> _Draw:
        # one randn of the sampled parameters' size (the reference's draw), split per
        # parameter; perturbation = ε / sqrt(ess (h + δ)). Multi-tensor (foreach) ops.
        eps = torch.randn(
            sum(p.numel() for p in params),
            dtype=params[0].dtype,
            device=params[0].device,
            generator=self.generator,
        )
        eps_views = [
            e.view_as(p)
            for e, p in zip(eps.split([p.numel() for p in params]), params, strict=True)
        ]
        root_prec = torch._foreach_add(
            [self.state[p]["hess"] for p in params], group["weight_decay"]
        )
        torch._foreach_mul_(root_prec, group["ess"])
        torch._foreach_sqrt_(root_prec)  # 1 / σ
        noise = list(torch._foreach_div(eps_views, root_prec))
        means = [p.detach().clone() for p in params]
        torch._foreach_add_(params, noise)
        return params, means, noise

    @torch.no_grad()
    def _collect(self, saved: list[_Draw]) -> None:
        self._count += 1
        n = self._count
        for drawn, _, drawn_noise in saved:
            # a parameter frozen after training is sampled but not updated: no statistics
            params = _updated(drawn)
            if not params:
                continue
            noise = [e for p, e in zip(drawn, drawn_noise, strict=True) if p.requires_grad]
            grads = [torch.zeros_like(p) if p.grad is None else p.grad.detach() for p in params]
            if self.hess_approx == "price":
                stats = torch._foreach_mul(noise, grads)
            else:
                stats = torch._foreach_mul(grads, grads)
            states = [self.state[p] for p in params]
            if n == 1:
                for st, g, stat in zip(states, grads, stats, strict=True):
                    st["avg_grad"], st["avg_stat"] = g.clone(), stat
                continue
            # running means (Welford), as the reference: avg += (new - avg) / n
            for key, new in (("avg_grad", grads), ("avg_stat", stats)):
                avg = [st[key] for st in states]
                delta = torch._foreach_sub(new, avg)
                torch._foreach_div_(delta, float(n))
                torch._foreach_add_(avg, delta)

    # ---------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:  # type: ignore[override]
        """Update means, momentum and Hessian from the MC samples collected so far.

        Args:
            closure: optional; called ``mc_samples`` times, each inside
                ``sampled_params(train=True)`` (so it does ``zero_grad``, forward,
                backward, and returns the loss). Returns the mean loss.

        Raises:
            RuntimeError: no MC sample was collected since the last step.
        """
        loss: Tensor | None = None
        if closure is not None:
            losses: list[Tensor] = []
            for _ in range(self.mc_samples):
                with self.sampled_params(train=True), torch.enable_grad():
                    losses.append(closure())
            loss = torch.stack(losses).mean()
        if self._count == 0:
            raise RuntimeError(
                "IVON.step: no MC sample collected; run forward and backward inside "
                "`with optimizer.sampled_params(train=True):` first"
            )
        for group in self.param_groups:
            self._update(group)
        self._count = 0
        return loss

    def _update(self, group: dict[str, Any]) -> None:
        params = _updated(group["params"])
        if not params:
            return
        ess, wd, b1, b2 = group["ess"], group["weight_decay"], group["beta1"], group["beta2"]
        lr = group["lr"] * (group["hess_init"] + wd) if self.rescale_lr else group["lr"]
        r = group["clip_radius"]
        states = [self.state[p] for p in params]
        grads = [st.pop("avg_grad") for st in states]
        stats = [st.pop("avg_stat") for st in states]
        hess = [st["hess"] for st in states]
        # ĥ = ess (h + δ) avg(g · perturbation)  ("price")  or  ess avg(g²)  ("gradsq")
        if self.hess_approx == "price":
            h_hat = list(torch._foreach_add(hess, wd))
            torch._foreach_mul_(h_hat, stats)
        else:
            h_hat = stats
        torch._foreach_mul_(h_hat, ess)
        # h ← β₂ h + (1-β₂) ĥ + ½(1-β₂)² (h - ĥ)² / (h + δ)
        correction = torch._foreach_sub(hess, h_hat)
        torch._foreach_mul_(correction, correction)
        torch._foreach_div_(correction, torch._foreach_add(hess, wd))
        torch._foreach_mul_(hess, b2)
        torch._foreach_add_(hess, h_hat, alpha=1.0 - b2)
        torch._foreach_add_(hess, correction, alpha=0.5 * (1.0 - b2) ** 2)
        # g_m ← β₁ g_m + (1-β₁) ĝ
        momentum = [st["momentum"] for st in states]
        torch._foreach_mul_(momentum, b1)
        torch._foreach_add_(momentum, grads, alpha=1.0 - b1)
        # m ← m - α clip((g_m / (1-β₁ᵗ) + δ m) / (h + δ), ±r)
        debias = []
        for st in states:
            st["step"] += 1
            debias.append(1.0 - b1 ** st["step"] if self.debias else 1.0)
        direction = torch._foreach_div(momentum, debias)
        torch._foreach_add_(direction, params, alpha=wd)
        torch._foreach_div_(direction, torch._foreach_add(hess, wd))
        if math.isfinite(r):
            torch._foreach_clamp_min_(direction, -r)
            torch._foreach_clamp_max_(direction, r)
        torch._foreach_add_(params, direction, alpha=-lr)

    # ------------------------------------------------------------------ posterior
    def write_posterior(self, model: nn.Module) -> list[str]:
        """Store ``N(m, 1/(ess·(h + δ)))`` in the Bayesian layers of ``model``.

        Each random normal parameter whose mean this optimizer trains gets
        ``rho = softplus⁻¹(σ)`` (its mean is already ``m``); point estimates and plain
        modules keep their values. See :func:`~bayesian_layers.optim.write_posterior`.

        Returns:
            The written parameters' names (``"0.weight"``, ...).
        """
        from ._posterior import write_posterior

        return write_posterior(model, self)
