"""Learnable prompt context for class names through the frozen CLIP text encoder (CoOp, Zhou et al., 2022).

Text4Point's fine-tuning replaces the hand-written prompt by ``[p1 … pM][CLS]``: M learnable context vectors
followed by the class name's tokens. The sentence ``"X X … X {class}"`` is tokenized with open_clip's
tokenizer; the token embeddings of the M placeholder positions are replaced by the learnable vectors
(shared by all classes), and the result goes through the frozen text transformer, ``ln_final``, the pooling at
the end-of-text token and ``text_projection`` exactly as ``open_clip.CLIP.encode_text`` does. Only the
context vectors get gradients; the CLIP weights stay frozen (and are not part of this module's state dict).

The context is initialised from the token embeddings of a natural prompt's words (``"point cloud of a"`` for
M = 4, as CoOp initialises from ``"a photo of a"``), so at step 0 the class embeddings equal those of that
prompt.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import Tensor, nn

from ..errors import InputError

INIT_PROMPT = "point cloud of a"


class PromptLearner(nn.Module):
    """Class embeddings ``t`` (``K × d``, L2-normalized) from learnable context + class names.

    Args:
        clip_model: an open_clip ``CLIP`` (its text tower is used frozen; kept outside the state dict).
        tokenizer: the model's open_clip tokenizer.
        class_names: the label set's class names, in order.
        n_ctx: M, the number of learnable context vectors.
        init: words whose token embeddings initialise the context (their count must be ``n_ctx``), or None
            for a seeded normal initialisation (std 0.02).
    """

    def __init__(self, clip_model: nn.Module, tokenizer, class_names: Sequence[str], n_ctx: int = 4,
                 init: str | None = INIT_PROMPT):
        super().__init__()
        if n_ctx < 1:
            raise InputError(f"finetune.prompt_context: expected at least 1 context vector, got {n_ctx}")
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
            if not hasattr(clip_model, attr):
                raise InputError(f"clip.model: learnable prompts need an open_clip CLIP text tower; the model has "
                                 f"no {attr!r}")
        object.__setattr__(self, "_clip", clip_model)  # frozen, not a submodule: not trained, not saved
        self.class_names = list(class_names)
        self.n_ctx = int(n_ctx)
        width = clip_model.token_embedding.weight.shape[1]
        placeholder = " ".join(["X"] * self.n_ctx)
        tokens = tokenizer([f"{placeholder} {name}" for name in self.class_names])
        self.register_buffer("tokens", tokens, persistent=False)
        with torch.no_grad():
            if init:
                init_tokens = tokenizer([init])[0]
                ids = init_tokens[1:1 + self.n_ctx]
                n_words = int((init_tokens > 0).sum()) - 2  # minus start and end of text
                if n_words != self.n_ctx:
                    raise InputError(f"finetune.prompt_context: {self.n_ctx} context vectors cannot be initialised "
                                     f"from {init!r} ({n_words} tokens)")
                ctx = clip_model.token_embedding(ids.to(clip_model.token_embedding.weight.device)).float().cpu()
            else:
                ctx = torch.randn(self.n_ctx, width) * 0.02
        self.ctx = nn.Parameter(ctx.clone())

    @property
    def clip(self) -> nn.Module:
        return self._clip

    def forward(self) -> Tensor:
        """``t``: ``K × d`` normalized class embeddings (gradients flow into ``ctx`` only)."""
        m = self._clip
        tokens = self.tokens.to(m.token_embedding.weight.device)
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast)
        ctx = self.ctx.to(device=x.device, dtype=cast).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], ctx, x[:, 1 + self.n_ctx:]], dim=1)
        x = x + m.positional_embedding.to(cast)
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        x = text_global_pool(x, tokens, m.text_pool_type, eos_token_id=getattr(m, "text_eos_id", None))
        x = m.text_projection(x) if isinstance(m.text_projection, nn.Linear) else x @ m.text_projection
        return F.normalize(x.float(), dim=-1)


__all__ = ["INIT_PROMPT", "PromptLearner"]
