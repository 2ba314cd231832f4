"""The public seam of a Bayesian layer's parameters: what each one is
(:class:`ParameterSpec`), its posterior, its KL term (private module; the methods are
public on :class:`~bayesian_layers.layers.base.BayesianLayer`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...initializers import TrainableInitializer, TrainableNormal, get_initializer
from ...random_variables.variable import RandomVariable
from ...regularizers import Regularizer

__all__ = ["ParameterSpec", "ParameterSeam"]


@dataclass(frozen=True)
class ParameterSpec:
    """What a layer declares about one of its parameters (see
    :meth:`~bayesian_layers.layers.base.BayesianLayer.named_random_parameters`).

    Attributes:
        name: the parameter's name on the layer (``"weight"``, ``"bias"``).
        shape: the parameter's shape (no sample dimensions).
        initializer: the posterior family (``.is_normal``, ``.is_deterministic``,
            ``.loc_scale(layer, name)``, ...).
        regularizer: the penalty of the posterior (a KL), ``None`` when there is none.
        is_random: ``False`` for point estimates (deterministic families).

    Example:
        >>> import bayesian_layers as bl
        >>> spec = bl.layers.LinearFlipout(3, 2).parameter_spec("weight")
        >>> spec.name, spec.shape, spec.is_random
        ('weight', torch.Size([2, 3]), True)
    """

    name: str
    shape: torch.Size
    initializer: TrainableInitializer
    regularizer: Regularizer | None
    is_random: bool


class ParameterSeam(nn.Module):
    """What other code may ask a Bayesian layer about its parameters: their specs,
    posteriors and KL terms; and the one way to replace a posterior family object."""

    _inits: dict[str, TrainableInitializer]
    _random: dict[str, torch.Size]
    _last_sample: dict[str, Tensor | None]

    def _init_of(self, name: str) -> TrainableInitializer:
        init = self._inits.get(name)
        if init is None:
            raise ValueError(
                f"{type(self).__name__} has no parameter {name!r}; its parameters are "
                f"{list(self._inits)}"
            )
        return init

    def parameter_spec(self, name: str) -> ParameterSpec:
        """What this layer declares about parameter ``name``.

        Raises:
            ValueError: ``name`` is not a parameter of this layer (the message names
                the layer and lists its parameters).

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearReparameterization(3, 2)
            >>> spec = layer.parameter_spec("bias")  # a point estimate by default
            >>> spec.shape, type(spec.initializer).__name__, spec.is_random
            (torch.Size([2]), 'TrainableDeterministic', False)
            >>> layer.parameter_spec("kernel")
            Traceback (most recent call last):
            ...
            ValueError: LinearReparameterization has no parameter 'kernel'; its parameters are ...
        """
        init = self._init_of(name)
        reg = self._modules.get(f"{name}_regularizer")
        random = name in self._random
        shape = self._random[name] if random else init.point(self, name).shape
        return ParameterSpec(
            name=name,
            shape=torch.Size(shape),
            initializer=init,
            regularizer=reg if isinstance(reg, Regularizer) else None,
            is_random=random,
        )

    def named_random_parameters(
        self, *, include_deterministic: bool = False
    ) -> Iterator[tuple[str, ParameterSpec]]:
        """``(name, spec)`` of this layer's random parameters, in declaration order.

        Only the layer's own (as ``named_parameters(recurse=False)``); a nested
        Bayesian layer lists its own.

        Args:
            include_deterministic: list the point-estimate parameters declared with
                :meth:`add_param` as well (``spec.is_random`` is then ``False``).

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearFlipout(3, 2)  # a deterministic bias by default
            >>> [(n, tuple(s.shape)) for n, s in layer.named_random_parameters()]
            [('weight', (2, 3))]
            >>> [n for n, _ in layer.named_random_parameters(include_deterministic=True)]
            ['weight', 'bias']
        """
        for name in self._inits:
            if include_deterministic or name in self._random:
                yield name, self.parameter_spec(name)

    def posterior(self, name: str) -> torch.distributions.Distribution:
        """The current posterior ``q`` of parameter ``name`` (a
        :class:`bayesian_layers.DeterministicDistribution` for a point estimate).

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearReparameterization(3, 2)
            >>> q = layer.posterior("weight")
            >>> torch.equal(q.mean, layer.weight_loc), q.batch_shape
            (True, torch.Size([2, 3]))
        """
        return self._init_of(name).distribution(self, name)

    def posterior_loc_scale(self, name: str) -> tuple[Tensor, Tensor | None]:
        """``(loc, scale)`` of the normal posterior of ``name``; ``(value, None)`` for a
        point estimate.

        Raises:
            ValueError: the posterior of ``name`` is neither normal nor deterministic.

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearFlipout(3, 2)
            >>> loc, scale = layer.posterior_loc_scale("weight")
            >>> torch.allclose(scale, torch.nn.functional.softplus(layer.weight_rho))
            True
        """
        init = self._init_of(name)
        if init.is_deterministic:
            return init.point(self, name), None
        if not init.is_normal:
            raise ValueError(
                f"{type(self).__name__}.posterior_loc_scale needs a normal or deterministic "
                f"posterior, got {type(init).__name__} for {name!r}"
            )
        return init.loc_scale(self, name)

    def set_initializer(self, name: str, initializer: str | TrainableInitializer) -> None:
        """Replace the posterior family object of ``name``, keeping its parameters.

        The new family must read the same parameters (same ``suffixes``, e.g.
        ``loc``/``rho``, and both random or both deterministic); their values are kept
        and the posterior becomes the new family's law over them. Use it to record how
        the parameters were set (e.g. a pretrained posterior). The attribute
        ``<name>_initializer`` and the layer's tables stay consistent.

        Raises:
            ValueError: unknown ``name``, a family with other parameters, or a
                non-normal family where the layer's estimator needs a normal one
                (Flipout's weight, local reparameterization's weight and bias).

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearFlipout(3, 2)
            >>> layer.set_initializer("weight", bl.initializers.TrainableHeNormal())
            >>> type(layer.weight_initializer).__name__
            'TrainableHeNormal'
        """
        old = self._init_of(name)
        owner = type(self).__name__
        init = get_initializer(initializer, owner=f"{owner}({name}_initializer)")
        if init.suffixes != old.suffixes or init.is_deterministic != old.is_deterministic:
            raise ValueError(
                f"{owner}.set_initializer expected a family with the parameters of "
                f"{type(old).__name__} for {name!r} (suffixes {old.suffixes}), got "
                f"{type(init).__name__} (suffixes {init.suffixes})"
            )
        estimator = getattr(type(self), "estimator", None)
        role = "bias" if "bias" in name else "weight"  # in_proj_bias, bias_ih_l0, ...
        if estimator is not None and not estimator.accepts(role, init):
            raise ValueError(
                f"{owner}.set_initializer: the {estimator.name} estimator needs a normal "
                f"(or deterministic) {name} posterior, got {type(init).__name__}"
            )
        setattr(self, f"{name}_initializer", init)
        self._inits[name] = init

    # ---------------------------------------------------------------- losses
    def _normal_penalty(
        self, reg: Regularizer, init: TrainableInitializer, name: str
    ) -> Tensor | None:
        # from the raw rho (stable log-scale) when scale = softplus(rho), as for every
        # TrainableNormal that keeps its loc_scale; a family computing its scale
        # otherwise goes through its own loc_scale
        if type(init).loc_scale is TrainableNormal.loc_scale:
            return reg.softplus_normal_penalty(*init.loc_rho(self, name))
        return reg.normal_penalty(*init.loc_scale(self, name))

    def kl_terms(self) -> dict[str, Tensor]:
        """The regularizer term (a scalar, usually a KL) of every parameter that has a
        regularizer, by parameter name, from the current posteriors.

        A Monte Carlo regularizer uses the latest draw of the parameter (divided by its
        number of samples), or draws afresh when there is none. A draw whose shape no
        longer fits the parameter (parameters resharded since) is not used.

        Example:
            >>> import bayesian_layers as bl
            >>> layer = bl.layers.LinearReparameterization(3, 2)
            >>> terms = layer.kl_terms()  # the default bias is a point estimate: no term
            >>> list(terms), terms["weight"].shape
            (['weight'], torch.Size([]))
        """
        out: dict[str, Tensor] = {}
        for name, init in self._inits.items():
            reg = self._modules.get(f"{name}_regularizer")
            if not isinstance(reg, Regularizer):
                continue
            if init.is_normal:
                term = self._normal_penalty(reg, init, name)
                if term is not None:
                    out[name] = term
                    continue
            q = init.distribution(self, name)
            value = self._last_sample.get(name) if name in self._random else None
            shape = next(iter(init.params(self, name).values())).shape
            if value is not None and value.shape[value.dim() - len(shape) :] != shape:
                value = None  # drawn before the parameters were resharded
            samples = 1
            if not reg.needs_sample:
                rv = RandomVariable(q, value=init.point(self, name))
            elif value is not None:
                lead = value.shape[: value.dim() - len(shape)]
                samples = max(1, lead.numel())
                rv = RandomVariable(q, value=value, sample_shape=lead)
            else:
                rv = RandomVariable(q)
            term = reg(rv)
            out[name] = term / samples if samples > 1 else term
        return out

    @property
    def losses(self) -> list[Tensor]:
        """Regularizer terms (scalars) of the current parameter distributions:
        ``list(self.kl_terms().values())``."""
        return list(self.kl_terms().values())
