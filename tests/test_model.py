"""inject / merge / summary / routing state on real (tiny, random) timm backbones."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mosa
from mosa import MethodConfig
from mosa.adapters.adapter import Adapter
from mosa.adapters.lora import LoRA, LoRABranch
from mosa.adapters.sparse import MoSALinear
from mosa.model import PREFIX, adapter_state_dict, mosa_modules
from mosa.state import state_of

MakeModel = Callable[..., nn.Module]
STYLES = ("adaptformer", "pfeiffer", "houlsby")
SHARES = ("down", "up", "none")


def method_grid(arch: str) -> list[dict[str, object]]:
    """Every method x style x share that applies to ``arch`` (as MethodConfig kwargs)."""
    styles = [s for s in STYLES if not (arch == "convnext" and s == "houlsby")]
    lora_kw: dict[str, object] = {"targets": ("mlp",)} if arch == "convnext" else {}
    grid: list[dict[str, object]] = [{"method": "linear"}, {"method": "full"}]
    grid += [{"method": "adapter", "style": s} for s in styles]
    grid += [{"method": "mosa", "style": s, "share": sh} for s in styles for sh in SHARES]
    grid += [{"method": "lora", **lora_kw}]
    grid += [{"method": "mosa_lora", "share": sh, **lora_kw} for sh in SHARES]
    return grid


def grid_params(archs: tuple[str, ...] = ("vit", "swin", "convnext")) -> list[object]:
    return [
        pytest.param(a, kw, id=a + "-" + "-".join(str(v) for v in kw.values()))
        for a in archs
        for kw in method_grid(a)
    ]


def split_modules(model: nn.Module) -> list[tuple[str, MoSALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MoSALinear)]


def is_mosa_name(name: str) -> bool:
    return any(p.startswith(PREFIX) for p in name.split("."))


@torch.no_grad()
def randomize_added(model: nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Give every parameter mosa added a random non-zero value (as after long training), so
    zero-initialised projections no longer block gradients or hide outputs."""
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        if is_mosa_name(n):
            p.copy_(torch.randn(p.shape, generator=g) * std)


def record_picks(model: nn.Module, x: torch.Tensor, forwards: int) -> dict[str, list[object]]:
    model.train()
    seqs: dict[str, list[object]] = {n: [] for n, _ in split_modules(model)}
    with torch.no_grad():
        for _ in range(forwards):
            model(x)
            for n, m in split_modules(model):
                k = m.last_expert
                seqs[n].append(k.tolist() if isinstance(k, torch.Tensor) else k)
    return seqs


# ---------------------------------------------------------------------------- freezing


@pytest.mark.parametrize("method", ["linear", "full", "adapter", "lora", "mosa", "mosa_lora"])
def test_only_method_parameters_and_head_are_trainable(make_model: MakeModel, method: str) -> None:
    model = mosa.inject(make_model("vit"), MethodConfig(method=method))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n, _ in model.named_parameters() if n.startswith("head.")}
    added = {n for n, _ in model.named_parameters() if is_mosa_name(n)}
    if method == "full":
        assert trainable == {n for n, _ in model.named_parameters()}
        return
    assert head and head <= trainable
    assert trainable == head | added
    assert (len(added) > 0) == (method != "linear")


def test_inject_returns_model_and_records_config(make_model: MakeModel) -> None:
    cfg = MethodConfig(method="mosa", bottleneck=8)
    model = make_model("vit")
    assert mosa.inject(model, cfg) is model
    assert state_of(model).config is cfg
    assert mosa.summary(model)["merged"] is False


# ---------------------------------------------------------------------------- identity at init


@pytest.mark.parametrize(("arch", "kw"), grid_params())
def test_initial_output_equals_frozen_backbone(
    make_model: MakeModel, images: torch.Tensor, arch: str, kw: dict[str, object]
) -> None:
    backbone = make_model(arch)
    model = mosa.inject(copy.deepcopy(backbone), MethodConfig(**kw))
    with torch.no_grad():
        for train in (False, True):  # eval (merged experts) and training (random picks)
            backbone.train(train)
            model.train(train)
            ref, out = backbone(images), model(images)
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    if kw["method"] not in ("linear", "full"):  # the method really is in the forward path
        randomize_added(model)
        model.eval()
        with torch.no_grad():
            assert (model(images) - backbone(images)).abs().max() > 1e-3


# ---------------------------------------------------------------------------- sparse gradients


