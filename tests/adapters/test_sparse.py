"""MoSALinear: sparse experts in one tensor, masked gradients, routing, merge rules."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from mosa.adapters.sparse import MoSALinear

INITS = ("zero", "kaiming")
GRANULARITIES = ("element", "row", "column")


def make(
    init: str = "zero",
    n: int = 4,
    *,
    granularity: str = "element",
    merge: str = "mean",
    routing: str = "batch",
    seed: int = 0,
    route_seed: int = 11,
    in_features: int = 12,
    out_features: int = 10,
    bias: bool = True,
) -> MoSALinear:
    m = MoSALinear(
        in_features,
        out_features,
        num_experts=n,
        bias=bias,
        init=init,
        granularity=granularity,
        merge=merge,
        routing=routing,
        generator=torch.Generator().manual_seed(seed),
        route_seed=route_seed,
    )
    return m


def trained_like(m: MoSALinear, seed: int = 0) -> MoSALinear:
    """Give every trainable entry a distinct non-zero value, as after training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        m.weight.copy_(torch.randn(m.weight.shape, generator=g))
        if m.bias is not None:
            m.bias.copy_(torch.randn(m.bias.shape, generator=g))
    return m


def x_batch(b: int = 3, t: int = 5, d: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------- storage / init


def test_zero_init_stores_no_initial_copy_and_no_n_copies() -> None:
    m = make("zero", n=8)
    assert m.weight_init is None
    assert torch.count_nonzero(m.weight) == 0 and torch.count_nonzero(m.bias) == 0
    tensors = dict(m.named_parameters()) | dict(m.named_buffers())
    assert set(tensors) == {"weight", "bias", "owner"}
    # one trainable tensor + a uint8 index, never N copies
    assert sum(t.numel() for t in tensors.values()) == 2 * 10 * 12 + 10


def test_kaiming_init_stores_its_initial_value_once() -> None:
    m = make("kaiming", n=8)
    assert m.weight_init is not None
    assert torch.equal(m.weight_init, m.weight.detach())
    assert torch.count_nonzero(m.weight) == m.weight.numel()
    assert not m.weight_init.requires_grad
    bound = 1 / 12**0.5  # kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert float(m.weight.detach().abs().max()) <= bound


def test_bad_init_rejected() -> None:
    with pytest.raises(ValueError, match="init"):
        make("normal")


def test_same_generator_gives_same_partition_and_init() -> None:
    a, b, c = make("kaiming", seed=1), make("kaiming", seed=1), make("kaiming", seed=2)
    assert torch.equal(a.owner, b.owner) and torch.equal(a.weight, b.weight)
    assert not torch.equal(a.owner, c.owner)


# ---------------------------------------------------------------------------- experts, merge


@pytest.mark.parametrize("init", INITS)
def test_expert_weight_is_init_except_on_its_entries(init: str) -> None:
    m = trained_like(make(init))
    w0 = m.weight_init if m.weight_init is not None else torch.zeros_like(m.weight)
    for k in range(m.num_experts):
        mask = m.owner == k
        wk = m.expert_weight(k).detach()
        assert torch.equal(wk[mask], m.weight.detach()[mask])
        assert torch.equal(wk[~mask], w0[~mask])
    if init == "zero":  # a truly sparse expert: 1/N of its entries are non-zero
        nz = torch.count_nonzero(m.expert_weight(0))
        assert abs(int(nz) - m.weight.numel() / m.num_experts) <= 1


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("init", INITS)
def test_mean_merge_is_the_average_expert(init: str, granularity: str) -> None:
    m = trained_like(make(init, granularity=granularity))
    experts = torch.stack([m.expert_weight(k) for k in range(m.num_experts)])
    torch.testing.assert_close(m.merged_weight(), experts.mean(0), rtol=0, atol=1e-6)
    if init == "zero":  # Θ/N
        torch.testing.assert_close(m.merged_weight(), m.weight / m.num_experts)
    else:  # ((N-1)·W0 + Θ)/N
        want = ((m.num_experts - 1) * m.weight_init + m.weight) / m.num_experts
        torch.testing.assert_close(m.merged_weight(), want)


@pytest.mark.parametrize("init", INITS)
def test_sum_merge_is_the_sum_of_experts(init: str) -> None:
    m = trained_like(make(init, merge="sum"))
    experts = torch.stack([m.expert_weight(k) for k in range(m.num_experts)])
    torch.testing.assert_close(m.merged_weight(), experts.sum(0), rtol=0, atol=1e-5)


@pytest.mark.parametrize("merge", ["mean", "sum"])
@pytest.mark.parametrize("init", INITS)
def test_eval_uses_merged_weight_and_to_linear_matches(init: str, merge: str) -> None:
    m = trained_like(make(init, merge=merge)).eval()
    x = x_batch()
    want = F.linear(x, m.merged_weight(), m.bias)
    with torch.no_grad():
        out1, out2 = m(x), m(x)
        lin = m.to_linear()
        assert type(lin) is torch.nn.Linear
        torch.testing.assert_close(out1, want)
        assert torch.equal(out1, out2)  # no random pick in eval
        torch.testing.assert_close(lin(x), out1, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- training forward


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("init", INITS)
def test_batch_routing_grad_only_on_picked_expert(init: str, granularity: str) -> None:
    m = trained_like(make(init, granularity=granularity)).train()
    x = x_batch()
    out = m(x)
    k = m.last_expert
    assert isinstance(k, int) and 0 <= k < m.num_experts
    torch.testing.assert_close(out, F.linear(x, m.expert_weight(k), m.bias))
    out.square().sum().backward()
    mask = m.owner == k
    g = m.weight.grad
    assert torch.count_nonzero(g[~mask]) == 0
    assert torch.count_nonzero(g[mask]) == int(mask.sum())  # every picked entry is trained
    assert torch.count_nonzero(m.bias.grad) == m.bias.numel()  # the dense bias


def test_zero_init_expert_still_gets_gradient_at_init() -> None:
    # a zero Up projection must be trainable from its initial value (grad not blocked by 0)
    m = make("zero").train()
    out = m(x_batch())
    (out * torch.randn_like(out)).sum().backward()
    mask = m.owner == m.last_expert
    assert torch.count_nonzero(m.weight.grad[mask]) == int(mask.sum())
    assert torch.count_nonzero(m.weight.grad[~mask]) == 0


@pytest.mark.parametrize("init", INITS)
def test_sample_routing_picks_per_item_and_masks_gradient(init: str) -> None:
    m = trained_like(make(init, n=4, routing="sample")).train()
    x = x_batch(b=2)
    out = m(x)
    picks = m.last_expert
    assert isinstance(picks, torch.Tensor) and picks.shape == (2,)
    for b in range(2):  # each item used its own expert
        want = F.linear(x[b], m.expert_weight(int(picks[b])), m.bias)
        torch.testing.assert_close(out[b], want, rtol=1e-5, atol=1e-6)
    out.square().sum().backward()
    used = torch.zeros_like(m.owner, dtype=torch.bool)
    for p in picks.tolist():
        used |= m.owner == p
    assert torch.count_nonzero(m.weight.grad[~used]) == 0
    assert torch.count_nonzero(m.weight.grad[used]) == int(used.sum())


def test_sample_routing_draws_different_experts_within_a_batch() -> None:
    m = make("zero", n=4, routing="sample").train()
    m(x_batch(b=64))
    assert len(set(m.last_expert.tolist())) == 4


def test_sample_routing_on_2d_input() -> None:
    m = trained_like(make("kaiming", routing="sample")).train()
    x = torch.randn(6, 12)
    out = m(x)
    for b, p in enumerate(m.last_expert.tolist()):
        torch.testing.assert_close(out[b], F.linear(x[b], m.expert_weight(p), m.bias))


# ---------------------------------------------------------------------------- routing randomness


def picks(m: MoSALinear, n: int = 40) -> list[int]:
    m.train()
    out = []
    with torch.no_grad():
        for _ in range(n):
            m(torch.randn(2, 12))
            out.append(int(m.last_expert))
    return out


def test_picks_vary_cover_all_experts_and_repeat_per_seed() -> None:
    seq = picks(make(route_seed=3))
    assert set(seq) == {0, 1, 2, 3}
    assert seq == picks(make(route_seed=3))
    assert seq != picks(make(route_seed=4))


def test_picks_do_not_depend_on_global_rng() -> None:
    m1, m2 = make(route_seed=3), make(route_seed=3)
    torch.manual_seed(0)
    a = picks(m1)
    torch.manual_seed(99)
    assert picks(m2) == a


def test_rng_state_restores_pick_sequence() -> None:
    m = make()
    picks(m, 5)
    state = m.get_rng_state()
    first = picks(m)
    m.set_rng_state(state)
    assert picks(m) == first


def test_deepcopy_copies_routing_state() -> None:
    m = make()
    picks(m, 3)
    c = copy.deepcopy(m)
    assert picks(c) == picks(m)


# ---------------------------------------------------------------------------- routing groups


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("routing", ["batch", "sample"])
@pytest.mark.parametrize("bias", [True, False])
def test_groups_route_stacked_copies_as_separate_forwards(
    init: str, routing: str, bias: bool
) -> None:
    """One forward on cat([x, x]) with groups=2 == two forwards on x: same picks (in the same
    order of the routing generator), outputs, gradients and generator state afterwards."""
    a = make(init, routing=routing, bias=bias)
    with torch.no_grad():
        a.weight.normal_()
    b = copy.deepcopy(a)
    a.train(), b.train()
    x = torch.randn(6, 5, 12)
    seq = [a(x), a(x)]
    picks_a = [a.last_expert]
    b.groups = 2
    out = b(torch.cat([x, x]))
    torch.testing.assert_close(out, torch.cat(seq), rtol=1e-5, atol=1e-6)
    (torch.cat(seq) ** 2).sum().backward()
    (out**2).sum().backward()
    torch.testing.assert_close(b.weight.grad, a.weight.grad, rtol=1e-5, atol=1e-6)
    assert torch.equal(b.get_rng_state(), a.get_rng_state())
    if routing == "batch":
        assert b.last_expert.shape == (2,) and int(b.last_expert[1]) == picks_a[0]
    else:
        assert b.last_expert.shape == (12,) and torch.equal(b.last_expert[6:], picks_a[0])


def test_groups_need_a_divisible_leading_dimension() -> None:
    m = make()
    m.train()
    m.groups = 2
    with pytest.raises(ValueError, match="divisible by 2"):
        m(torch.randn(3, 12))
    m.eval()  # eval never routes, so groups do not matter there
    assert m(torch.randn(3, 12)).shape == (3, 10)


def _split(routing: str) -> MoSALinear:
    return MoSALinear(
        6, 4, num_experts=4, routing=routing, init="kaiming",
        generator=torch.Generator().manual_seed(0), route_seed=11,
    ).train()  # fmt: skip


@pytest.mark.parametrize("ahead", [False, True], ids=["in_forward", "drawn_ahead"])
@pytest.mark.parametrize("routing", ["batch", "sample"])
def test_picks_are_the_seeded_stream_in_call_order(routing: str, ahead: bool) -> None:
    # pins the stream: batch routing draws randint(N, (1,)) per forward, sample routing
    # randint(N, (B,)), from the layer's own generator seeded with route_seed
    lin, x = _split(routing), torch.randn(5, 3, 6)
    replay = torch.Generator().manual_seed(11)
    for _ in range(4):
        if ahead:
            lin.draw_routes(5)
        lin(x)
        want = torch.randint(4, (1 if routing == "batch" else 5,), generator=replay)
        got = torch.as_tensor(lin.last_expert).flatten()
        assert torch.equal(got, want)


def test_routes_drawn_ahead_are_dropped_by_eval_and_checked_against_the_batch() -> None:
    lin = _split("sample")
    lin.draw_routes(5)
    lin.eval().train()  # the training forward they were drawn for never ran
    assert lin.routes is None
    lin.draw_routes(5)
    with pytest.raises(ValueError, match="drawn for 5 images, but this forward has 3"):
        lin(torch.randn(3, 2, 6))
