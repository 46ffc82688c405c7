"""Self-attention for HLIP blocks: timm's `Attention` (same parameters) with a faster kernel choice and an
optional recording mode for attention maps.

Kernels: flash-attn when it is installed and the tensors are half precision on CUDA, otherwise torch's
`scaled_dot_product_attention` (the path that always works, CPU included). Recording computes the softmax
explicitly and keeps it (and its gradient) for gradient-weighted attention maps.
"""
import torch
import torch.nn.functional as F
from timm.layers import Attention

try:  # optional extra `flash`; never required
    from flash_attn import flash_attn_func as _flash_attn_func
except Exception:  # ImportError, or a broken CUDA build
    _flash_attn_func = None


def flash_attn_available() -> bool:
    return _flash_attn_func is not None and torch.cuda.is_available()


class HLIPAttention(Attention):
    """timm Attention whose state-dict keys (`qkv`, `proj`) equal the official checkpoints'."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self, "gate", None) is not None:
            raise ValueError("gated attention is not part of HLIP")
        self.attn_dim = self.num_heads * self.head_dim  # timm < 1.0.20 lacks the attribute
        # None, "probs" or "mean": set by the attention-map code (HLIPCore.attention_maps); "class_row": the
        # class token's row of probabilities [W, heads, 1, N] with its graph, beside the fast kernel's output
        # (the training's attention loss)
        self.record = None
        self.attn_probs = None

    def _use_flash(self, q: torch.Tensor) -> bool:
        return (_flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
                and self.record is None)

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim)
        if attn_mask is None and not is_causal and self._use_flash(qkv):
            q, k, v = qkv.unbind(2)  # flash-attn takes [B, L, heads, head_dim]
            out = _flash_attn_func(self.q_norm(q), self.k_norm(k), v,
                                   dropout_p=self.attn_drop.p if self.training else 0.0)
            out = out.reshape(b, n, self.attn_dim)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            q, k = self.q_norm(q), self.k_norm(k)
            if self.record == "probs":  # full probabilities, kept with their graph (gradient-weighted maps)
                attn = ((q * self.scale) @ k.transpose(-2, -1))
                if attn_mask is not None:
                    attn = attn + attn_mask
                attn = attn.softmax(dim=-1)
                self.attn_probs = attn
                out = self.attn_drop(attn) @ v
            elif self.record == "mean":  # head-averaged probabilities only (rollout), a few heads at a time
                out, self.attn_probs = self._attention_keeping_head_mean(q, k, v, attn_mask)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                                     dropout_p=self.attn_drop.p if self.training else 0.0)
                if self.record == "class_row":
                    self.attn_probs = ((q[:, :, :1] * self.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)
            out = out.transpose(1, 2).reshape(b, n, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(out)))

    def _attention_keeping_head_mean(self, q, k, v, attn_mask, heads_per_step: int = 2):
        """Attention output plus the head-mean of the probabilities, without holding all heads' matrices."""
        outs, mean = [], None
        for h in range(0, self.num_heads, heads_per_step):
            scores = (q[:, h:h + heads_per_step] * self.scale) @ k[:, h:h + heads_per_step].transpose(-2, -1)
            if attn_mask is not None:
                scores = scores + attn_mask
            probs = scores.float().softmax(dim=-1)
            outs.append(probs.to(v.dtype) @ v[:, h:h + heads_per_step])
            part = probs.sum(dim=1)
            mean = part if mean is None else mean + part
        return torch.cat(outs, dim=1), (mean / self.num_heads).to(torch.bfloat16)

    def forward_class_token(self, x: torch.Tensor) -> torch.Tensor:
        """Attention output of the first (class) token only, [B, 1, C], attending to all tokens of x.

        Used for the last block when only the pooled class token is needed: the query (and the work of every
        other row) is skipped, and recorded probabilities are one row per head, so maps cost almost nothing.
        """
        b, n, c = x.shape
        w, bias = self.qkv.weight, self.qkv.bias
        d = self.attn_dim
        q = F.linear(x[:, :1], w[:d], None if bias is None else bias[:d]).reshape(b, 1, self.num_heads, self.head_dim)
        kv = F.linear(x, w[d:], None if bias is None else bias[d:]).reshape(b, n, 2, self.num_heads, self.head_dim)
        q = self.q_norm(q.transpose(1, 2))
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        k = self.k_norm(k)
        if self.record is not None:
            probs = ((q * self.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)  # [B, heads, 1, N]
            self.attn_probs = probs if self.record in ("probs", "class_row") else probs.mean(dim=1).to(torch.bfloat16)
            out = probs.to(v.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, 1, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(out)))
