"""Helpers of the contract suite: output tensors, scalars to backpropagate, generic
parameter values, random parameters by module path, posterior means for torch layers."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

import bayesian_layers as bl
from bayesian_layers import layers


def resized(shape: tuple[int, ...], dim: int, size: int) -> tuple[int, ...]:
    out = list(shape)
    out[dim] = size
    return tuple(out)


def tensors(out: object) -> Iterator[Tensor]:
    """Every tensor of an output (a random variable gives its value)."""
    if isinstance(out, bl.RandomVariable):
        yield out.value
    elif isinstance(out, Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for item in out:
            yield from tensors(item)


def first(out: object) -> Tensor:
    return next(tensors(out))


def total(out: object) -> Tensor:
    """A scalar to backpropagate: the sum of every floating output tensor (a random
    variable gives the log-density of its value, which reaches every parameter)."""
    if isinstance(out, bl.RandomVariable):
        return out.distribution.log_prob(out.value).float().sum()
    if isinstance(out, (tuple, list)):
        return torch.stack([total(o) for o in out if o is not None]).sum()
    assert isinstance(out, Tensor)
    return out.float().sum() if out.is_floating_point() else out.new_zeros((), dtype=torch.float)


def random_params(layer: nn.Module, scale_low: float = 0.3, scale_high: float = 0.8) -> None:
    """Give every parameter a generic value: locs ~ N(0, 1), scales ~ U(low, high)."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("_rho"):
                scale = torch.empty_like(p).uniform_(scale_low, scale_high)
                p.copy_(scale.expm1().log())  # softplus⁻¹
            elif name.endswith("_log_sigma2"):  # variational dropout: log σ²
                p.copy_(2 * torch.empty_like(p).uniform_(scale_low, scale_high).log())
            else:
                p.normal_()


def random_parameter_paths(model: nn.Module) -> list[str]:
    """``"<module path>.<name>"`` of every random parameter in ``model`` (the names the
    tracers give whole draws), through the layers' public seam."""
    out = []
    for path, module in model.named_modules():
        if isinstance(module, layers.BayesianLayer):
            out += [f"{path}.{n}" if path else n for n, _ in module.named_random_parameters()]
    return out


def posterior_means(layer: nn.Module, reference: nn.Module) -> dict[str, Tensor]:
    """``reference``'s state dict (a torch layer) filled with ``layer``'s posterior means,
    matched by module path and parameter name (``out_proj.weight``)."""
    state = {}
    for key in reference.state_dict():
        path, _, name = key.rpartition(".")
        value = getattr(layer.get_submodule(path), name)
        if isinstance(value, bl.RandomVariable):
            value = value.distribution.mean
        state[key] = value.detach().clone()
    return state
