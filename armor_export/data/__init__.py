"""Calibration/evaluation text and the default real assets.

- ``assets``: the cache, registry fetching, SmolLM2 / Botchan / Wikipedia preparation;
- ``text``: text sources and token windows for calibration and perplexity;
- ``models``: resolving and loading the model to prune (safetensors only).
"""
