"""Smoke tests of the benchmarks: each ``main(['--quick', '--out', tmp])`` runs in
seconds and reports sane numbers. The PyTorch reference is exercised only when
torch (the ``bench`` extra) is installed; everything else runs without it."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

# benchmarks/ is not part of the installed package: import it from the checkout.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from benchmarks import addressing, common, throughput, throughput_mann, throughput_metanet  # noqa: E402

HAS_TORCH = common.optional_torch() is not None


def _positive_finite(x) -> bool:
  return x is not None and math.isfinite(x) and x > 0


def test_timing_harness_statistics():
  t = common.summarize([3.0, 1.0, 2.0, 100.0, 2.5])
  assert t.median == 2.5
  assert t.q1 <= t.median <= t.q3
  assert t.iqr >= 0
  calls = []
  timing = common.time_fn(lambda: calls.append(1), warmup=2, repeats=3, min_sample_s=0.0,
                          sync=lambda x: x)
  assert len(calls) == 2 + 3 * timing.number
  assert _positive_finite(timing.median)


def test_compile_is_timed_apart_and_cost_analysis_counts_flops():
  import jax.numpy as jnp
  x = jnp.ones((8, 8))
  c = common.compile_fn(lambda a: a @ a, x)
  assert c.lower_s >= 0 and c.compile_s > 0
  flops = common.cost_flops(c.executable)
  assert flops is None or flops == pytest.approx(2 * 8 ** 3, rel=0.01)


def test_markdown_table():
  text = common.markdown_table(["a", "b"], [["x", 1.2345], ["y", None]])
  lines = text.splitlines()
  assert lines[0] == "| a | b |" and lines[1] == "|:---|---:|"
  assert "1.23" in lines[2] and "–" in lines[3]


def test_hand_flop_count_matches_xla_on_one_kernel():
  """The hand count of content_weights is the equation's; XLA agrees on the dominant 4NM."""
  import jax
  from memjax import addressing as addr
  n, m = 256, 20
  c = common.compile_fn(addr.content_weights, jax.numpy.ones((n, m)), jax.numpy.ones((m,)), 1.0)
  xla = common.cost_flops(c.executable)
  hand = addressing.KERNELS[0].flops_per_example(n, m)
  if xla is not None:
    assert 0.5 < xla / hand < 2.0


def test_addressing_quick(tmp_path):
  out = tmp_path / "addr"
  res = addressing.main(["--quick", "--out", str(out)])
  results = res["results"]
  names = {r["kernel"] for r in results}
  assert names == {k.name for k in addressing.KERNELS}
  for r in results:
    assert _positive_finite(r["us"]) and _positive_finite(r["numpy_us"])
    assert _positive_finite(r["gbs"]) and _positive_finite(r["numpy_over_jax"])
    assert r["gflops"] is None or _positive_finite(r["gflops"])
    assert r["max_rel_err"] < 1e-3, r  # numpy baseline computes the same thing
    assert r["jax"]["q1_s"] <= r["jax"]["median_s"] <= r["jax"]["q3_s"]
  assert _positive_finite(res["peaks"].matmul_gflops) and _positive_finite(res["peaks"].copy_gbs)
  table = (out / "addressing.md").read_text()
  assert "| kernel |" in table and "ntm_address" in table
  assert (out / "addressing.png").stat().st_size > 0
  data = json.loads((out / "addressing.json").read_text())
  assert len(data["results"]) == len(results)


def test_addressing_kernel_subset_plots_what_it_measured(tmp_path):
  """--kernels without the first kernel: the plot used to take its legend from that kernel's
  (empty) panel and crashed in matplotlib."""
  out = tmp_path / "addr"
  res = addressing.main(["--quick", "--kernels", "least_used", "--out", str(out)])
  assert {r["kernel"] for r in res["results"]} == {"least_used"}
  assert (out / "addressing.png").stat().st_size > 0


