"""adaptive_jax: adaptive neural networks in JAX / Flax NNX where skipped work really does not run.

Subpackages: `models` (backbones), `nn` (layers and ops: convolution lowered per backend), `data`
(TFDS datasets, augmentation, iterators), `train` (Optax training, orbax checkpoints), and modules
`cost` (MACs / FLOPs / parameters), `latency` (measured milliseconds), `inference` (compiled
predict functions), `report` (tables, plots).
"""

from adaptive_jax import config, cost, data, inference, latency, models, nn, report, train

__version__ = "0.1.0"
__all__ = ["config", "cost", "data", "inference", "latency", "models", "nn", "report", "train"]
