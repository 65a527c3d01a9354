"""8-bit quantization of pruned checkpoints (docs/quant.md)."""
