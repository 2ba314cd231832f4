"""Scoring and fitting programs: the joint log-density of a program
(:func:`make_log_joint_fn`) and variational inference between a model program and
a posterior program (:func:`program_elbo`).

A *model* program creates named random variables for latents and observations; a
*posterior* program creates the same latents under the same names (its
parameters are what we fit). :func:`program_elbo` estimates

    ELBO = E_q [ log p(observed, z) − log q(z) ] − Σ losses(posterior layers)

by running the posterior under :func:`~bayesian_layers.tape` (``z ~ q``,
reparameterized where the distributions allow), then the model under
:func:`~bayesian_layers.condition` on ``z`` and the observations, summing the
log-densities of every named variable on the model's tape and subtracting
those of ``z`` under ``q``.

Latents that live *inside* layers (Bayesian weights, the inducing values of a
sparse GP, an intensity function drawn by a GP layer) are not matched by name:
the model program uses the posterior's layers themselves (``pass_posterior=True``
hands the model what the posterior returns, or share the modules), and their
``KL(q || p)`` enters through ``bl.losses`` of ``kl_modules`` (by default the
posterior, when it is an ``nn.Module``). Layer
weight draws seen on either tape (:class:`~bayesian_layers.tracing.LayerParameter`)
are therefore never scored by log-density, which would count them twice.

A named latent of the model that the posterior never draws (and that is not
observed) is drawn from its prior by the model itself and scored by neither side:
its ``log p − log q`` is zero with ``q = p``, i.e. the posterior program is
completed with the model's own conditional for it.

The estimate depends on the posterior's draws and ``observed=`` only: a
``bl.condition`` around :func:`program_elbo` that sets one of the names it draws
or observes raises ``ValueError``. Values given explicitly to a
:func:`make_log_joint_fn` function likewise win over a surrounding condition.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .objectives import losses as _losses
from .random_variables.variable import RandomVariable
from .tracing import LayerParameter, tape, trace
from .tracing._handlers import Conditioner, collect_values, shield

__all__ = ["program_elbo", "make_log_joint_fn"]


_SHIELD_HINT = (
    "the estimate takes latents from the posterior and observations from `observed=`; "
    "call program_elbo outside that condition"
)


def _log_density(rv: RandomVariable) -> Tensor:
    return rv.distribution.log_prob(rv.value).sum()


def program_elbo(
    model: Callable[..., Any],
    posterior: Callable[..., Any],
    *args: Any,
    observed: Mapping[str, Any] | None = None,
    kl_modules: nn.Module | Iterable[nn.Module] | None = None,
    num_samples: int = 1,
    pass_posterior: bool = False,
    **kwargs: Any,
) -> Tensor:
    """A Monte Carlo estimate of the ELBO of ``model`` under the ``posterior`` program.

    Args:
        model: the model program, called as ``model(*args, **kwargs)``.
        posterior: the posterior program, called the same way; every named
            random variable it creates (other than layer weights) must be a latent
            of the model of the same name.
        observed: ``{name: value}`` of the model's observed variables.
        kl_modules: modules whose ``bl.losses`` hold the KL of latents inside
            layers; default ``posterior`` if it is an ``nn.Module``, else none.
        num_samples: draws from the posterior averaged in the estimate.
        pass_posterior: call ``model(posterior(...), *args, **kwargs)``, handing the
            model what the posterior returns (Figure 9: ``posterior()`` returns an
            intensity module and ``model(rate)`` builds the point process on it).

    Returns:
        a scalar tensor, differentiable with respect to the posterior's (and the
        model's) parameters; maximise it (minimise ``-elbo``).

    A named model latent that the posterior does not draw and that is not observed
    is drawn from its prior (its conditional given the other variables) and adds
    nothing: the ELBO of the posterior completed by the model's prior for it.

    Raises:
        ValueError: a posterior variable the model never creates, an observed name
            the model never creates, an observed name the posterior also draws, or
            a surrounding ``bl.condition`` that sets a name the posterior draws or
            the model observes.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> def model():
        ...     z = bl.Normal(0.0, 1.0, name="z")
        ...     return bl.Normal(z, 1.0, name="x")
        >>> loc = torch.zeros((), requires_grad=True)
        >>> def posterior():
        ...     return bl.Normal(loc, 0.5, name="z")
        >>> elbo = bl.program_elbo(model, posterior, observed={"x": torch.tensor(1.0)})
        >>> elbo.backward()
        >>> loc.grad is not None
        True
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"program_elbo expected `num_samples` >= 1, got {num_samples!r}")
    for what, fn in (("model", model), ("posterior", posterior)):
        if not callable(fn):
            raise TypeError(f"program_elbo expected `{what}` to be callable, got {type(fn)}")
    observed = dict(observed or {})
    if kl_modules is None:
        kl_modules = [posterior] if isinstance(posterior, nn.Module) else []
    elif isinstance(kl_modules, nn.Module):
        kl_modules = [kl_modules]
    estimates = [
        _one_draw(model, posterior, args, kwargs, observed, pass_posterior)
        for _ in range(num_samples)
    ]
    elbo = torch.stack(estimates).mean()
    kl = _losses(nn.ModuleList(kl_modules))  # a module listed twice, or nested, counts once
    if kl:
        elbo = elbo - torch.stack(kl).sum()
    return elbo


