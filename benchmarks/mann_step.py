"""MANN Omniglot train step: the current step against the previous one, side by side.

The step is Santoro et al. 2016's configuration (LSTM 200, 4 heads, memory
128 × 40, 5-way episodes of 50 steps, 20×20 images, Adam 1e-3, clip ±10) on
synthetic episodes. Variants compute the same loss and gradients
(``tests/test_mann.py`` checks both against autodiff and ``nn.RNN``):

* ``previous``: ``nn.RNN(MANNCell)`` with autodiff through the LRUA step — the
  train step before ``memjax.mann.unroll`` and the hand-written LRUA backward;
* ``unroll``: :func:`memjax.mann.unroll` (the controller's input projection and
  the output layer as single matmuls outside the ``lax.scan``), autodiff LRUA;
* ``custom_vjp``: ``nn.RNN(MANNCell)`` with the hand-written LRUA backward;
* ``current``: both — what ``experiments/omniglot_mann.py`` trains with.

Timed runs alternate (previous, unroll, …, previous, …) in one process; the
table gives median ms/step, episodes/s and the speed relative to ``previous``.

    python -m benchmarks.mann_step --batches 16,64 --out runs/bench_mann_step
"""

from __future__ import annotations

import argparse
import contextlib

from benchmarks import common

VARIANTS = ("previous", "unroll", "custom_vjp", "current")


@contextlib.contextmanager
def _autodiff_lrua(enabled: bool):
  """While tracing: differentiate the LRUA step by autodiff instead of its custom VJP."""
  from memjax import mann
  custom = mann._lrua_update
  if enabled:
    mann._lrua_update = lambda *a: mann._lrua_forward(*a)[0]
  try:
    yield
  finally:
    mann._lrua_update = custom


def build(variant: str, batch: int, *, seq_len: int = 50, classes: int = 5, image_size: int = 20,
          quick: bool = False, seed: int = 0):
  """Compiled Adam step of one variant: ``(step(state) -> (state, loss), state, compile_s, first_loss)``."""
  import flax.linen as nn
  import jax
  import optax

  from memjax import mann, training
  kw = dict(memory_size=16, word_size=8, num_read_heads=2, controller_features=16) if quick else {}
  cell = mann.MANNCell(features=classes, **kw)
  model = nn.RNN(cell)
  width = image_size * image_size + classes

  def episodes(key):
    kx, ky = jax.random.split(key)
    labels = jax.random.randint(ky, (batch, seq_len), 0, classes)
    prev = jax.nn.one_hot(labels, classes)
    prev = jax.numpy.concatenate([jax.numpy.zeros_like(prev[:, :1]), prev[:, :-1]], axis=1)
    images = jax.random.uniform(kx, (batch, seq_len, image_size * image_size))
    return jax.numpy.concatenate([images, prev], axis=-1), labels

  use_unroll = variant in ("unroll", "current")
  apply = (lambda p, x: mann.unroll(cell, p, x)) if use_unroll else model.apply

  def loss_fn(p, key):
    x, y = episodes(key)
    return mann.mann_loss(apply(p, x), y), {}

  params = model.init(jax.random.key(seed), jax.numpy.zeros((1, seq_len, width)))
  opt = optax.chain(optax.clip(10.0), optax.adam(1e-3))
  state = training.init_state(params, opt)
  with _autodiff_lrua(variant in ("previous", "unroll")):
    compiled = common.compile_fn(training.make_step(loss_fn, opt, jax.random.key(seed + 1)), state)
  state, loss, _, _ = compiled.executable(state)
  return compiled.executable, state, compiled.total_s, float(loss)


def compare(batch: int, variants, *, rounds: int, run_s: float, quick: bool) -> list[dict]:
  built = {v: build(v, batch, quick=quick) for v in variants}
  times = common.alternate({v: b[:2] for v, b in built.items()}, rounds=rounds, run_s=run_s)
  base = times[variants[0]]
  return [{"variant": v, "batch": batch, "ms_per_step": times[v] * 1e3,
           "episodes_per_s": batch / times[v],
           "speed_vs_previous": base / times[v], "compile_s": built[v][2],
           "first_loss": built[v][3]} for v in variants]


def main(argv=None) -> list[dict]:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="a tiny MANN, batch 2 (smoke test)")
  p.add_argument("--batches", type=lambda t: [int(x) for x in t.split(",")], default=None,
                 help="comma-separated batch sizes (default 16,64; quick: 2)")
  p.add_argument("--variants", default=",".join(VARIANTS), help=f"'previous' first, then any of {VARIANTS}")
  p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 7; quick: 1)")
  p.add_argument("--run-seconds", type=float, default=None, help="seconds per timed run (default 1; quick: 0.05)")
  p.add_argument("--out", default="runs/bench_mann_step")
  args = p.parse_args(argv)
  variants = [v.strip() for v in args.variants.split(",") if v.strip()]
  if sorted(set(variants) - set(VARIANTS)) or variants[:1] != ["previous"]:
    p.error(f"--variants: expected 'previous' first, then any of {VARIANTS}; got {variants}")
  q = args.quick
  rows = []
  for b in args.batches or ([2] if q else [16, 64]):
    rows += compare(b, variants, rounds=args.rounds or (1 if q else 7), run_s=args.run_seconds or (0.05 if q else 1.0),
                    quick=q)
    common.log(f"batch {b}: " + ", ".join(f"{r['variant']} {r['speed_vs_previous']:.2f}×"
                                         for r in rows[-len(variants):]))
  env = common.environment()
  table = common.markdown_table(
      ["batch", "variant", "ms/step", "episodes/s", "speed vs previous", "compile s", "first loss"],
      [[r["batch"], r["variant"], f"{r['ms_per_step']:.1f}", f"{r['episodes_per_s']:.0f}",
        f"{r['speed_vs_previous']:.2f}×", f"{r['compile_s']:.1f}", f"{r['first_loss']:.6f}"] for r in rows])
  text = ("# MANN Omniglot train step: current vs previous\n\n" + common.environment_markdown(env)
          + "\n\nMedians of alternating runs; `first loss` is the loss of the first step (the same batch for "
          "every variant).\n\n" + table + "\n")
  common.ensure_dir(args.out)
  common.write_text(f"{args.out}/mann_step.md", text)
  common.write_json(f"{args.out}/mann_step.json", {"env": env, "rows": rows})
  print(text)
  return rows


if __name__ == "__main__":
  main()
