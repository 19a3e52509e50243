"""How a query picks blocks: a probe (mean or activation-aware), a score (dot or cosine with the
question term), and a budget (fixed top-k or the dynamic cut-off shared across layers)."""

from .budget import DynamicCutoff, FixedTopK, normalized_entropy
from .methods import METHOD_CLASSES, RetrievalMethod, make_method
from .probe import ActivationStats, activation_probe, mean_probe
from .score import cosine_scores, dot_scores

__all__ = ["ActivationStats", "activation_probe", "mean_probe", "cosine_scores", "dot_scores",
           "FixedTopK", "DynamicCutoff", "normalized_entropy", "RetrievalMethod", "make_method",
           "METHOD_CLASSES"]
