"""Architecture registry, penultimate features, ConvNet block feature maps,
per-class BatchNorm statistics and teacher checkpoints."""

from wmdd.models.convnet import block_outputs
from wmdd.models.features import classifier_module, forward_with_features, penultimate_features
from wmdd.models.registry import create_model, model_names, parse_model_kwargs

__all__ = ["block_outputs", "create_model", "model_names", "parse_model_kwargs", "classifier_module",
           "forward_with_features", "penultimate_features"]
