"""Model-agnostic long-context evaluations of the Gemini 1.5 report §5 (arXiv:2403.05530).

Any causal LM behind the `LM` protocol (ours, `FullForwardLM` around a `forward(ids) -> logits`
callable, or a local Hugging Face model via `load_hf`): NLL by position with a power-law fit,
needle in a haystack, multi-needle recall, MRCR-style co-reference, and their plots.
"""

from gemini_longctx.harness.lm import (
    LM,
    FullForwardLM,
    HFCausalLM,
    HFTokenizer,
    Session,
    Tokenizer,
    check_context,
    greedy,
    load_hf,
    prefill,
    stream_nll,
)
from gemini_longctx.harness.mrcr import MRCRResult, MRCRTrial, mrcr, ordinal
from gemini_longctx.harness.niah import (
    ANSWER_KINDS,
    NEEDLE,
    QUESTION,
    MultiNeedleResult,
    NeedlePrompt,
    NeedleResult,
    NeedleTrial,
    classify_answer,
    insert_needles,
    multi_needle,
    needle_in_haystack,
    needle_prompt,
    score_answer,
)
from gemini_longctx.harness.nll import PowerLaw, cumulative_average, fit_power_law, nll_by_position
from gemini_longctx.harness.plots import plot_needle_heatmap, plot_nll_by_position

__all__ = [
    "ANSWER_KINDS",
    "LM",
    "NEEDLE",
    "QUESTION",
    "FullForwardLM",
    "HFCausalLM",
    "HFTokenizer",
    "MRCRResult",
    "MRCRTrial",
    "MultiNeedleResult",
    "NeedlePrompt",
    "NeedleResult",
    "NeedleTrial",
    "PowerLaw",
    "Session",
    "Tokenizer",
    "check_context",
    "classify_answer",
    "cumulative_average",
    "fit_power_law",
    "greedy",
    "insert_needles",
    "load_hf",
    "mrcr",
    "multi_needle",
    "needle_in_haystack",
    "needle_prompt",
    "nll_by_position",
    "ordinal",
    "plot_needle_heatmap",
    "plot_nll_by_position",
    "prefill",
    "score_answer",
    "stream_nll",
]
