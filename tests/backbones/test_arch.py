"""The architecture registry: where methods attach in ViT, Swin and ConvNeXt, and what fails."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn

import mosa
from mosa import MethodConfig
from mosa.adapters.adapter import Adapter
from mosa.adapters.sparse import MoSALinear
from mosa.backbones.arch import find_architecture, supported_architectures
from mosa.state import find_state

MakeModel = Callable[..., nn.Module]
ARCHS = ("vit", "swin", "convnext")


def test_registry_finds_each_architecture(make_model: MakeModel) -> None:
    assert {"vit", "swin", "convnext"} <= set(supported_architectures())
    for arch in ARCHS:
        assert find_architecture(make_model(arch)).name == arch


@pytest.mark.parametrize(
    "model_fn",
    [
        pytest.param(lambda: torchvision.models.resnet18(num_classes=5), id="torchvision-resnet"),
        pytest.param(lambda: nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2)), id="seq"),
    ],
)
@pytest.mark.parametrize("method", ["adapter", "mosa", "lora", "mosa_lora"])
def test_unsupported_model_is_a_type_error_listing_architectures(
    model_fn: Callable[[], nn.Module], method: str
) -> None:
    model = model_fn()
    with pytest.raises(TypeError) as info:
        mosa.inject(model, MethodConfig(method=method))
    msg = str(info.value)
    assert type(model).__name__ in msg
    for name in ("vit", "swin", "convnext"):
        assert name in msg
    # nothing was half-attached: the model still has no method
    assert find_state(model) is None
    assert not any(n.startswith("mosa_") for n, _ in model.named_modules())


@pytest.mark.parametrize("method", ["adapter", "mosa"])
def test_houlsby_on_convnext_is_a_clear_error(make_model: MakeModel, method: str) -> None:
    model = make_model("convnext")
    with pytest.raises(ValueError, match="houlsby") as info:
        mosa.inject(model, MethodConfig(method=method, style="houlsby"))
    assert "ConvNeXt" in str(info.value) and "adaptformer" in str(info.value)
    # a retry with a valid style works on the same model
    mosa.inject(model, MethodConfig(method=method, style="pfeiffer"))


@pytest.mark.parametrize("method", ["lora", "mosa_lora"])
@pytest.mark.parametrize(("conv_mlp", "available"), [(False, "['mlp']"), (True, "none")])
def test_missing_lora_target_names_available_targets(
    make_model: MakeModel, method: str, conv_mlp: bool, available: str
) -> None:
    model = make_model("convnext", conv_mlp=conv_mlp)
    with pytest.raises(ValueError) as info:
        mosa.inject(model, MethodConfig(method=method, targets=("q", "v")))
    msg = str(info.value)
    assert "'q'" in msg and "'v'" in msg
    assert f"available: {available}" in msg


@pytest.mark.parametrize(
    ("arch", "targets", "paths"),
    [
        ("vit", ("q", "v"), {"attn.qkv"}),
        ("vit", ("q", "k", "v", "o", "mlp"), {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"}),
        ("swin", ("v", "o"), {"attn.qkv", "attn.proj"}),
        ("convnext", ("mlp",), {"mlp.fc1", "mlp.fc2"}),
    ],
)
def test_lora_lands_on_the_named_layers(
    make_model: MakeModel, arch: str, targets: tuple[str, ...], paths: set[str]
) -> None:
    model = mosa.inject(make_model(arch), MethodConfig(method="lora", targets=targets))
    arch_ = find_architecture(model)
    blocks = list(arch_.blocks(model))
    assert blocks
    for _, block in blocks:
        found = {
            n.rsplit(".mosa_lora", 1)[0]
            for n, _ in block.named_modules()
            if n.endswith("mosa_lora")
        }
        assert found == paths
        if "attn.qkv" in paths:
            lora = block.get_submodule("attn.qkv.mosa_lora")
            want = [t for t in targets if t in "qkv"]
            assert sorted(lora.branches) == sorted(want)
            d = block.attn.qkv.out_features // 3
            for i, t in enumerate("qkv"):
                if t in want:
                    assert lora.slices[t] == slice(i * d, (i + 1) * d)


@torch.no_grad()
def test_lora_updates_only_its_qkv_slices(make_model: MakeModel, images: torch.Tensor) -> None:
    """LoRA on q and v changes the q and v rows of the fused qkv output, never k's."""
    model = mosa.inject(make_model("vit"), MethodConfig(method="lora", targets=("q", "v")))
    for n, p in model.named_parameters():
        if ".B." in n:
            p.normal_()
    qkv = model.blocks[0].attn.qkv
    x = torch.randn(2, 17, 48)
    delta = qkv(x) - qkv.forward(x)  # forward() skips the hook: the frozen layer alone
    d = 48
    assert delta[..., :d].abs().max() > 1e-3  # q
    assert torch.count_nonzero(delta[..., d : 2 * d]) == 0  # k untouched
    assert delta[..., 2 * d :].abs().max() > 1e-3  # v