def _one_draw(
    model: Callable[..., Any],
    posterior: Callable[..., Any],
    args: tuple,
    kwargs: dict[str, Any],
    observed: dict[str, Any],
    pass_posterior: bool,
) -> Tensor:
    """``log p(observed, z) − log q(z)`` at one draw ``z ~ q`` (no layer KLs)."""
    with shield(None, "program_elbo", _SHIELD_HINT), tape() as q_tape:
        output = posterior(*args, **kwargs)
    model_args = (output, *args) if pass_posterior else args
    latents = {n: rv for n, rv in q_tape.items() if not isinstance(rv, LayerParameter)}
    clash = sorted(set(latents) & set(observed))
    if clash:
        raise ValueError(f"program_elbo: {clash} are both observed and drawn by the posterior")
    fixed = {**{n: rv.value for n, rv in latents.items()}, **observed}
    with (
        shield(None, "program_elbo", _SHIELD_HINT),
        tape() as p_tape,
        trace(Conditioner(fixed)),
    ):
        model(*model_args, **kwargs)
    missing = sorted(set(fixed) - set(p_tape))
    if missing:
        raise ValueError(
            f"program_elbo: the model program created no random variable named {missing} "
            f"(it created {list(p_tape)})"
        )
    # model latents the posterior does not draw are prior draws: log p - log q = 0
    terms = [
        _log_density(rv)
        for n, rv in p_tape.items()
        if n in fixed and not isinstance(rv, LayerParameter)
    ]
    terms += [-_log_density(rv) for rv in latents.values()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def _split_kwargs(program: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[dict, dict]:
    try:
        params = inspect.signature(program).parameters
    except (TypeError, ValueError):
        return {}, kwargs
    names = {n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}
    program_kwargs = {k: v for k, v in kwargs.items() if k in names}
    value_kwargs = {k: v for k, v in kwargs.items() if k not in names}
    return program_kwargs, value_kwargs


def make_log_joint_fn(program: Callable[..., Any]) -> Callable[..., Tensor]:
    """The joint log-density of ``program``'s named random variables, as a function.

    The returned ``log_joint(*args, **kwargs)`` runs ``program``: keyword arguments
    named like the program's parameters go to it, the others fix the random
    variables of those names (pass names that are not identifiers as
    ``**{"0.weight": w}``); naming a variable the program never creates raises
    ``ValueError``. Values given here win over a ``bl.condition`` around the call,
    which still sets the variables not given here. It returns
    ``Σ log p(value)`` over every random variable the program creates, summed over
    all elements; variables without a given value are drawn and scored. Layer
    weights (:class:`LayerParameter`) can be fixed but are not scored: their
    distribution is a variational posterior, and their prior lives in the layer's
    regularizer.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> def program(n):
        ...     mu = bl.Normal(0.0, 1.0, name="mu")
        ...     return bl.Normal(mu, 1.0, sample_shape=(n,), name="x")
        >>> log_joint = bl.make_log_joint_fn(program)
        >>> round(float(log_joint(2, mu=torch.tensor(0.0), x=torch.zeros(2))), 4)  # 3 log N(0|0,1)
        -2.7568
    """
    if not callable(program):
        raise TypeError(f"make_log_joint_fn expected a callable, got {type(program).__name__}")

    def log_joint(*args: Any, **kwargs: Any) -> Tensor:
        program_kwargs, value_kwargs = _split_kwargs(program, kwargs)
        fixed = collect_values("make_log_joint_fn", (), value_kwargs)
        conditioner = Conditioner(fixed)
        terms: list[Tensor] = []

        def scorer(f: Callable[..., Any], *f_args: Any, **f_kwargs: Any) -> Any:
            rv = f(*f_args, **f_kwargs)
            if isinstance(rv, RandomVariable) and not isinstance(rv, LayerParameter):
                terms.append(_log_density(rv))
            return rv

        # the conditioner (innermost) sets the given values, which conditioners around
        # the call leave alone (the shield); the scorer sees every call
        with shield(frozenset(fixed), "make_log_joint_fn"), trace(scorer), trace(conditioner):
            program(*args, **program_kwargs)
        unused = sorted(set(fixed) - conditioner.used)
        if unused:
            raise ValueError(
                f"make_log_joint_fn: the program created no random variable named {unused}; "
                "check the names (program arguments go by the program's parameter names)"
            )
        if not terms:
            return torch.zeros(())
        return torch.stack(terms).sum()

    return log_joint
