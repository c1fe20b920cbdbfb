"""MetaNet's example-level memory read (Munkhdalai & Yu 2017, §3.2).

The support set is written into a key memory R (the representations
r'_i = u(Q, Q*, x'_i)) and a value memory M (the fast weights W*_i). A query
with representation r reads

  a_i = softmax_i cos(R[i], r);   W* = Σ_i a_i M[i].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from memjax import addressing


def attention_weights(keys: jax.Array, query: jax.Array) -> jax.Array:
  """a_i = softmax_i cos(R[i], r): a query's attention over the memory.

  Args:
    keys: [S, D] key memory R (support representations).
    query: [D] the query representation r.

  Returns:
    [S] attention weights (non-negative, summing to 1).
  """
  return jax.nn.softmax(addressing.cosine_similarity(keys, query))


def retrieve(keys: jax.Array, values: Any, query: jax.Array) -> tuple[jax.Array, Any]:
  """Reads a query's fast weights from the example-level memory (§3.2).

  a_i = softmax_i cos(R[i], r);   W* = Σ_i a_i M[i].

  Args:
    keys: [S, D] key memory R (support representations).
    values: pytree of [S, ...] value memory M (support fast weights).
    query: [D] the query representation r.

  Returns:
    (a [S] attention weights, pytree of [...] retrieved fast weights).
  """
  a = attention_weights(keys, query)
  return a, jax.tree.map(lambda v: jnp.tensordot(a, v, axes=1), values)
