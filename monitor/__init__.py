"""mllm-monitor: a production drift monitor for multimodal LLMs.

The estimator core (``monitor.estimators``) implements the information-theoretic framework of
arXiv 2502.00577: effective mutual information (EMI), its drop between in-distribution and live
data (EMID), and an upper bound on that drop built from representation Jensen-Shannon divergences.
"""

__version__ = "0.1.0"
