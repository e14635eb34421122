"""The tiny model the gemini_longctx tests build (fast on CPU, every code path)."""

from gemini_longctx.model import ModelConfig


def tiny_config(**overrides) -> ModelConfig:
    """Width 64, 2 blocks, 2 query heads of 32 and 1 kv head, 4 experts (top-2) of hidden 32."""
    base = dict(
        vocab_size=97,
        dim=64,
        layers=2,
        heads=2,
        kv_heads=1,
        num_experts=4,
        top_k=2,
        expert_hidden=32,
        max_context=256,
    )
    return ModelConfig(**{**base, **overrides})
