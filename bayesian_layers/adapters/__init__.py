"""Low-rank adapters for fine-tuning pretrained models, with Bayesian factors.

``bl.lora(model, target=["q_proj", "v_proj"], rank=8, alpha=16, posterior="flipout")``
freezes a model and adds :class:`LoRALinear` adapters whose down projection ``A`` is a
random variable on the library's dense layers (BLoB, Wang et al. 2024);
``posterior="laplace"`` keeps point estimates for a post-hoc Kronecker Laplace fit of
the adapters (Laplace-LoRA, Yang et al. 2024: ``bl.laplace.fit(..., subset="lora")``).

The map: ``_adapter`` (the module), ``_targets`` (name patterns), ``_attention``
(``nn.MultiheadAttention``'s ``out_proj``), ``api`` (``lora``, state dict, merging),
``_peft`` (converting a ``peft`` model's adapters).
"""

from ._adapter import POSTERIORS, LoRALinear
from ._attention import AdaptedMultiheadAttention
from ._peft import from_peft_layer, from_plain_adapter
from .api import adapters, freeze_base, load_lora_state_dict, lora, lora_state_dict, merge_lora

__all__ = [
    "lora",
    "LoRALinear",
    "adapters",
    "lora_state_dict",
    "load_lora_state_dict",
    "merge_lora",
    "freeze_base",
    "from_peft_layer",
    "from_plain_adapter",
    "AdaptedMultiheadAttention",
    "POSTERIORS",
]
