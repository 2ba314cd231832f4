"""Training Bayesian layers with ``torch.distributed``: the ELBO, seeds, the KL, plans.

Use as ``bl.distributed.X``. The engine is torch's own: ``DistributedDataParallel``,
FSDP2 (``torch.distributed.fsdp.fully_shard``) and DTensor tensor parallelism
(``parallelize_module`` with the styles of :mod:`bayesian_layers.distributed.tensor_parallel`,
re-exported here). ``docs/training.md`` ("Distributed training") has the recipes.

**The distributed ELBO.** :func:`elbo_loss` takes the arguments of
:func:`bayesian_layers.elbo_loss`, ``(nll_mean, model, num_examples)``, where
``nll_mean`` is the mean negative log-likelihood of *this rank's* examples. DDP
and FSDP2 average gradients over the data-parallel ranks: the average of the
ranks' ``nll_mean`` is the global mean (equal local batches), and the KL, whose
gradient is the same on every rank, is counted once. Tensor-parallel ranks see
the same batch and the KL of sharded layers is summed over the shards with one
all-reduce (:func:`kl_divergence`). So one formula, ``nll_mean + KL / N``, serves
every mode; ``accumulation_steps=k`` divides it by ``k`` for gradient
accumulation over ``k`` micro-batches, which keeps the KL counted once per
optimiser step. Unequal local batches use the sum form
``elbo_loss(nll_sum, num_examples, global_batch_size=B, model=model)``, which
needs the data-parallel size (from ``dp_mesh=``).

**FSDP2.** The KL of a layer whose parameters are sharded is computed from the
local float32 shards and summed over the shards (its gradient goes to the local
shards directly, not through FSDP's averaging, which is what the formula above
needs). So the default ``fully_shard`` (parameters resharded after each
unit's forward pass) works, mixed-precision parameters do not round the KL, and
the KL may be taken inside the forward pass (:class:`WithKL`) or after it.

**Seeds.** :func:`manual_seed` seeds torch's default generator from
``(seed, data-parallel rank)``, the rank read from ``mesh=`` (the data-parallel
device mesh): data-parallel ranks draw independent noise, ranks of one
tensor-parallel group share their stream (replicated Bayesian layers stay
replicated), and the run is reproducible from one seed. A tensor-parallel layer
checks at its first call that its group's streams agree and raises otherwise.
"""

from .data_parallel import (
    WithKL,
    clip_grad_norm_,
    kl_divergence,
    manual_seed,
    parameter_bytes,
)
from .elbo import elbo_loss
from .tensor_parallel import (
    BayesianColwiseParallel,
    BayesianRowwiseParallel,
    derive_seed,
    local_view,
)
from .tensor_parallel_attention import BayesianAttentionParallel, transformer_plan

__all__ = [
    "manual_seed",
    "elbo_loss",
    "kl_divergence",
    "WithKL",
    "transformer_plan",
    "parameter_bytes",
    "clip_grad_norm_",
    "BayesianColwiseParallel",
    "BayesianRowwiseParallel",
    "BayesianAttentionParallel",
    "derive_seed",
    "local_view",
]
