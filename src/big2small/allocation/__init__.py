"""Bit allocation: sharing a size budget out among a model's tensors by predicted output error
(allocate.py), from error curves (curves.py), data-free sensitivities (sensitivity.py) and a
multiple-choice knapsack (knapsack.py). The config (config.py) is a recipe field; import the
allocator from allocate.py (this package's __init__ imports nothing, so that recipes stay light)."""
