"""memjax: memory-augmented neural networks in JAX/Flax."""

from memjax import addressing, memory

__version__ = "0.1.0"