def test_throughput_quick(tmp_path):
  """One quick run (one memjax compile): with the torch reference if torch is installed."""
  out = tmp_path / "tp"
  res = throughput.main(["--quick", "--out", str(out)])
  (b,) = res["batches"]
  assert _positive_finite(b["memjax_seq_s"]) and _positive_finite(b["compile_s"])
  if HAS_TORCH:
    assert _positive_finite(b["torch_seq_s"]) and _positive_finite(b["ratio"])
  else:
    assert "ratio" not in b
  fl = res["flops"]
  assert _positive_finite(fl["hand"]["train_step"]) and _positive_finite(fl["gflops"])
  assert _positive_finite(fl["peak_fraction"])
  if fl["xla_step_flops"] is not None:
    # Trip-count-corrected XLA count and the hand count agree to within 2x.
    assert 0.5 < fl["xla_over_hand"] < 2.0
  table = (out / "throughput.md").read_text()
  assert "memjax seq/s" in table and "## Targets" in table and "metanet: not requested" in table
  if not HAS_TORCH:
    assert "reference was skipped" in table
  assert (out / "throughput.png").stat().st_size > 0


def test_throughput_skips_torch_when_missing(monkeypatch):
  monkeypatch.setattr(common, "optional_torch", lambda: None)
  assert throughput.torch_threads_for(None, quick=False, requested=None, cores=4) == []
  assert throughput.torch_threads_for(object(), quick=False, requested=None, cores=4) == [4, 1]
  assert throughput.torch_threads_for(object(), quick=True, requested=None, cores=4) == [1]
  assert throughput.torch_threads_for(object(), quick=False, requested=[3], cores=4) == [3]


def test_throughput_metanet_quick(tmp_path):
  """``--models metanet --quick``: a small MetaNet, memjax vs the torch reference (if installed)."""
  res = throughput.main(["--quick", "--models", "metanet", "--out", str(tmp_path)])
  assert len(res["other_models"]) == 2
  assert "mann: not requested" in res["other_models"][0]
  assert res["other_models"][1].startswith("metanet: ")
  m = res["metanet"]
  assert m["config"] == throughput_metanet.QUICK_CONFIG
  assert _positive_finite(m["memjax_episodes_s"]) and _positive_finite(m["compile_s"])
  assert len(m["memjax_runs"]) == 2
  if HAS_TORCH:
    assert _positive_finite(m["torch_episodes_s"]) and _positive_finite(m["ratio"])
    # Same shapes on both sides; nn.LSTMCell has a second bias vector (4 × 20) in each of d's 2 LSTMs.
    assert m["num_params_torch"] == m["num_params_memjax"] + 2 * 4 * 20
  else:
    assert "ratio" not in m
  table = (tmp_path / "throughput.md").read_text()
  assert "## MetaNet" in table and "memjax episodes/s" in table
  assert ("MetaNet speed-up vs torch" in table) == HAS_TORCH
  data = json.loads((tmp_path / "throughput.json").read_text())
  assert data["metanet"]["memjax_episodes_s"] == pytest.approx(m["memjax_episodes_s"])


def test_metanet_torch_reference_shapes_and_training():
  """The reference's logits are [Q, N]; the loss is finite, every parameter (the meta
  learners m and d included) gets a gradient, and fitting one episode lowers its loss."""
  if not HAS_TORCH:
    pytest.skip("torch not installed (bench extra)")
  import torch
  import torch.nn.functional as F
  from benchmarks.reference import metanet_torch
  kw = dict(image_shape=(8, 8, 1), filters=4, num_blocks=2, hidden=8)
  torch.manual_seed(0)
  sx, sy, qx, qy = metanet_torch.random_episode(5, 1, 3, (8, 8, 1), torch.Generator().manual_seed(0))
  assert sx.shape == (5, 1, 8, 8) and qx.shape == (15, 1, 8, 8)
  assert sorted(sy.tolist()) == list(range(5)) and qy.tolist() == [c for c in range(5) for _ in range(3)]
  trainer = metanet_torch.Trainer(5, 1, 3, seed=0, **kw)
  model = trainer.model
  assert set(model.meta_example) == {"conv", "fc"} and set(model.meta_task) == {"conv", "fc"}
  logits = model(sx, sy, qx)
  assert logits.shape == (15, 5) and torch.isfinite(logits).all()
  loss = F.cross_entropy(logits, qy)
  loss.backward()
  for name, p in model.named_parameters():
    assert p.grad is not None and torch.isfinite(p.grad).all(), name
  for prefix in ("meta_example", "meta_task"):  # first order: reached through W*_i and Q*
    assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith(prefix)), prefix
  assert math.isfinite(trainer.step())
  # Fitting one fixed episode (Adam 1e-3, clip ±10) lowers its loss.
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  losses = []
  for _ in range(15):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(sx, sy, qx), qy)
    loss.backward()
    torch.nn.utils.clip_grad_value_(model.parameters(), 10.0)
    opt.step()
    losses.append(loss.item())
  assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_throughput_mann_quick(tmp_path):
  """``--models mann --quick``: a tiny MANN, memjax vs the torch reference (if installed)."""
  res = throughput.main(["--quick", "--models", "mann", "--out", str(tmp_path)])
  assert len(res["other_models"]) == 2
  assert res["other_models"][0].startswith("mann: ")
  assert "metanet: not requested" in res["other_models"][1]
  m = res["mann"]
  assert m["config"] == throughput_mann.QUICK_CONFIG and m["batch"] == 2
  assert _positive_finite(m["memjax_episodes_s"]) and _positive_finite(m["compile_s"])
  assert len(m["memjax_runs"]) == 2
  if HAS_TORCH:
    assert _positive_finite(m["torch_episodes_s"]) and _positive_finite(m["ratio"])
    # Same shapes on both sides; nn.LSTMCell has a second bias vector (4 × controller).
    assert m["num_params_torch"] == m["num_params_memjax"] + 4 * throughput_mann.QUICK_CONFIG["controller"]
  else:
    assert "ratio" not in m
  table = (tmp_path / "throughput.md").read_text()
  assert "## MANN" in table and "memjax episodes/s" in table
  assert ("MANN speed-up vs torch" in table) == HAS_TORCH
  data = json.loads((tmp_path / "throughput.json").read_text())
  assert data["mann"]["memjax_episodes_s"] == pytest.approx(m["memjax_episodes_s"])


