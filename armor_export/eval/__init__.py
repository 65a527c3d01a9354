from armor_export.eval.perplexity import perplexity

__all__ = ["perplexity"]