def _check_sparse_grads(model: nn.Module, union: bool = False) -> int:
    """Assert each split projection's gradient lives on its picked expert(s) only; return how
    many split projections were checked."""
    splits = split_modules(model)
    for name, m in splits:
        g = m.weight.grad
        assert g is not None, name
        picks = m.last_expert
        ks = picks.tolist() if isinstance(picks, torch.Tensor) else [picks]
        if not union:
            assert len(ks) == 1
        mask = torch.zeros_like(m.owner, dtype=torch.bool)
        for k in ks:
            mask |= m.owner == k
        assert not mask.all(), f"{name}: picks {ks} cover every expert, test is vacuous"
        assert torch.count_nonzero(g[~mask]) == 0, f"{name}: gradient outside picked experts"
        # (not all: with share="none" a hidden unit whose Up column has no entry of the picked
        # Up expert passes no gradient back to its Down row)
        frac = float((g[mask] != 0).float().mean())
        assert frac > 0.5, f"{name}: only {frac:.0%} of the picked entries got gradient"
        if m.bias is not None and m.expert_bias:  # only the picked experts' bias rows
            rows = m.bias.grad.abs().sum(1) > 0
            assert rows.tolist() == [k in ks for k in range(m.num_experts)], f"{name}: bias"
        elif m.bias is not None:  # a shared bias is dense (same caveat for a split Down's)
            assert torch.count_nonzero(m.bias.grad) > 0.5 * m.bias.numel(), f"{name}: bias"
    for name, p in model.named_parameters():
        if is_mosa_name(name) and not any(name.startswith(n + ".") for n, _ in splits):
            # dense adapter parts (shared projection, LayerNorm) train densely
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0.9 * p.numel(), name
        elif not is_mosa_name(name) and not name.startswith("head."):
            assert p.grad is None, f"frozen backbone parameter {name} got a gradient"
    return len(splits)


SPARSE_CASES = [pytest.param("vit", "mosa", share, id=f"vit-mosa-{share}") for share in SHARES] + [
    pytest.param("vit", "mosa_lora", share, id=f"vit-mosa_lora-{share}") for share in SHARES
]
SPARSE_CASES += [
    pytest.param("swin", "mosa", "none", id="swin-mosa-none"),
    pytest.param("swin", "mosa_lora", "none", id="swin-mosa_lora-none"),
    pytest.param("convnext", "mosa", "none", id="convnext-mosa-none"),
]
# split projections per model: (split down, split up) x per-site count
EXPECTED_SPLITS = {
    ("vit", "mosa"): 2,  # one adapter per block, 2 blocks
    ("vit", "mosa_lora"): 4,  # q and v branches, 2 blocks
    ("swin", "mosa"): 2,
    ("swin", "mosa_lora"): 4,
    ("convnext", "mosa"): 4,
}


@pytest.mark.parametrize(("arch", "method", "share"), SPARSE_CASES)
def test_one_backward_trains_only_the_picked_expert(
    make_model: MakeModel, images: torch.Tensor, arch: str, method: str, share: str
) -> None:
    kw: dict[str, object] = {"targets": ("mlp",)} if arch == "convnext" else {}
    cfg = MethodConfig(method=method, share=share, dropout=0.0, **kw)
    model = mosa.inject(make_model(arch), cfg)
    randomize_added(model)
    model.train()
    loss = F.cross_entropy(model(images), torch.arange(4) % 5)
    loss.backward()
    per_proj = 2 if share == "none" else 1
    assert _check_sparse_grads(model) == EXPECTED_SPLITS[(arch, method)] * per_proj


@pytest.mark.parametrize("method", ["mosa", "mosa_lora"])
def test_sample_routing_trains_only_picked_experts(
    make_model: MakeModel, images: torch.Tensor, method: str
) -> None:
    cfg = MethodConfig(method=method, share="none", routing="sample", dropout=0.0, num_experts=6)
    model = mosa.inject(make_model("vit"), cfg)
    randomize_added(model)
    model.train()
    x = images[:2]  # two samples: at most two of the six experts per projection
    F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    for name, m in split_modules(model):
        assert isinstance(m.last_expert, torch.Tensor), name
        assert m.last_expert.shape == (2,), name
    assert _check_sparse_grads(model, union=True) > 0
    # and the samples of one batch really do use different experts somewhere
    seqs = record_picks(model, images, 5)
    assert any(len(set(p)) > 1 for s in seqs.values() for p in s)