def test_mann_torch_reference_matches_memjax():
  """The reference's shapes, a finite loss with gradients everywhere, and (with the memjax
  parameters copied in) the same logits as ``nn.RNN(MANNCell)``: the same equations."""
  if not HAS_TORCH:
    pytest.skip("torch not installed (bench extra)")
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import torch
  from benchmarks.reference import mann_torch
  from memjax import mann
  inputs, labels = mann_torch.random_episodes(3, 7, 5, 4, torch.Generator().manual_seed(0))
  assert inputs.shape == (3, 7, 21) and labels.shape == (3, 7)
  assert inputs[:, 0, 16:].sum() == 0  # no previous label at t = 0
  np.testing.assert_array_equal(inputs[:, 1:, 16:].argmax(-1).numpy(), labels[:, :-1].numpy())
  kw = dict(controller_size=16, memory_size=16, word_size=8, read_heads=2)
  model = mann_torch.MANN(num_inputs=21, **kw)
  logits = model(inputs)
  assert logits.shape == (3, 7, 5) and torch.isfinite(logits).all()
  loss = mann_torch.mann_loss(logits, labels)
  assert math.isfinite(loss.item())
  loss.backward()
  for name, p in model.named_parameters():
    assert p.grad is not None and torch.isfinite(p.grad).all(), name
  # Same equations as memjax: copy the flax parameters in and compare the logits.
  cell = mann.MANNCell(features=5, memory_size=16, word_size=8, num_read_heads=2, controller_features=16)
  x = jnp.asarray(inputs.numpy())
  variables = nn.RNN(cell).init(jax.random.key(0), x)
  mann_torch.load_flax_params(model, variables["params"]["cell"])
  n_jax = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables))
  assert mann_torch.num_parameters(model) == n_jax + 4 * 16  # nn.LSTMCell's second bias
  with torch.no_grad():
    got = model(inputs).numpy()
  want = np.asarray(nn.RNN(cell).apply(variables, x))
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  assert float(mann.mann_loss(want, jnp.asarray(labels.numpy()))) == pytest.approx(
      mann_torch.mann_loss(torch.tensor(got), labels).item(), rel=1e-5)
  trainer = mann_torch.Trainer(2, 5, 5, 4, seed=0, **kw)
  assert math.isfinite(trainer.step())


def test_torch_reference_matches_the_copy_task_layout():
  if not HAS_TORCH:
    pytest.skip("torch not installed (bench extra)")
  import torch
  from benchmarks.reference import ntm_torch
  inputs, targets, mask = ntm_torch.copy_batch(3, max_length=4, generator=torch.Generator().manual_seed(0))
  assert inputs.shape == (3, 9, 9) and targets.shape == (3, 9, 8) and mask.shape == (3, 9)
  for i in range(3):
    length = int(inputs[i, :, 8].argmax())  # delimiter step
    assert inputs[i, length, :8].sum() == 0 and inputs[i, length + 1:].sum() == 0
    np.testing.assert_array_equal(targets[i, length + 1:2 * length + 1].numpy(), inputs[i, :length, :8].numpy())
    assert mask[i].sum() == length
  model = ntm_torch.NTM()
  logits = model(inputs)
  assert logits.shape == (3, 9, 8) and torch.isfinite(logits).all()
  trainer = ntm_torch.Trainer(2, max_length=3)
  assert math.isfinite(trainer.step())


