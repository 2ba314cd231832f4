"""Token generation from the posterior predictive of a language model with Bayesian
layers (Bayesian LoRA adapters, Laplace posteriors, Bayesian attention), with each new
token's uncertainty split into its aleatoric and epistemic parts.

Two paths, one law: a ``transformers`` causal language model keeps a key-value cache
(K samples frozen for the whole generation and folded into the batch, so each new token
costs one forward of one position; with ``trunk="prefix"`` the layers before the first
stochastic module run and cache once for the K samples: ``_cached_generation``); any
other model returning ``(B, T, vocab)`` logits is called through
:func:`bayesian_layers.predict` on the growing sequence at every step (its ``trunk=``
shares the deterministic computation before the first stochastic module likewise).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._cached_generation import cache_keyword, generate_cached
from ._checks import check_real
from .predictive import Predictive, predict
from .uncertainty import entropy_decomposition

__all__ = ["Generation", "generate"]


class Generation(NamedTuple):
    """The result of :func:`generate`; ``n`` new tokens per sequence, in nats.

    Attributes:
        tokens: the prompts followed by the new tokens, ``(B, T + n)``.
        log_probs: the log predictive probability of each new token, ``(B, n)``: their
            sum scores the continuation under the token-level posterior predictive.
        total: the entropy of each step's predictive distribution, ``(B, n)``.
        aleatoric: the expected entropy under the K function samples, ``(B, n)``.
        epistemic: the mutual information between the next token and the function
            (``total - aleatoric``, BALD), ``(B, n)``.
    """

    tokens: Tensor
    log_probs: Tensor
    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor


def generate(
    model: nn.Module,
    tokens: Tensor,
    max_new_tokens: int,
    num_samples: int = 8,
    *,
    temperature: float = 1.0,
    greedy: bool = False,
    cache: bool | None = None,
    context: int | None = None,
    trunk: nn.Module | str | None = "auto",
    generator: torch.Generator | None = None,
) -> Generation:
    r"""Continue ``tokens`` by ``max_new_tokens`` tokens drawn from the posterior predictive.

    At every step the next token's distribution is the mixture of the K function samples'
    (Bayesian model averaging over the token):
    :math:`\bar p(\cdot) = \frac1K \sum_k \mathrm{softmax}(z_k / T)`, with ``z_k`` the
    logits of sample ``k`` at the last position. The token is drawn from
    :math:`\bar p` (``greedy``: its most probable token) and appended for all K samples,
    so they read one sequence. Each step's uncertainty is decomposed as in
    :mod:`bayesian_layers.uncertainty`: ``total`` = ``aleatoric`` + ``epistemic``. To
    draw whole continuations from single function samples instead (K different texts),
    run the model's own generation inside :func:`~bayesian_layers.frozen_sample` and
    :func:`~bayesian_layers.vectorized_samples` on the prompt repeated K times.

    Paths:

    * ``cache=True`` (default for models whose ``forward`` takes ``use_cache`` and a
      ``cache`` or ``past_key_values`` argument: ``transformers`` causal language
      models): the K function samples are drawn once
      (:func:`~bayesian_layers.frozen_sample`) and folded into the batch; the prompt runs
      once through the K
      samples and every new token is one forward of one position per sample, each
      sample reading its own key-value cache (adapters in a block change its keys and
      values, so the caches differ). Cost per token: one ``(K B, 1)`` forward. With
      ``trunk="prefix"`` the modules before the first stochastic one (every block before
      the first Bayesian adapter) run once per step on the ``B`` sequences and keep one
      key-value cache for all K samples (a ``transformers`` ``DynamicCache`` of full
      attention layers; other caches run unshared, with a warning): cost per token, that
      prefix once plus K of the rest, as for :func:`~bayesian_layers.predict`.
    * ``cache=False`` (any model returning ``(B, T, vocab)`` logits, a
      :class:`~bayesian_layers.RandomVariable` over them or over the tokens (a
      ``layers.Categorical`` output: its class probabilities are read) or a mapping with
      ``logits``): every step
      is :func:`~bayesian_layers.predict` on the sequence so far (its last ``context``
      tokens), with fresh function samples, so ``trunk=`` applies: ``trunk="prefix"``
      runs the modules before the first stochastic one once for the K samples (all of a
      model whose only Bayesian adapter is in its last block but that part). Cost per
      token: one forward of the window plus K of the stochastic rest.

    Both estimate the same per-token predictive; they differ in which function samples
    they draw (one set for the whole generation, or a fresh set per step). End-of-text
    tokens do not stop generation: cut the sequences where you need.

    Args:
        model: a language model in eval mode: ``model(tokens)`` gives logits
            ``(B, T, vocab)`` (or an output with them), sample-folded batches allowed.
        tokens: the prompts, integer token ids ``(B, T)``, ``T >= 1``, all of one length
            (no padding: no attention mask is passed).
        max_new_tokens: ``n >= 1``, the tokens to add.
        num_samples: K, function samples per step.
        temperature: each sample's logits are divided by it before the softmax (> 0).
        greedy: take each step's most probable token instead of drawing it.
        cache: the key-value cache path (see above); ``None`` picks it where the model
            takes a cache.
        context: ``cache=False`` only: the longest window fed to the model (a model with
            a fixed number of positions); ``None``: the whole sequence.
        trunk: ``cache=False``: :func:`~bayesian_layers.predict`'s ``trunk``;
            ``cache=True``: ``"prefix"`` shares the prefix (above), ``"auto"`` or ``None``
            does not.
        generator: draws the tokens (default: torch's global generator); the function
            samples come from the layers' own noise, as in ``predict``.

    Returns:
        A :class:`Generation`: ``tokens`` ``(B, T + n)`` and, per new token, its log
        predictive probability and the ``total``/``aleatoric``/``epistemic`` entropies
        ``(B, n)``.

    Example:
        >>> import torch, bayesian_layers as bl
        >>> lm = torch.nn.Sequential(torch.nn.Embedding(5, 8),
        ...                          bl.layers.LinearFlipout(8, 5)).eval()
        >>> out = bl.generate(lm, torch.tensor([[0, 1]]), 3, num_samples=4)
        >>> out.tokens.shape, out.epistemic.shape
        (torch.Size([1, 5]), torch.Size([1, 3]))
        >>> bool(torch.allclose(out.total, out.aleatoric + out.epistemic, atol=1e-6))
        True
    """
    n, k, temperature = _check(model, tokens, max_new_tokens, num_samples, temperature, context)
    takes_cache = cache_keyword(model) is not None
    if cache is None:
        cache = takes_cache
    elif not isinstance(cache, bool):
        raise TypeError(f"generate expected `cache` True, False or None, got {cache!r}")
    elif cache and not takes_cache:
        raise TypeError(
            f"generate(cache=True): {type(model).__name__}.forward takes no `use_cache` "
            "and `cache`/`past_key_values` (a transformers causal language model does); "
            "pass cache=False"
        )
    if not isinstance(greedy, bool):
        raise TypeError(f"generate expected `greedy` a bool, got {greedy!r}")
    if cache and context is not None:
        raise ValueError(
            "generate(cache=True) takes no `context` (the cache holds the whole sequence); "
            f"got context={context!r}"
        )
    if cache and not (trunk is None or trunk in ("auto", "prefix")):
        raise ValueError(
            f"generate(cache=True) expected `trunk` 'prefix', 'auto' or None, got {trunk!r}"
        )
    pick = _Picker(k, temperature, greedy, generator)
    # under torch.inference_mode it runs in no-grad mode: the shared prefix checks its
    # recorded outputs' in-place versions, which inference tensors do not keep
    with torch.inference_mode(False), torch.no_grad():
        if tokens.is_inference():
            tokens = tokens.clone()
        if cache:
            generate_cached(model, tokens, k, n, pick, share=trunk == "prefix")
        else:
            sequence = tokens
            for _ in range(n):
                window = sequence if context is None else sequence[:, -context:]
                pred = predict(model, window, num_samples=k, trunk=trunk)
                token = pick(_last_logits(pred)).to(sequence.dtype)  # (B, 1)
                sequence = torch.cat([sequence, token], 1)  # (B, T + i)
    return pick.result(tokens)


def _last_logits(pred: Predictive) -> Tensor:
    """The K samples' logits at the last position, ``(K, B, vocab)``, from ``predict`` on
    ``(B, T)`` tokens: for a categorical random-variable output (its value is a drawn
    token), the log of its class probabilities; else the output ``(K, B, T, vocab)``."""
    probs = pred.output_probs
    if probs is not None and probs.dim() == 4:  # (K, B, T, vocab)
        return probs[:, :, -1].log()
    out = pred.samples
    if out.dim() != 4 or not out.is_floating_point():
        raise ValueError(
            "generate expected the model to give logits of shape (B, T, vocab) (a tensor, a "
            "mapping with them, or a random variable over them or over the tokens), got "
            f"per function sample an output of shape {tuple(out.shape[1:])} and dtype "
            f"{out.dtype}"
        )
    return out[:, :, -1]


class _Picker:
    """Chooses each step's token from the K samples' logits and keeps its record."""

    def __init__(
        self, k: int, temperature: float, greedy: bool, generator: torch.Generator | None
    ) -> None:
        self.k, self.temperature, self.greedy, self.generator = k, temperature, greedy, generator
        self.steps: list[tuple[Tensor, ...]] = []

    def __call__(self, logits: Tensor) -> Tensor:
        """``logits`` ``(K, B, vocab)`` (or ``(K B, vocab)``, sample-major); returns the
        chosen tokens ``(B, 1)``."""
        logits = logits.reshape(self.k, -1, logits.shape[-1]).float()  # (K, B, V)
        probs = (logits / self.temperature).softmax(-1)  # (K, B, V)
        mixture = probs.mean(0)  # (B, V)
        if self.greedy:
            token = mixture.argmax(-1, keepdim=True)  # (B, 1)
        else:
            token = torch.multinomial(mixture, 1, generator=self.generator)  # (B, 1)
        chosen = mixture.gather(-1, token).squeeze(-1).log()  # (B,)
        total, aleatoric, epistemic = entropy_decomposition(probs)  # (B,): our softmaxes
        self.steps.append((token, chosen, total, aleatoric, epistemic))
        return token

    def result(self, prompt: Tensor) -> Generation:
        tokens, chosen, total, aleatoric, epistemic = zip(*self.steps, strict=True)
        new = torch.cat(tokens, -1).to(prompt.device, prompt.dtype)  # (B, n)
        per_step = (torch.stack(c, -1) for c in (chosen, total, aleatoric, epistemic))
        return Generation(torch.cat([prompt, new], 1), *per_step)


def _check(
    model: nn.Module,
    tokens: Tensor,
    max_new_tokens: int,
    num_samples: int,
    temperature: float,
    context: int | None,
) -> tuple[int, int, float]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"generate expected `model` an nn.Module, got {type(model).__name__}")
    if (not isinstance(tokens, Tensor) or tokens.dtype.is_floating_point or tokens.is_complex()
            or tokens.dtype == torch.bool):  # fmt: skip
        got = tokens.dtype if isinstance(tokens, Tensor) else type(tokens).__name__
        raise TypeError(f"generate expected `tokens` an integer tensor of token ids, got {got}")
    if tokens.dim() != 2 or tokens.shape[0] < 1 or tokens.shape[1] < 1:
        raise ValueError(
            f"generate expected `tokens` of shape (B, T) with B, T >= 1, got {tuple(tokens.shape)}"
        )
    for name, value in (("max_new_tokens", max_new_tokens), ("num_samples", num_samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"generate expected `{name}` an int >= 1, got {value!r}")
    if context is not None and (isinstance(context, bool) or not isinstance(context, int)
                                or context < 1):  # fmt: skip
        raise ValueError(f"generate expected `context` an int >= 1 or None, got {context!r}")
    return (
        max_new_tokens,
        num_samples,
        check_real("generate", "temperature", temperature, strict=True),
    )