@pytest.mark.parametrize(
    "kw",
    [
        pytest.param({"method": "mosa", "style": "houlsby"}, id="houlsby-attn-adapter"),
        pytest.param({"method": "mosa_lora"}, id="mosa_lora-qkv"),
    ],
)
def test_swin_sample_routing_picks_one_expert_per_image(
    make_model: MakeModel, images: torch.Tensor, kw: dict[str, object]
) -> None:
    model = mosa.inject(make_model("swin"), MethodConfig(routing="sample", **kw))
    model.train()
    with torch.no_grad():
        model(images[:2])
    shapes = {n: tuple(m.last_expert.shape) for n, m in split_modules(model)}
    assert all(s == (2,) for s in shapes.values()), shapes


@pytest.mark.parametrize("method", ["mosa", "mosa_lora"])
def test_swin_sample_routing_routes_every_window_of_an_image_to_its_expert(
    make_model: MakeModel, images: torch.Tensor, method: str
) -> None:
    """Each image's output equals that image run alone with its own recorded experts: a
    router that mixed the experts of one image's windows would change it."""
    cfg = MethodConfig(method=method, routing="sample", share="none", dropout=0.0, num_experts=4)
    model = mosa.inject(make_model("swin"), cfg)
    randomize_added(model)
    model.train()
    x = images[:3]
    with torch.no_grad():
        batch = model(x)
    picks = {n: m.last_expert.clone() for n, m in split_modules(model)}
    assert any(len(set(p.tolist())) > 1 for p in picks.values())  # images differ somewhere
    for i in range(len(x)):
        for n, m in split_modules(model):
            m.draw = lambda k, p=picks[n][i]: p.view(1).repeat(k)  # type: ignore[method-assign]
        with torch.no_grad():
            alone = model(x[i : i + 1])
        torch.testing.assert_close(alone[0], batch[i], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- routing sequence


def test_picks_change_repeat_per_seed_and_differ_across_seeds(
    make_model: MakeModel, images: torch.Tensor
) -> None:
    def seqs(seed: int) -> dict[str, list[object]]:
        model = mosa.inject(make_model("vit"), MethodConfig(share="none", seed=seed))
        return record_picks(model, images, 12)

    a, b, c = seqs(1), seqs(1), seqs(2)
    assert len(a) == 4
    assert a == b
    assert a != c
    for name, s in a.items():  # picks change between forwards and reach every expert
        assert set(s) == {0, 1, 2, 3}, (name, s)
    # each split projection draws its own expert
    assert len({tuple(s) for s in a.values()}) == len(a)


@pytest.mark.parametrize(
    ("arch", "kw"),
    [
        pytest.param("vit", {"method": "mosa"}, id="vit-mosa"),
        pytest.param("vit", {"method": "mosa", "routing": "sample"}, id="vit-mosa-sample"),
        pytest.param("vit", {"method": "mosa_lora"}, id="vit-mosa_lora"),
        pytest.param("swin", {"method": "mosa", "style": "houlsby"}, id="swin-houlsby"),
        pytest.param("swin", {"method": "mosa_lora", "routing": "sample"}, id="swin-lora-sample"),
        pytest.param("convnext", {"method": "mosa"}, id="convnext-mosa"),
    ],
)
def test_forward_twice_equals_two_forwards(
    make_model: MakeModel, images: torch.Tensor, arch: str, kw: dict[str, object]
) -> None:
    """The consistency pair as one doubled-batch forward routes, computes and trains exactly
    as two forwards (no dropout, so only the expert picks are random)."""
    a = mosa.inject(make_model(arch), MethodConfig(share="none", dropout=0.0, **kw))
    randomize_added(a)
    b = copy.deepcopy(a)
    a.train(), b.train()
    first, second = a(images), a(images)
    pair = mosa.forward_twice(b, images)
    assert not torch.allclose(first, second)  # the two passes picked different experts
    for got, want in zip(pair, (first, second), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    (F.mse_loss(first, second.detach()) + first.sum()).backward()
    (F.mse_loss(pair[0], pair[1].detach()) + pair[0].sum()).backward()
    grads_a = {n: p.grad for n, p in a.named_parameters() if p.grad is not None}
    grads_b = {n: p.grad for n, p in b.named_parameters() if p.grad is not None}
    assert grads_a.keys() == grads_b.keys() and grads_a
    for n, g in grads_a.items():
        torch.testing.assert_close(grads_b[n], g, rtol=1e-4, atol=1e-5, msg=n)
    state_a, state_b = mosa.get_rng_state(a), mosa.get_rng_state(b)
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert all(m.groups == 1 for m in mosa_modules(b))  # restored after the call


def test_routing_groups_are_restored_when_the_forward_fails(make_model: MakeModel) -> None:
    model = mosa.inject(make_model("vit"), MethodConfig())
    model.train()
    with pytest.raises(ValueError, match="divisible by 2"), mosa.routing_groups(model, 2):
        model(torch.randn(3, 3, 32, 32))
    assert all(m.groups == 1 for m in mosa_modules(model))
    with pytest.raises(ValueError, match="groups must be >= 1"), mosa.routing_groups(model, 0):
        pass


def test_same_seed_gives_same_partitions_and_init(make_model: MakeModel) -> None:
    m1 = mosa.inject(make_model("vit"), MethodConfig(share="none", seed=5))
    m2 = mosa.inject(make_model("vit"), MethodConfig(share="none", seed=5))
    m3 = mosa.inject(make_model("vit"), MethodConfig(share="none", seed=6))
    s1, s2, s3 = (adapter_state_dict(m) for m in (m1, m2, m3))
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1 if k.endswith("owner"))


def test_rng_state_restores_pick_sequence(make_model: MakeModel, images: torch.Tensor) -> None:
    model = mosa.inject(make_model("vit"), MethodConfig(method="mosa_lora", share="none"))
    record_picks(model, images, 3)
    state = mosa.get_rng_state(model)
    assert len(state) == 8 and all(isinstance(v, torch.Tensor) for v in state.values())
    first = record_picks(model, images, 6)
    assert first != record_picks(model, images, 6)  # the sequence moves on ...
    mosa.set_rng_state(model, state)
    assert record_picks(model, images, 6) == first  # ... and is restored


def test_rng_state_restores_training_outputs(make_model: MakeModel, images: torch.Tensor) -> None:
    model = mosa.inject(make_model("vit"), MethodConfig(share="none", dropout=0.0))
    randomize_added(model)
    model.train()
    state = mosa.get_rng_state(model)
    with torch.no_grad():
        outs = [model(images) for _ in range(3)]
        mosa.set_rng_state(model, state)
        again = [model(images) for _ in range(3)]
    assert not torch.equal(outs[0], outs[1]) or not torch.equal(outs[1], outs[2])
    for a, b in zip(outs, again, strict=True):
        assert torch.equal(a, b)


def test_rng_state_of_another_model_is_refused(make_model: MakeModel) -> None:
    a = mosa.inject(make_model("vit"), MethodConfig(share="none"))
    b = mosa.inject(make_model("vit"), MethodConfig(share="down"))
    with pytest.raises(ValueError, match="routing state"):
        mosa.set_rng_state(b, mosa.get_rng_state(a))


# ---------------------------------------------------------------------------- merge = mean of experts


@contextlib.contextmanager
def _forced(m: MoSALinear, k: int) -> Iterator[None]:
    """Make ``m`` apply expert ``k`` whatever its mode (an instance-level forward)."""
    m.forward = lambda x: F.linear(x, m.expert_weight(k), m.expert_bias_of(k))  # type: ignore[method-assign]
    try:
        yield
    finally:
        del m.forward


def _capture_inputs(model: nn.Module, types: tuple[type, ...], x: torch.Tensor) -> dict:
    """Run ``model`` once and return {name: (module, its input)} for the modules of ``types``."""
    seen: dict[str, tuple[nn.Module, torch.Tensor]] = {}
    handles = []
    for n, mod in model.named_modules():
        if isinstance(mod, types):

            def pre(module: nn.Module, args: tuple, n: str = n) -> None:
                seen[n] = (module, args[0].detach().clone())

            handles.append(mod.register_forward_pre_hook(pre))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("merge_rule", ["mean", "sum"])
@pytest.mark.parametrize("method", ["mosa", "mosa_lora"])
def test_merged_adapter_is_the_average_of_its_experts(
    make_model: MakeModel, toy_data: tuple, train: Callable, method: str, merge_rule: str
) -> None:
    cfg = MethodConfig(method=method, share="down", merge=merge_rule, num_experts=4)
    model = mosa.inject(make_model("vit"), cfg)
    train(model, 5, lr=2e-2)  # a few real AdamW steps
    model.eval()
    x = toy_data[0][:4]
    unit = Adapter if method == "mosa" else LoRABranch
    seen = _capture_inputs(model, (unit,), x)
    assert len(seen) == (2 if method == "mosa" else 4)
    merged_units = {}
    n = cfg.num_experts
    for name, (mod, inp) in seen.items():
        split = mod.up if method == "mosa" else mod.B
        assert isinstance(split, MoSALinear)
        assert torch.count_nonzero(split.weight) > 0
        with torch.no_grad():
            merged = mod(inp)
            experts = []
            for k in range(n):
                with _forced(split, k):
                    experts.append(mod(inp))
        stack = torch.stack(experts)
        # sum: the sum of the experts' weights and of their biases, every expert's output once
        want = stack.mean(0) if merge_rule == "mean" else stack.sum(0)
        torch.testing.assert_close(merged, want, rtol=0, atol=1e-5)
        # the experts really differ (so the average is not trivially one of them)
        assert (stack[0] - stack[1]).abs().max() > 1e-4, name
        merged_units[name] = (merged, inp)
    mosa.merge(model)
    assert not list(mosa_modules(model))
    if method == "mosa":  # the deployable dense adapter gives the same output
        with torch.no_grad():
            for name, (merged, inp) in merged_units.items():
                out = model.get_submodule(name)(inp)
                torch.testing.assert_close(out, merged, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- merge


@pytest.mark.parametrize(("arch", "kw"), grid_params())
def test_merge_keeps_eval_output(
    make_model: MakeModel, images: torch.Tensor, arch: str, kw: dict[str, object]
) -> None:
    model = mosa.inject(make_model(arch), MethodConfig(**kw))
    randomize_added(model, std=0.05)
    model.eval()
    with torch.no_grad():
        before = model(images)
        assert mosa.merge(model) is model
        after = model(images)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    assert not split_modules(model)
    assert not any(isinstance(m, LoRA) for m in model.modules())
    assert mosa.summary(model)["merged"] is True
    if MethodConfig(**kw).uses_lora:  # folded: the hooks are gone, a plain backbone is left
        for m in model.modules():
            for hook in list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values()):
                assert not isinstance(getattr(hook, "__self__", None), LoRA)
        assert not any(is_mosa_name(k) for k in model.state_dict())


def test_merge_requires_injected_model(make_model: MakeModel) -> None:
    with pytest.raises(ValueError, match="inject"):
        mosa.merge(make_model("vit"))


# ---------------------------------------------------------------------------- parameter counts


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("share", SHARES)
def test_mosa_has_the_trainable_parameters_of_one_adapter(
    make_model: MakeModel, style: str, share: str
) -> None:
    ada = mosa.summary(mosa.inject(make_model("vit"), MethodConfig(method="adapter", style=style)))
    mo = mosa.summary(
        mosa.inject(
            make_model("vit"), MethodConfig(method="mosa", style=style, share=share, bias="shared")
        )
    )
    assert mo["trainable"] == ada["trainable"]
    assert mo["adapter"] == ada["adapter"]
    # the paper's per-expert biases add exactly (N-1)·out per split projection, and say so
    paper = mosa.summary(
        mosa.inject(make_model("vit"), MethodConfig(method="mosa", style=style, share=share))
    )
    assert paper["trainable"] - ada["trainable"] == paper["expert_bias_extra"] > 0
    # and that count is what one bottleneck adapter per site should have (d=48, r=16)
    d, r, sites = 48, 16, 2 * (2 if style == "houlsby" else 1)
    norm = 2 * d if style != "houlsby" else 0
    assert ada["adapter"] == sites * (norm + d * r + r + r * d + d)
    assert ada["trainable"] == ada["adapter"] + ada["head"]


@pytest.mark.parametrize("share", SHARES)
def test_mosa_lora_has_the_trainable_parameters_of_lora(make_model: MakeModel, share: str) -> None:
    lo = mosa.summary(mosa.inject(make_model("vit"), MethodConfig(method="lora", rank=4)))
    ml = mosa.summary(
        mosa.inject(make_model("vit"), MethodConfig(method="mosa_lora", rank=4, share=share))
    )
    assert ml["trainable"] == lo["trainable"]
    # q and v of 2 blocks: A (48 -> 4) and B (4 -> 48), no biases
    assert lo["adapter"] == 2 * 2 * (48 * 4 + 4 * 48)


def test_summary_counts(make_model: MakeModel) -> None:
    base = make_model("vit")
    total = sum(p.numel() for p in base.parameters())
    lin = mosa.summary(mosa.inject(make_model("vit"), MethodConfig(method="linear")))
    assert lin["trainable"] == lin["head"] == 48 * 5 + 5
    assert lin["total"] == total and lin["adapter"] == 0
    full = mosa.summary(mosa.inject(make_model("vit"), MethodConfig(method="full")))
    assert full["trainable"] == full["total"] == total
    s = mosa.summary(mosa.inject(make_model("vit"), MethodConfig(method="mosa")))
    assert s["total"] == total + s["adapter"]
    assert 0 < s["trainable_pct"] < 100
    assert s["method"] == "mosa"


# ---------------------------------------------------------------------------- backbone untouched


@pytest.mark.parametrize(("arch", "kw"), grid_params())
def test_backbone_parameter_names_and_values_unchanged(
    make_model: MakeModel, arch: str, kw: dict[str, object]
) -> None:
    original = make_model(arch).state_dict()
    model = mosa.inject(make_model(arch), MethodConfig(**kw))
    sd = model.state_dict()
    kept = {k for k in sd if not is_mosa_name(k)}
    assert kept == set(original)
    assert all(torch.equal(sd[k], original[k]) for k in kept)
    added = set(sd) - kept
    assert bool(added) == (kw["method"] not in ("linear", "full"))
    # the blocks keep their timm classes
    assert [type(m) for m in model.modules() if not is_mosa_module(model, m)] == [
        type(m) for m in make_model(arch).modules()
    ]


def is_mosa_module(model: nn.Module, mod: nn.Module) -> bool:
    return isinstance(mod, (Adapter, LoRA, LoRABranch, MoSALinear)) or any(
        mod is sub for a in model.modules() if isinstance(a, (Adapter, LoRA)) for sub in a.modules()
    )


# ---------------------------------------------------------------------------- deepcopy


@pytest.mark.parametrize(
    ("arch", "kw"),
    [
        pytest.param("vit", {"method": "mosa"}, id="vit-mosa-adaptformer"),
        pytest.param("vit", {"method": "mosa", "style": "houlsby"}, id="vit-mosa-houlsby"),
        pytest.param("vit", {"method": "mosa_lora"}, id="vit-mosa_lora"),
        pytest.param("swin", {"method": "mosa"}, id="swin-mosa"),
        pytest.param("convnext", {"method": "adapter"}, id="convnext-adapter"),
    ],
)
def test_deepcopy_is_independent(
    make_model: MakeModel, images: torch.Tensor, train: Callable, arch: str, kw: dict[str, object]
) -> None:
    model = mosa.inject(make_model(arch), MethodConfig(**kw))
    train(model, 1)
    model.eval()
    with torch.no_grad():
        ref = model(images)
    twin = copy.deepcopy(model)
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(images), ref, rtol=0, atol=0)
    assert state_of(twin).config == state_of(model).config
    # every hook of the copy is bound to a module of the copy
    own = {id(m) for m in twin.modules()}
    theirs = {id(m) for m in model.modules()}
    hooks = 0
    for m in twin.modules():
        for hook in list(m._forward_hooks.values()) + list(m._forward_pre_hooks.values()):
            owner = getattr(hook, "__self__", None)
            if owner is not None:
                hooks += 1
                assert id(owner) in own and id(owner) not in theirs
    assert hooks > 0
    # training the copy's method alone (head frozen) changes the copy only, and no gradient
    # reaches the original's parameters
    model.zero_grad(set_to_none=True)
    twin.get_classifier().requires_grad_(False)
    train(twin, 2, lr=5e-2)
    twin.eval()
    with torch.no_grad():
        assert (twin(images) - ref).abs().max() > 1e-4
        torch.testing.assert_close(model(images), ref, rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------------------- inject errors


def test_inject_twice_is_refused(make_model: MakeModel) -> None:
    model = mosa.inject(make_model("vit"), MethodConfig())
    with pytest.raises(ValueError, match="already"):
        mosa.inject(model, MethodConfig(method="lora"))


def test_inject_needs_a_method_config(make_model: MakeModel) -> None:
    with pytest.raises(TypeError, match="MethodConfig"):
        mosa.inject(make_model("vit"), {"method": "mosa"})  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["mosa", "mosa_lora"])
def test_inject_keeps_the_models_eval_mode(
    make_model: MakeModel, images: torch.Tensor, method: str
) -> None:
    model = make_model("vit").eval()
    mosa.inject(model, MethodConfig(method=method))
    randomize_added(model)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(images), model(images))
