"""Pruning: ArmorLinear, 2:4 masks, statistics, the ARMOR optimiser, baselines, jobs."""