# ---------------------------------------------------------------------------- adapter placement


def _adapters(block: nn.Module) -> dict[str, Adapter]:
    return {n: m for n, m in block.named_children() if isinstance(m, Adapter)}


@pytest.mark.parametrize(
    ("arch", "style"),
    [
        (a, s)
        for a in ARCHS
        for s in ("adaptformer", "pfeiffer", "houlsby")
        if (a, s) != ("convnext", "houlsby")  # refused with an error, tested elsewhere
    ],
)
def test_adapter_sites_per_block(make_model: MakeModel, arch: str, style: str) -> None:
    model = mosa.inject(make_model(arch), MethodConfig(method="mosa", style=style))
    blocks = list(find_architecture(model).blocks(model))
    assert len(blocks) == {"vit": 2, "swin": 2, "convnext": 4}[arch]
    want = {"mosa_adapter", "mosa_adapter_attn"} if style == "houlsby" else {"mosa_adapter"}
    for _, block in blocks:
        ads = _adapters(block)
        assert set(ads) == want
        for ad in ads.values():
            assert ad.style == style
            assert ad.scale == {"adaptformer": 0.1, "pfeiffer": 1.0, "houlsby": 1.0}[style]
            assert isinstance(ad.norm, nn.Identity) == (style == "houlsby")
            assert (
                type(ad.act)
                is {"adaptformer": nn.GELU, "pfeiffer": nn.ReLU, "houlsby": nn.SiLU}[style]
            )
            assert isinstance(ad.up, MoSALinear) and isinstance(ad.down, nn.Linear)


