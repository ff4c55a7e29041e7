"""Looking inside a network: per-layer units, connections, weights and MACs, the cost
of a convolution, and what a trained network learned (kernels, templates, feature maps).
Everything here computes; convlab.figures draws."""
from .layers import (COUNT_RULES, KINDS, RF_RULES, LayerStats, ModelStats, ReceptiveField,
                     layer_kind, layer_stats)
from .summary import (ModelSummary, compare_models, default_classes, imagenet_top1, model_stats,
                      parse_input)

__all__ = ["COUNT_RULES", "KINDS", "RF_RULES", "ReceptiveField", "LayerStats", "ModelStats", "layer_kind", "layer_stats",
           "ModelSummary", "compare_models", "default_classes", "imagenet_top1", "model_stats",
           "parse_input"]
