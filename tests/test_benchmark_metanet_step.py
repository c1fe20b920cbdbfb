"""benchmarks.metanet_step: every MetaNet step variant computes the reference's loss and gradients."""

from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import metanet_step


def test_variants_equal_the_reference_and_report_work(tmp_path):
  """``--quick``: all variants, the same loss and gradients as the frozen
  reference, work counted per part (the LSTM loop × its trip count), timed."""
  rows = metanet_step.main(["--quick", "--ways", "3", "--rounds", "1", "--run-seconds", "0.01",
                            "--out", str(tmp_path)])
  assert [r["variant"] for r in rows] == list(metanet_step.VARIANTS)
  for r in rows:
    assert r["same_math"], r
    assert r["grad_max_rel_diff"] < metanet_step.GRAD_RTOL
    assert r["gflop"] > 0 and r["gbytes"] > 0 and r["ms_per_step"] > 0
    # float32 gradients of the tiny model are within float32 rounding of float64's
    assert 0 < r["grad_rel_err_vs_float64"] < 1e-3, r
  assert rows[0]["speed_vs_baseline"] == 1.0
  # The LSTM's first step (from h_0 = 0) skips the W_h product: fewer FLOPs than before.
  by = {r["variant"]: r for r in rows}
  assert by["current"]["gflop"] < by["reference"]["gflop"]
  saved = json.loads((tmp_path / "metanet_step.json").read_text())
  assert len(saved["rows"]) == len(rows)
  assert "Work per part" in (tmp_path / "metanet_step.md").read_text()


def test_current_step_has_no_reduce_window_pool_gradient():
  """The max-pool's gradient is elementwise (no reduce-window / select-and-scatter
  with index arrays in the compiled step); the undo variant brings it back."""
  def pool_gradient_ops(name):
    f, _, _ = metanet_step.build_step(name, 3, 2, metanet_step.QUICK_MODEL)
    text = f.as_text()
    # XLA:CPU's select-and-scatter, or its rewrite: a reduce-window that also
    # carries int32 indices (not the plain reduce-windows of split reductions).
    return (text.count("select-and-scatter(")
            + len(re.findall(r"= \([^)]*s32\[[^)]*\) reduce-window\(", text)))

  assert pool_gradient_ops("current") == 0
  assert pool_gradient_ops("reduce_window_pool") > 0


def test_float64_gradients_are_float64_and_tell_a_wrong_gradient_apart():
  f, params, _ = metanet_step.build_step("current", 3, 2, metanet_step.QUICK_MODEL)
  loss, grads = f(params)
  loss64, grads64 = metanet_step.float64_loss_and_grads("reference", 3, 2, metanet_step.QUICK_MODEL,
                                                        params)
  assert all(g.dtype == jnp.float64 for g in jax.tree.leaves(grads64))
  assert abs(float(loss) - float(loss64)) < 1e-4 * abs(float(loss64))
  err = metanet_step.max_rel_diff(grads, grads64)
  assert err < 1e-3
  wrong = jax.tree.map(lambda g: 1.01 * g, grads)
  assert metanet_step.max_rel_diff(wrong, grads64) > metanet_step.FLOAT64_SLACK * err
  # the rounding error over one-ulp moves of the variables: small here, and ≥ the unmoved one's
  grad_err, loss_err = metanet_step.float32_rounding_error(f, "reference", 3, 2,
                                                           metanet_step.QUICK_MODEL, params, count=2)
  assert err <= grad_err < 1e-3 and loss_err < 1e-4 * abs(float(loss64))
  moved = metanet_step.one_ulp_perturbations(params, 1)[0]
  rel = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b) / jnp.maximum(jnp.abs(b), 1e-30)), moved, params)
  assert 0 < max(float(r) for r in jax.tree.leaves(rel)) <= 2.0 ** -22 * 1.01  # ≤ 2 ulps after rounding


def test_hlo_work_multiplies_loop_bodies_by_their_trip_count():
  def f(x):
    return jax.lax.scan(lambda c, _: (c @ x, None), x, None, length=7)[0]

  x = jnp.ones((16, 16))
  compiled = jax.jit(f).lower(x).compile()
  work = metanet_step.hlo_work(compiled.as_text())
  flops = sum(v.get("flops", 0) for v in work.values())
  assert flops == 7 * 2 * 16 ** 3


def test_metanet_minus_steps_equal_the_reference(tmp_path):
  """--ablate no_task (the trainings' MetaNet−): the current step is the reference's function."""
  rows = metanet_step.main(["--quick", "--ways", "3", "--ablate", "no_task", "--variants",
                            "reference,current", "--no-timing", "--out", str(tmp_path)])
  assert [r["same_math"] for r in rows] == [True, True]
  assert rows[1]["grad_max_rel_diff"] < metanet_step.GRAD_RTOL
  assert "MetaNet−" in (tmp_path / "metanet_step.md").read_text()


def test_bad_variant_exits_2(tmp_path):
  with pytest.raises(SystemExit) as e:
    metanet_step.main(["--quick", "--variants", "fastest", "--out", str(tmp_path)])
  assert e.value.code == 2
