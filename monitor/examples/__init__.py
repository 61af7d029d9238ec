"""Example data shipped with the package (read by ``mllm-monitor quickstart``).

``llava_eval_text/``: real llava-v1.5-13b traffic, text side, from the LLaVA repository's
published evaluation outputs; see its README.md for the sources, the selection and the terms.
"""
