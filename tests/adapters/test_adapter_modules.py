"""Adapter and LoRA modules on their own: formulas, initialisation, folding, hook guards."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mosa import MethodConfig
from mosa.adapters.adapter import Adapter
from mosa.adapters.lora import LoRA, LoRABranch
from mosa.adapters.sparse import ExpertOptions, MoSALinear


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def fill(module: nn.Module, seed: int = 0) -> nn.Module:
    g = gen(seed)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


@pytest.mark.parametrize("method", ["adapter", "mosa"])
@pytest.mark.parametrize("style", ["adaptformer", "pfeiffer", "houlsby"])
def test_adapter_formula_and_zero_init(method: str, style: str) -> None:
    cfg = MethodConfig(method=method, style=style, bottleneck=6, dropout=0.0)
    ad = Adapter.from_config(20, cfg, gen(), route_seed=0)
    x = torch.randn(3, 7, 20)
    assert torch.count_nonzero(ad(x)) == 0  # zero Up: the adapter starts as the identity
    fill(ad).eval()
    act = {"adaptformer": F.gelu, "pfeiffer": F.relu, "houlsby": F.silu}[style]
    scale = 0.1 if style == "adaptformer" else 1.0
    h = ad.norm(x) if style != "houlsby" else x
    if style != "houlsby":
        assert isinstance(ad.norm, nn.LayerNorm)
    down_w = ad.down.merged_weight() if isinstance(ad.down, MoSALinear) else ad.down.weight
    up_w = ad.up.merged_weight() if isinstance(ad.up, MoSALinear) else ad.up.weight
    down_b = ad.down.merged_bias() if isinstance(ad.down, MoSALinear) else ad.down.bias
    up_b = ad.up.merged_bias() if isinstance(ad.up, MoSALinear) else ad.up.bias
    want = F.linear(act(F.linear(h, down_w, down_b)), up_w, up_b) * scale
    with torch.no_grad():
        torch.testing.assert_close(ad(x), want, rtol=1e-5, atol=1e-6)


def test_adapter_scale_and_dropout_come_from_config() -> None:
    ad = Adapter.from_config(8, MethodConfig(scale=0.5, dropout=0.3), gen(), 0)
    assert ad.scale == 0.5 and ad.drop.p == 0.3


def test_adapter_init_is_kaiming_down_zero_up() -> None:
    ad = Adapter.from_config(64, MethodConfig(method="adapter", bottleneck=16), gen(), 0)
    bound = 1 / 64**0.5
    w = ad.down.weight.detach()
    assert torch.count_nonzero(w) == w.numel() and float(w.abs().max()) <= bound
    assert float(w.std()) > 0.5 * bound / 3**0.5  # uniform(-b, b) has std b/sqrt(3)
    assert torch.count_nonzero(ad.down.bias) == 0
    assert torch.count_nonzero(ad.up.weight) == 0 and torch.count_nonzero(ad.up.bias) == 0


@pytest.mark.parametrize(
    ("share", "down", "up"), [("down", False, True), ("up", True, False), ("none", True, True)]
)
def test_share_decides_which_projection_is_split(share: str, down: bool, up: bool) -> None:
    ad = Adapter.from_config(12, MethodConfig(method="mosa", share=share, bottleneck=4), gen(), 0)
    assert isinstance(ad.down, MoSALinear) == down
    assert isinstance(ad.up, MoSALinear) == up
    # the split Up starts from zero and stores no initial copy; a split Down keeps its W0
    if up:
        assert ad.up.weight_init is None
    if down:
        assert ad.down.weight_init is not None
    br = LoRABranch.from_config(
        12, 10, MethodConfig(method="mosa_lora", share=share, rank=4), gen(), 0
    )
    assert isinstance(br.A, MoSALinear) == down and isinstance(br.B, MoSALinear) == up


def test_plain_adapter_and_lora_have_no_split() -> None:
    ad = Adapter.from_config(12, MethodConfig(method="adapter", share="none"), gen(), 0)
    br = LoRABranch.from_config(12, 10, MethodConfig(method="lora", share="none"), gen(), 0)
    assert not any(isinstance(m, MoSALinear) for m in (*ad.modules(), *br.modules()))


@torch.no_grad()
def test_channels_first_adapter_moves_channels() -> None:
    cfg = MethodConfig(method="mosa", dropout=0.0)
    a = fill(Adapter.from_config(8, cfg, gen(), 0, channels_first=True)).eval()
    b = fill(Adapter.from_config(8, cfg, gen(), 0, channels_first=False)).eval()
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(a(x), b(x.movedim(1, -1)).movedim(-1, 1))


def test_tap_hook_guards_against_a_changed_forward_order() -> None:
    ad = Adapter.from_config(8, MethodConfig(method="adapter"), gen(), 0)
    with pytest.raises(RuntimeError, match="tap"):
        ad.parallel_tap_hook(nn.Identity(), (torch.zeros(1, 8),), torch.zeros(1, 8))


# ---------------------------------------------------------------------------- LoRA


def test_lora_branch_scaling_and_init() -> None:
    br = LoRABranch.from_config(12, 10, MethodConfig(method="lora", rank=4, alpha=8.0), gen(), 0)
    assert br.scaling == 2.0
    assert br.A.bias is None and br.B.bias is None
    assert torch.count_nonzero(br.B.weight) == 0 and torch.count_nonzero(br.A.weight) == 48
    assert (
        LoRABranch.from_config(12, 10, MethodConfig(method="lora", rank=4), gen(), 0).scaling == 1.0
    )


@pytest.mark.parametrize("share", ["down", "up", "none"])
@pytest.mark.parametrize("method", ["lora", "mosa_lora"])
@torch.no_grad()
def test_lora_delta_weight_matches_eval_forward(method: str, share: str) -> None:
    cfg = MethodConfig(method=method, share=share, rank=3, alpha=6.0)
    br = fill(LoRABranch.from_config(12, 10, cfg, gen(), 0)).eval()
    x = torch.randn(4, 12)
    torch.testing.assert_close(br(x), x @ br.delta_weight().T, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_lora_on_fused_qkv_slices_and_fold() -> None:
    base = nn.Linear(6, 18)
    parts = {"v": slice(12, 18), "q": slice(0, 6)}  # unordered on purpose
    lora = fill(
        LoRA.from_config(base, parts, MethodConfig(method="mosa_lora", rank=2), gen(), 0)
    ).eval()
    x = torch.randn(5, 6)
    delta = lora(x)
    assert delta.shape == (5, 18)
    assert torch.count_nonzero(delta[:, 6:12]) == 0
    torch.testing.assert_close(delta[:, :6], lora.branches["q"](x))
    torch.testing.assert_close(delta[:, 12:], lora.branches["v"](x))
    want = base(x) + delta
    lora.fold_into(base)
    torch.testing.assert_close(base(x), want, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_lora_whole_layer() -> None:
    base = nn.Linear(6, 4)
    lora = fill(
        LoRA.from_config(base, {"w": slice(0, 4)}, MethodConfig(method="lora", rank=2), gen(), 0)
    )
    x = torch.randn(3, 6)
    torch.testing.assert_close(lora(x), lora.branches["w"](x))


def test_layers_build_from_plain_keywords_as_from_a_config() -> None:
    cfg = MethodConfig(method="mosa", share="none", bottleneck=4, num_experts=3, bias="expert")
    experts = ExpertOptions(num_experts=3, expert_bias=True)
    plain = Adapter(
        12, bottleneck=4, scale=0.1, dropout=0.1, down_experts=experts, up_experts=experts,
        generator=gen(),
    )  # fmt: skip
    built = Adapter.from_config(12, cfg, gen(), 0)
    a, b = plain.state_dict(), built.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    branch = LoRABranch(12, 10, rank=4, scaling=1.0, generator=gen())
    assert isinstance(branch.A, torch.nn.Linear) and branch.A.out_features == 4
