"""Properties of the looped model: the recurrence, its variants and their stability."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from parcae.model import INJECTIONS, ModelConfig, build_model
from parcae.model.injection import Diagonal
from parcae.model.looped import like_init
from parcae.model.schedule import ActiveRows
from parcae.monitor import lipschitz, token_correlation

TINY = ModelConfig(state_init="zero")


@settings(max_examples=200, deadline=None)
@given(a_log=st.lists(st.floats(-6, 6), min_size=4, max_size=4),
       dt_bias=st.lists(st.floats(-6, 6), min_size=4, max_size=4),
       double=st.booleans())
def test_diagonal_decay_is_a_contraction_for_any_parameters(a_log, dt_bias, double):
    inj = Diagonal(replace(TINY, d_model=4, n_heads=2))
    if double:
        inj = inj.double()
    with torch.no_grad():
        inj.A_log.copy_(torch.tensor(a_log))
        inj.dt_bias.copy_(torch.tensor(dt_bias))
    a_bar, _, _ = inj.discretized()
    # strictly inside (0, 1) in exact arithmetic; exp may underflow to 0 for huge dt * A
    assert torch.all(a_bar >= 0) and torch.all(a_bar < 1)
    assert inj.spectra()["rho_A"] < 1


def test_loop_at_init_is_the_reference_contraction():
    model = build_model(TINY)
    x = torch.randint(0, 256, (2, 16))
    e, h, rope = model.encode(x)
    h = torch.randn_like(e)
    dt = -math.log(TINY.a_bar_init)
    expected = TINY.a_bar_init * h + dt * e
    assert torch.allclose(model.step(h, model.injection.prepare(e), rope), expected, atol=1e-5)
    assert dt == pytest.approx(0.805, abs=1e-3)
    # iterating converges to the fixed point dt e / (1 - a_bar)
    _, states = model.loop_states(x, 40)
    assert torch.allclose(states[-1], dt * e / (1 - TINY.a_bar_init), atol=1e-4)
    assert lipschitz(model, x, 4, iters=8) == pytest.approx(TINY.a_bar_init, rel=0.02)


@pytest.mark.parametrize("name", sorted(INJECTIONS))
def test_every_variant_runs_forward_and_backward(name):
    model = build_model(replace(TINY, injection=name, loops=3))
    x = torch.randint(0, 256, (3, 16))
    logits = model(x, torch.tensor([1, 2, 5]), grad_steps=2)
    assert logits.shape == (3, 16, 256)
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_add_state_grows_linearly_and_none_forgets_the_input():
    x = torch.randint(0, 256, (2, 16))
    _, add_states = build_model(replace(TINY, injection="add")).loop_states(x, 6)
    norms = [h.norm(dim=-1).mean().item() for h in add_states]
    assert norms[-1] == pytest.approx(6 * norms[0], rel=1e-3)
    model = build_model(replace(TINY, injection="none"))
    e, states = model.loop_states(x, 3)
    assert torch.allclose(states[0], e, atol=1e-5)  # identity blocks: nothing new enters


def test_per_sequence_depths_match_running_each_sequence_alone():
    torch.manual_seed(0)
    model = build_model(TINY)
    for p in model.parameters():  # leave the identity init so each step does real work
        p.data.add_(0.02 * torch.randn_like(p))
    x = torch.randint(0, 256, (3, 12))
    depths = torch.tensor([2, 5, 1])
    with torch.no_grad():
        batched = model(x, depths)
        for i, t in enumerate(depths.tolist()):
            alone = model(x[i : i + 1], t)
            assert torch.allclose(batched[i], alone[0], atol=1e-5)


def test_truncated_backprop_keeps_graph_only_for_the_last_steps():
    torch.manual_seed(0)
    model = build_model(TINY)
    x = torch.randint(0, 256, (2, 8))
    model(x, 6, grad_steps=2).sum().backward()
    truncated = model.injection.A_log.grad.clone()
    model.zero_grad()
    e, h, rope = model.encode(x)
    drive = model.injection.prepare(e)
    with torch.no_grad():
        for _ in range(4):
            h = model.step(h, drive, rope)
    for _ in range(2):
        h = model.step(h.detach() if _ == 0 else h, drive, rope)
    model.decode(h, rope).sum().backward()
    assert torch.allclose(truncated, model.injection.A_log.grad, atol=1e-6)
    model.zero_grad()
    model(x, 6, grad_steps=6).sum().backward()
    assert not torch.allclose(truncated, model.injection.A_log.grad, atol=1e-6)


def test_baseline_unties_the_core_and_runs_it_once():
    model = build_model(replace(TINY, injection="baseline", loops=4, core_layers=2))
    assert len(model.core.blocks) == 8
    looped = build_model(replace(TINY, loops=4, core_layers=2))
    assert len(looped.core.blocks) == 2


def test_linear_adapter_reports_its_spectrum():
    model = build_model(replace(TINY, injection="linear"))
    with torch.no_grad():
        model.injection.W.weight[:, :64] *= 3  # push W1 beyond the unit circle
    spectra = model.injection.spectra()
    assert spectra["rho_A"] == pytest.approx(3 * TINY.a_bar_init, rel=1e-4)
    assert spectra["norm_W1"] >= spectra["rho_A"] - 1e-6


def test_bounded_b_has_unit_spectral_norm():
    model = build_model(replace(TINY, bound_b=True))
    with torch.no_grad():
        model.injection.parametrizations.B.original.mul_(5)
    model.train()
    for _ in range(5):  # each access advances spectral_norm's power iteration
        b = model.injection.B
    assert torch.linalg.matrix_norm(b, 2).item() == pytest.approx(1.0, rel=1e-2)


def test_token_correlation_detects_collapse():
    h = torch.randn(2, 10, 32)
    assert abs(token_correlation(h)) < 0.2
    assert token_correlation(h[:, :1].expand(2, 10, 32)) == pytest.approx(1.0, abs=1e-5)


def perturbed(cfg: ModelConfig) -> torch.nn.Module:
    """A model moved off the identity init, so every step changes the state."""
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


DEPTHS = {
    "poisson": [1, 6, 2, 9, 3, 1, 4, 2],  # T_i = 1 and T_i < mu_bwd beside T_i > mu_bwd
    "some_below_mu_bwd": [3, 1, 2, 3, 2, 1, 3, 3],
    "all_equal": [5] * 8,
    "all_one": [1] * 8,
}


@pytest.mark.parametrize("name", ["diagonal", "linear", "add", "none"])
@pytest.mark.parametrize("depths", sorted(DEPTHS))
@pytest.mark.parametrize("min_rows", [1, 2])
def test_active_only_steps_give_the_logits_and_gradients_of_running_every_sequence(
        name, depths, min_rows):
    cfg = replace(TINY, injection=name, loops=4, backprop_depth=3)
    active = perturbed(cfg)
    active.schedule = ActiveRows(min_rows)  # 2: as with a compiled core
    everyone = build_model(replace(cfg, active_only=False))
    everyone.load_state_dict(active.state_dict())
    x = torch.randint(0, 256, (8, 12))
    steps = torch.tensor(DEPTHS[depths])
    out = {}
    for key, model in (("active", active), ("all", everyone)):
        logits = model(x, steps, grad_steps=cfg.mu_bwd)
        logits.square().mean().backward()
        out[key] = logits, {n: p.grad for n, p in model.named_parameters()}
    (la, ga), (lb, gb) = out["active"], out["all"]
    assert torch.allclose(la, lb, atol=1e-6)
    assert ga.keys() == gb.keys()
    for n in ga:
        assert (ga[n] is None) == (gb[n] is None), n
        if ga[n] is not None:
            assert torch.allclose(ga[n], gb[n], atol=1e-7, rtol=1e-5), n
    assert ga["core.blocks.0.mlp.up.weight"].abs().sum() > 0  # the loop got a gradient


def test_active_only_steps_run_fewer_sequence_steps_with_the_same_split():
    model, everyone = build_model(TINY), build_model(replace(TINY, active_only=False))
    depths = DEPTHS["poisson"]  # T_max = 9, mu_bwd = 2
    # each sequence: min(T_i, 2) steps with gradient, the rest without
    assert model.schedule.executed(depths, 2) == (2 * 6 + 1 * 2, 0 + 4 + 0 + 7 + 1 + 0 + 2 + 0)
    assert everyone.schedule.executed(depths, 2) == (8 * 2, 8 * 7)
    assert model.schedule.executed([5] * 8, 2) == everyone.schedule.executed([5] * 8, 2)
    assert model.schedule.executed([3, 1], None) == (4, 0)  # no truncation: all with gradient
    # a compiled core never runs one sequence alone: steps 0-2 run a waiting one too
    assert ActiveRows(min_rows=2).executed(depths, 2) == (14, 14 + 3)


def test_only_the_linear_adapter_multiplies_weights_every_step():
    weights = {name: cls(TINY).step_weights() for name, cls in INJECTIONS.items()}
    assert weights == {"diagonal": 0, "linear": 64 * 64, "add": 0, "none": 0, "baseline": 0}


def test_lipschitz_estimate_is_the_jacobians_largest_singular_value():
    torch.manual_seed(0)
    model = build_model(replace(TINY, d_model=16, n_heads=2)).double()
    with torch.no_grad():  # leave the identity start: blocks with zero output projections
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.randint(0, 256, (1, 6))
    with torch.no_grad():
        e, h, rope = model.encode(x)
        drive = model.injection.prepare(e)
        for _ in range(3):
            h = model.step(h, drive, rope)
    jac = torch.autograd.functional.jacobian(lambda z: model.step(z, drive, rope), h)
    exact = torch.linalg.matrix_norm(jac.reshape(h.numel(), h.numel()), 2).item()
    assert exact != pytest.approx(TINY.a_bar_init, rel=0.05)  # not the trivial start
    assert lipschitz(model, x, 3, iters=60) == pytest.approx(exact, rel=1e-3)


def test_rope_rotates_pairs_and_scores_depend_on_relative_position():
    from parcae.model.rope import apply_rope, rope_tables

    torch.manual_seed(0)
    rope = rope_tables(12, 8, 10_000.0, torch.device("cpu")).double()
    q, k = torch.randn(2, 1, 1, 1, 8, dtype=torch.double)
    at = lambda v, pos: apply_rope(v.expand(1, 12, 1, 1, 8), rope)[0, pos, 0, 0]  # noqa: E731
    assert torch.allclose(at(q, 0), q.flatten())  # position 0 is not rotated
    assert at(q, 5).norm() == pytest.approx(q.norm().item())
    # adjacent pairs (x_2j, x_2j+1) rotate by position * frequency_j
    even, odd = q.flatten()[0::2], q.flatten()[1::2]
    angle = 3 * 10_000.0 ** (-torch.arange(0, 8, 2, dtype=torch.double) / 8)
    rotated = torch.stack((even * angle.cos() - odd * angle.sin(),
                           odd * angle.cos() + even * angle.sin()), -1).flatten()
    assert torch.allclose(at(q, 3), rotated)
    assert (at(q, 7) @ at(k, 4)).item() == pytest.approx((at(q, 5) @ at(k, 2)).item())


def test_rope_complex_product_on_cpu_equals_the_real_rotation_used_elsewhere():
    from parcae.model.rope import apply_rope, rope_tables, rotate_real

    torch.manual_seed(0)
    rope = rope_tables(16, 32, 10_000.0, torch.device("cpu"))
    x = torch.randn(3, 16, 2, 2, 32, requires_grad=True)
    g = torch.randn(3, 16, 2, 2, 32)
    ours, real = apply_rope(x, rope), rotate_real(x, rope)
    assert type(ours.grad_fn.next_functions[0][0]).__name__ == "ViewAsRealBackward0"
    assert torch.allclose(ours, real, atol=1e-6)
    (g_ours,), (g_real,) = (torch.autograd.grad(y, x, g) for y in (ours, real))
    assert torch.allclose(g_ours, g_real, atol=1e-6)
    assert torch.allclose(apply_rope(x.bfloat16(), rope).float(), real, atol=0.1)  # bf16: real


def test_qk_norm_normalizes_queries_and_keys_with_their_own_weights():
    from parcae.model.blocks import QKNorm

    norm = QKNorm(8)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 3.0])[:, None, None].expand(2, 1, 8))
    out = norm(torch.randn(4, 5, 2, 3, 8) * 7)
    rms = out.pow(2).mean(-1).sqrt()
    assert torch.allclose(rms[:, :, 0], torch.ones(4, 5, 3), atol=1e-4)
    assert torch.allclose(rms[:, :, 1], torch.full((4, 5, 3), 3.0), atol=1e-4)


@pytest.mark.parametrize(("x_shape", "w_shape"), [((4, 5, 8), (8,)), ((3, 4, 2, 3, 8), (2, 1, 8))])
def test_rms_norm_matches_torch_with_exact_gradients_and_tangents(x_shape, w_shape):
    from torch.nn.functional import rms_norm as torch_rms_norm

    from parcae.model.norm import rms_norm

    torch.manual_seed(0)
    x = torch.randn(x_shape, dtype=torch.double, requires_grad=True)
    w = torch.randn(w_shape, dtype=torch.double, requires_grad=True)
    expected = torch_rms_norm(x, (x_shape[-1],), None, 1e-6) * w
    assert torch.allclose(rms_norm(x, w, 1e-6), expected)
    norm = lambda a, b: rms_norm(a, b, 1e-6)  # noqa: E731
    assert torch.autograd.gradcheck(norm, (x, w))
    assert torch.autograd.gradcheck(norm, (x, w), check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False)


def test_rms_norm_without_a_graph_is_the_same_norm():
    from parcae.model.norm import rms_norm

    x = torch.randn(3, 4, 2, 5, 8)
    for w in (torch.randn(2, 1, 8), torch.randn(8)):  # QK-norm's weight and a plain one
        recorded = rms_norm(x.clone().requires_grad_(), w, 1e-6)
        assert recorded.grad_fn is not None
        with torch.no_grad():
            plain = rms_norm(x, w, 1e-6)
            expected = torch.nn.functional.rms_norm(x, (8,), None, 1e-6) * w
            assert torch.allclose(plain, recorded.detach(), atol=1e-6)
            assert torch.allclose(plain, expected, atol=1e-6)


def test_like_init_state_is_a_normal_truncated_at_three_std_redrawn_each_forward():
    from scipy import stats

    std = 0.1
    torch.manual_seed(0)
    h0 = like_init(torch.empty(200_000), std)
    truncated = stats.truncnorm(-3, 3, scale=std)
    assert h0.abs().max() <= 3 * std
    assert h0.std().item() == pytest.approx(truncated.std(), rel=0.01)
    assert stats.kstest(h0.numpy(), truncated.cdf).pvalue > 1e-3
    # the std check tells the truncation apart: an untruncated normal's is 1.4% larger
    assert (torch.randn(200_000) * std).std().item() != pytest.approx(truncated.std(), rel=0.01)

    model = build_model(replace(TINY, state_init="like-init", init_std=std))
    x = torch.randint(0, 256, (2, 16))
    (e, h_a, _), (_, h_b, _) = model.encode(x), model.encode(x)
    assert not torch.equal(h_a, h_b) and h_a.shape == e.shape
    assert torch.equal(build_model(TINY).encode(x)[1], torch.zeros_like(e))


def test_mlp_node_on_cpu_equals_the_built_in_ops():
    from parcae.model.mlp import mlp

    torch.manual_seed(0)
    x = torch.randn(4, 8, 16, requires_grad=True)
    w_up, w_out = torch.randn(64, 16, requires_grad=True), torch.randn(16, 64, requires_grad=True)
    g = torch.randn(4, 8, 16)
    y = mlp(x, w_up, w_out)
    assert y.grad_fn is not None and "MLPFunction" in type(y.grad_fn).__name__
    plain = torch.nn.functional.linear(torch.nn.functional.gelu(x @ w_up.t()), w_out)
    assert torch.allclose(y, plain, atol=1e-5)
    ours, torchs = (torch.autograd.grad(v, (x, w_up, w_out), g) for v in (y, plain))
    for a, b in zip(ours, torchs, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)
    args = tuple(t.detach().double().requires_grad_() for t in (x[:2, :3], w_up, w_out))
    assert torch.autograd.gradcheck(mlp, args)
    assert torch.autograd.gradcheck(mlp, args, check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False)