def test_ntm_variants_custom_vjps_equal_autodiff():
  """The hand-written VJPs of benchmarks.ntm_variants equal autodiff of memjax's functions (float64)."""
  import jax
  import jax.numpy as jnp
  from benchmarks import ntm_variants
  from memjax import addressing, memory

  address_vjp, write_vjp = ntm_variants.custom_vjps()
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    for _ in range(3):
      n, m = 12, 5
      args = [rng.normal(size=(n, m)), rng.normal(size=m), rng.uniform(0.1, 10), rng.uniform(),
              np.asarray(jax.nn.softmax(rng.normal(size=3))), 1 + rng.uniform(0, 5),
              np.asarray(jax.nn.softmax(rng.normal(size=n)))]
      args = [jnp.asarray(a, jnp.float64) for a in args]
      ct = jnp.asarray(rng.normal(size=n))
      (want, want_vjp), (got, got_vjp) = jax.vjp(addressing.ntm_address, *args), jax.vjp(address_vjp, *args)
      np.testing.assert_allclose(got, want, rtol=1e-12)
      for g, w in zip(got_vjp(ct), want_vjp(ct)):
        np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-12)
      wargs = [jnp.asarray(a) for a in (rng.normal(size=(n, m)), np.asarray(jax.nn.softmax(rng.normal(size=n))),
                                         rng.uniform(size=m), rng.normal(size=m))]
      ctm = jnp.asarray(rng.normal(size=(n, m)))
      for g, w in zip(jax.vjp(write_vjp, *wargs)[1](ctm), jax.vjp(memory.write, *wargs)[1](ctm)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_ntm_variants_quick(tmp_path):
  """``benchmarks.ntm_variants --quick``: variants compute the same first loss and report a speed."""
  from benchmarks import ntm_variants
  rows = ntm_variants.main(["--quick", "--variants", "plain,custom_vjp", "--out", str(tmp_path)])
  assert [r["variant"] for r in rows] == ["plain", "custom_vjp"]
  assert rows[0]["speed_vs_plain"] == 1.0
  assert all(r["ms_per_step"] > 0 and np.isfinite(r["speed_vs_plain"]) for r in rows)
  np.testing.assert_allclose(rows[1]["first_loss"], rows[0]["first_loss"], rtol=1e-6)
  assert (tmp_path / "ntm_variants.md").exists()
  with pytest.raises(SystemExit):
    ntm_variants.main(["--quick", "--variants", "custom_vjp", "--out", str(tmp_path)])


def test_time_to_accuracy_first_evaluation_at_or_above_the_paper(tmp_path):
  from benchmarks import time_to_accuracy as tta
  names = tta.INSTANCE_NAMES
  rec = lambda step, secs, accs: {"step": step, "train_seconds": secs,
                                  **{f"eval_acc_{n}": a for n, a in zip(names, accs)}}
  records = [{"step": 50, "loss": 1.0},  # a training line without evaluation is ignored
             rec(100, 60.0, [0.30, 0.50, 0.6, 0.6, 0.6, 0.6]),
             rec(200, 120.0, [0.40, 0.90, 0.6, 0.6, 0.6, 0.99]),
             rec(300, 180.0, [0.20, 0.95, 0.95, 0.6, 0.6, 0.99])]
  out = tta.time_to_accuracy(records, [36.4, 82.8, 91.0, 92.6, 94.9, 98.1], batch_size=16)
  assert out["reached"]["1st"]["minutes"] == 2.0 and out["reached"]["1st"]["episodes"] == 3200
  assert out["reached"]["2nd"]["minutes"] == 2.0 and out["reached"]["3rd"]["minutes"] == 3.0
  assert out["reached"]["4th"] is None and out["all_reached_minutes"] is None
  assert out["last"]["episodes"] == 4800
  # The CLI on a run folder: config + metrics in, JSON out; a missing folder is a usage error.
  (tmp_path / "config.json").write_text(json.dumps(
      {"model": "mann", "label_mode": "onehot", "num_classes": 5, "batch_size": 16}))
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
  assert tta.main(["--workdir", str(tmp_path)])["reached"]["10th"]["episodes"] == 3200
  assert (tmp_path / "time_to_accuracy.json").exists()
  with pytest.raises(SystemExit) as e:
    tta.main(["--workdir", str(tmp_path / "missing")])
  assert e.value.code == 2


def test_mann_step_benchmark_quick(tmp_path):
  """The previous and the current MANN step compute the same first loss; the report is written."""
  from benchmarks import mann_step
  rows = mann_step.main(["--quick", "--variants", "previous,current", "--out", str(tmp_path)])
  assert [r["variant"] for r in rows] == ["previous", "current"]
  assert all(r["first_loss"] == pytest.approx(rows[0]["first_loss"], rel=1e-5) for r in rows)
  assert all(r["ms_per_step"] > 0 for r in rows)
  assert (tmp_path / "mann_step.md").exists()


def test_mann_step_profile_lists_the_scan_body_ops(tmp_path):
  """``--profile B`` traces the current step: ops of the 50-step scan bodies run ≥ 50 times per
  step, the shares are fractions of one total, and the report gets a profile section."""
  from benchmarks import mann_step
  mann_step.main(["--quick", "--variants", "previous", "--profile", "2", "--out", str(tmp_path)])
  prof = json.loads((tmp_path / "mann_step.json").read_text())["profile"]
  assert prof and all(r["op"] and r["ms_per_step"] >= 0 and 0 <= r["share"] <= 1 for r in prof)
  assert sum(r["share"] for r in prof) <= 1 + 1e-9
  assert max(r["calls_per_step"] for r in prof) >= 50  # inside the lax.scan over the episode's 50 steps
  assert "## Profile: top XLA ops of the current step at batch 2" in (tmp_path / "mann_step.md").read_text()
  with pytest.raises(SystemExit) as e:
    mann_step.main(["--quick", "--variants", "previous", "--profile", "0", "--out", str(tmp_path)])
  assert e.value.code == 2


def test_mann_step_data_parallel_variant_same_first_loss(tmp_path):
  """The data_parallel variant (2 host devices, set by the benchmark itself before JAX starts)
  trains the same first step as the single-device current step; a fresh process, since
  this one's JAX already sees one device."""
  import os
  import subprocess
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = "cpu"
  code = ("import json, sys; from benchmarks import mann_step; "
          f"rows = mann_step.main(['--quick', '--variants', 'previous,current,data_parallel', '--out', {str(tmp_path)!r}]); "
          "print('ROWS', json.dumps(rows))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=_ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = json.loads(proc.stdout.split("ROWS", 1)[1])
  assert [r["variant"] for r in rows] == ["previous", "current", "data_parallel"]
  assert rows[2]["first_loss"] == pytest.approx(rows[1]["first_loss"], rel=1e-5)
  assert "cpu:0, cpu:1" in (tmp_path / "mann_step.md").read_text()


def test_mann_step_data_parallel_flag_errors(monkeypatch):
  import jax
  from benchmarks import mann_step
  jax.devices()  # JAX's backend has started (one device) before main() can set its flag
  monkeypatch.setenv("XLA_FLAGS", "")  # main() sets it; restored after the test
  with pytest.raises(SystemExit) as e:
    mann_step.main(["--quick", "--variants", "previous,data_parallel", "--devices", "1"])
  assert e.value.code == 2
  with pytest.raises(SystemExit) as e:  # this process's JAX already started with one device
    mann_step.main(["--quick", "--variants", "previous,data_parallel"])
  assert e.value.code == 2


def test_mann_step_autodiff_switch_replaces_the_custom_vjp():
  """``previous``/``unroll`` variants really differentiate LRUA by autodiff (the patch reaches memory.py)."""
  import jax
  import jax.numpy as jnp
  from benchmarks import mann_step
  from memjax import memory

  n, m, r = 8, 4, 2
  args = (jnp.ones((n, m)) * 0.1, jnp.zeros(n), jnp.full((r, n), 1 / n), jnp.ones((r, m)),
          jnp.ones((r, m)), jnp.zeros(r), 0.95)

  def grad_jaxpr():
    return str(jax.make_jaxpr(lambda mem: memory.lrua_step(mem, *args[1:])[0].sum())(args[0]))

  assert "custom_vjp" in grad_jaxpr()
  with mann_step._autodiff_lrua(True):
    assert "custom_vjp" not in grad_jaxpr()
  assert "custom_vjp" in grad_jaxpr()


def test_xla_flags_benchmark_quick(tmp_path):
  """Each flag set runs in its own process; ynn_off changes kernels, and devices2 splits the batch
  over 2 devices (the data-parallel step), neither the MANN's loss nor its gradients."""
  from benchmarks import xla_flags
  rows = xla_flags.main(["--quick", "--models", "mann", "--sets", "default,ynn_off,devices2", "--out", str(tmp_path)])
  assert [(r["model"], r["set"]) for r in rows] == [("mann", "default"), ("mann", "ynn_off"), ("mann", "devices2")]
  assert rows[0]["grad_max_rel_diff"] == 0.0 and rows[0]["speed_vs_default"] == 1.0
  assert [r["devices"] for r in rows] == [1, 1, 2]
  for r in rows[1:]:
    assert r["loss"] == pytest.approx(rows[0]["loss"], rel=1e-5)
    assert 0.0 <= r["grad_max_rel_diff"] < xla_flags.GRAD_RTOL
  assert all(r["ms"] > 0 for r in rows)
  assert (tmp_path / "xla_flags.md").exists()


def test_xla_flags_benchmark_errors(tmp_path):
  from benchmarks import xla_flags
  for argv in (["--sets", "ynn_off,default"], ["--sets", "default,fast"], ["--models", "ntm"], ["--rounds", "0"]):
    with pytest.raises(SystemExit) as e:
      xla_flags.main(argv + ["--out", str(tmp_path)])
    assert e.value.code == 2
  a, b = tmp_path / "a.npz", tmp_path / "b.npz"
  np.savez(a, x=np.ones(3))
  np.savez(b, y=np.ones(3))
  with pytest.raises(ValueError, match="different leaves"):
    xla_flags.max_rel_diff(str(a), str(b))


def test_mann_memory_size_gaps_and_buckets():
  from benchmarks import mann_memory_size as mms
  onehot = np.array([[0, 1, 0, 2, 1, 0]])
  assert mms.steps_since_last(onehot).tolist() == [[0, 0, 2, 0, 3, 3]]
  # String labels: a class is its 5-character string.
  a, b = [0, 1, 2, 3, 4], [4, 3, 2, 1, 0]
  assert mms.steps_since_last(np.array([[a, b, b, a]])).tolist() == [[0, 0, 1, 3]]
  correct = np.array([[True, False, True, True, False, True]])
  gaps = mms.steps_since_last(onehot)
  out = mms.bucket_accuracy(correct, gaps, gaps > 0, (1, 2, 8))
  assert out == {"1-2": {"accuracy": 100.0, "count": 1}, "3-8": {"accuracy": 50.0, "count": 2}}
  assert mms.bucket_accuracy(correct, gaps, gaps > 0, (9, 20))["9-20"] == {"accuracy": None, "count": 0}


def test_mann_memory_size_quick(omniglot_dir, tmp_path):
  from benchmarks import mann_memory_size as mms
  out = mms.main(["--data-dir", str(omniglot_dir), "--name", "mann-omniglot-5way", "--sizes", "128,512",
                  "--episodes", "20", "--out", str(tmp_path)])
  rows = out["rows"]
  assert [r["memory_size"] for r in rows] == [128, 512] and rows[0]["episodes"] == 20
  # Every repeat presentation (5 classes × 9 repeats per episode) falls in one gap bucket and one third.
  for key in ("by_gap", "by_step"):
    assert sum(v["count"] for v in rows[0][key].values()) == 20 * 5 * 9
  # The size override reaches the model: more slots change the predictions.
  assert rows[0]["accuracy"] != rows[1]["accuracy"] or rows[0]["test_loss"] != rows[1]["test_loss"]
  assert all(0 <= a <= 100 for r in rows for a in r["accuracy"].values())
  assert (tmp_path / "mann_memory_size.json").exists()
  for bad in (["--sizes", "2"], ["--sizes", "a,b"], ["--episodes", "0"], ["--name", "metanet-omniglot-5way"]):
    with pytest.raises(SystemExit) as e:
      mms.main(["--data-dir", str(omniglot_dir), "--out", str(tmp_path), *bad])
    assert e.value.code == 2