@torch.no_grad()
def _trained_block(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for n, p in model.named_parameters():
        if "mosa_" in n:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.eval()


@torch.no_grad()
def test_vit_adaptformer_is_parallel_to_the_mlp_after_layer_scale(make_model: MakeModel) -> None:
    model = mosa.inject(make_model("vit", init_values=0.5), MethodConfig(method="adapter"))
    _trained_block(model)
    block = model.blocks[0]
    x = torch.randn(2, 17, 48)
    # x' = x + attn(norm1(x)) ; y = x' + ls2(mlp(norm2(x'))) + 0.1 * adapter(x')
    xp = x + block.ls1(block.attn(block.norm1(x)))
    ad = block.mosa_adapter
    ref = block.mosa_adapter.up(ad.act(ad.down(ad.norm(xp))))
    want = xp + block.ls2.forward(block.mlp(block.norm2.forward(xp))) + 0.1 * ref
    torch.testing.assert_close(block(x), want, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_vit_sequential_styles(make_model: MakeModel) -> None:
    model = mosa.inject(make_model("vit"), MethodConfig(method="adapter", style="pfeiffer"))
    _trained_block(model)
    block = model.blocks[0]
    h = torch.randn(2, 17, 48)
    plain = block.mlp.forward(h)
    torch.testing.assert_close(block.mlp(h), plain + block.mosa_adapter(plain))


@pytest.mark.parametrize("arch", ["vit", "swin"])
@torch.no_grad()
def test_houlsby_adapters_read_the_post_residual_stream(make_model: MakeModel, arch: str) -> None:
    model = mosa.inject(make_model(arch), MethodConfig(method="mosa", style="houlsby"))
    _trained_block(model)
    model.eval()
    block = model.blocks[0] if arch == "vit" else model.layers[0].blocks[0]
    assert block.mosa_adapter.drop.p == 0.0  # the reference's Houlsby adapter has no dropout
    # as the reference: s = x + Attn(x); s = s + A1(s); y = s + MLP(s); y = y + A2(y)
    shape = (2, 17, 48) if arch == "vit" else (2, 16, 16, 24)
    x = torch.randn(*shape)
    ls1 = block.ls1.forward if arch == "vit" else (lambda t: t)
    ls2 = block.ls2.forward if arch == "vit" else (lambda t: t)
    if arch == "vit":
        s = x + ls1(block.attn.forward(block.norm1.forward(x)))
    else:
        s = x + block._attn(block.norm1.forward(x))
    s = s + block.mosa_adapter_attn(s)
    y = s + ls2(block.mlp.forward(block.norm2.forward(s)))
    want = y + block.mosa_adapter(y)
    torch.testing.assert_close(block(x), want)
    assert block.mosa_adapter_attn(s).abs().max() > 0 and block.mosa_adapter(y).abs().max() > 0


@torch.no_grad()
def test_swin_adaptformer_is_parallel_inside_the_mlp(make_model: MakeModel) -> None:
    model = mosa.inject(make_model("swin"), MethodConfig(method="mosa"))
    _trained_block(model)
    block = model.layers[0].blocks[0]
    h = torch.randn(2, 256, 24)
    want = block.mlp.forward(h) + block.mosa_adapter(h)
    torch.testing.assert_close(block.mlp(h), want)


@pytest.mark.parametrize(
    "conv_mlp",
    [
        False,
        True,
    ],
)
@torch.no_grad()
def test_convnext_adapter_reads_the_mlp_input(make_model: MakeModel, conv_mlp: bool) -> None:
    """What the adapter adds to a block's output is 0.1 * Up(GELU(Down(LN(mlp input)))) (the
    fixture's layer scale is 1, so this holds whether or not the add is inside gamma)."""
    model = make_model("convnext", conv_mlp=conv_mlp)
    plain = copy.deepcopy(model).eval()
    mosa.inject(model, MethodConfig(method="mosa"))
    _trained_block(model)
    block, ref_block = model.stages[0].blocks[0], plain.stages[0].blocks[0]
    ad = block.mosa_adapter
    assert ad.channels_first == conv_mlp
    x = torch.randn(2, 8, 8, 8)
    mlp_in = block.conv_dw(x)
    mlp_in = block.norm(mlp_in if conv_mlp else mlp_in.permute(0, 2, 3, 1))
    last = mlp_in.movedim(1, -1) if conv_mlp else mlp_in
    branch = ad.up.to_linear()(ad.act(ad.down(ad.norm(last)))) * 0.1  # channels last
    torch.testing.assert_close(block(x) - ref_block(x), branch.movedim(-1, 1), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_convnext_adapter_is_not_scaled_by_layer_scale(make_model: MakeModel) -> None:
    model = make_model("convnext", ls_init_value=1e-6)  # timm's default
    plain = copy.deepcopy(model).eval()
    mosa.inject(model, MethodConfig(method="adapter"))
    _trained_block(model)
    x = torch.randn(2, 8, 8, 8)
    block, ref_block = model.stages[0].blocks[0], plain.stages[0].blocks[0]
    contribution = block(x) - ref_block(x)  # what the adapter adds to the residual stream
    ad = block.mosa_adapter
    mlp_in = block.norm(block.conv_dw(x).permute(0, 2, 3, 1))
    want = ad(mlp_in).permute(0, 3, 1, 2)
    torch.testing.assert_close(contribution, want, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------- training


def method_cases() -> list[object]:
    cases = []
    for arch in ARCHS:
        lora_kw: dict[str, object] = {"targets": ("mlp",)} if arch == "convnext" else {}
        kws: list[dict[str, object]] = [
            {"method": "linear"},
            {"method": "full"},
            {"method": "adapter"},
            {"method": "mosa"},
            {"method": "mosa", "style": "pfeiffer", "share": "up"},
            {"method": "lora", **lora_kw},
            {"method": "mosa_lora", **lora_kw},
        ]
        if arch != "convnext":
            # shared biases: with both projections split, merging per-expert Down biases across
            # the nonlinearity is lossy (the README's method notes give the numbers)
            kws.append({"method": "mosa", "style": "houlsby", "share": "none", "bias": "shared"})
        for kw in kws:
            cases.append(pytest.param(arch, kw, id=arch + "-" + "-".join(map(str, kw.values()))))
    cases.append(pytest.param("convnext", {"method": "mosa"}, id="convnext_conv_mlp-mosa"))
    return cases


@pytest.mark.parametrize(("arch", "kw"), method_cases())
def test_few_steps_reduce_the_loss(
    make_model: MakeModel,
    train: Callable,
    evaluate: Callable,
    request: pytest.FixtureRequest,
    arch: str,
    kw: dict[str, object],
) -> None:
    extra = {"conv_mlp": True} if "conv_mlp" in request.node.callspec.id else {}
    model = mosa.inject(make_model(arch, **extra), MethodConfig(**kw))
    peft = kw["method"] not in ("linear", "full")
    before_params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert before_params
    before = evaluate(model)
    losses = train(model, 15, lr=1e-3 if kw["method"] == "full" else 1e-2)
    after = evaluate(model)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert after < 0.8 * before, (before, after, losses)
    changed = [
        n
        for n, p in model.named_parameters()
        if n in before_params and not torch.equal(p, before_params[n])
    ]
    assert len(changed) == len(before_params)  # every trainable tensor was updated
    if peft:  # including the method's own modules (not just the head)
        assert any(n.split(".")[-2].startswith("mosa_") or "mosa_" in n for n in changed)
    # and the merged (deployable) model keeps what was learnt
    if peft:
        mosa.merge(model)
        assert abs(evaluate(model) - after) < 1e-4


def test_refused_inject_leaves_parameters_trainable() -> None:
    model = torchvision.models.resnet18(num_classes=5)
    with pytest.raises(TypeError):
        mosa.inject(model, MethodConfig(method="mosa"))
    assert all(p.requires_grad for p in model.parameters())
