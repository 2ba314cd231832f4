"""All-or-nothing state-dict loading of a Bayesian layer (private: no stability promise).

A layer checks every key of itself and its submodules (initializers, regularizers,
nested layers) before copying any: a checkpoint with one wrong shape or a non-tensor
leaves the layer as it was, and the error names the layer.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["AllOrNothingLoading"]


def _strict_load() -> bool:
    """Whether the running ``nn.Module.load_state_dict`` is strict (torch passes every
    module ``strict=True`` whatever the caller asked; the caller's flag is a local of
    that frame). Unknown callers count as not strict."""
    code = nn.Module.load_state_dict.__code__
    frame: types.FrameType | None = sys._getframe(2)
    while frame is not None:
        if frame.f_code is code:
            return bool(frame.f_locals.get("strict", False))
        frame = frame.f_back
    return False


def forget_withheld_keys(module: nn.Module, incompatible_keys: Any) -> None:
    """Load post-hook: keys a layer held back from its submodules after a failed check
    are not "missing" (the real error is already reported)."""
    withheld = module.__dict__.pop("_withheld_keys", None)
    if withheld:
        missing = incompatible_keys.missing_keys
        missing[:] = [k for k in missing if k not in withheld]


class AllOrNothingLoading(nn.Module):
    """A module whose ``load_state_dict`` loads all of its keys (its submodules' too) or
    none: every problem is reported, nothing is copied.

    Problems: a non-tensor value, a shape that differs from the current (materialised)
    tensor's, and under a strict load a missing key of the module or a submodule.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_load_state_dict_post_hook(forget_withheld_keys)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        problems = self._state_dict_problems(state_dict, prefix)
        own = self.state_dict(keep_vars=True)
        absent = [prefix + k for k in own if prefix + k not in state_dict]
        if not problems and not (absent and _strict_load()):
            super()._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                error_msgs,
            )  # fmt: skip
            return
        error_msgs.extend(problems)
        own_keys = {prefix + k for k in {**self._parameters, **self._buffers}}
        missing_keys.extend(k for k in absent if k in own_keys)  # submodules add theirs
        withheld = {k for k in state_dict if k.startswith(prefix)}
        for k in withheld:  # this dict is torch's copy; submodules then find nothing to load
            del state_dict[k]
        self.__dict__["_withheld_keys"] = withheld

    def _state_dict_problems(self, state_dict: dict[str, Any], prefix: str) -> list[str]:
        """Messages for every entry of ``state_dict`` this module would refuse."""
        owner = type(self).__name__
        problems = []
        for name, current in self.state_dict(keep_vars=True).items():
            key = prefix + name
            if key not in state_dict:
                continue
            value = state_dict[key]
            if not torch.overrides.is_tensor_like(value):
                problems.append(
                    f"{owner} expected a tensor for {key} (so nothing in it was loaded), "
                    f"got {type(value).__name__}"
                )
                continue
            if not isinstance(current, Tensor) or torch.nn.parameter.is_lazy(current):
                continue
            shape = value.shape
            if current.dim() == 0 and tuple(shape) == (1,):  # torch's 0.3 compatibility
                continue
            if shape != current.shape:
                problems.append(
                    f"size mismatch for {key}: copying a param with shape {shape} from "
                    f"checkpoint, the shape in current model is {current.shape} ({owner}: "
                    "nothing in it was loaded)"
                )
        return problems
