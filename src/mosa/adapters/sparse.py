"""The MoSA split projection: N sparse experts stored as ONE trainable tensor and an owner index."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mosa.adapters.partition import make_partition


@dataclass(frozen=True)
class ExpertOptions:
    """How a projection is split into sparse experts (the keyword arguments of MoSALinear
    besides its shape, init and seeds)."""

    num_experts: int = 4
    granularity: str = "element"
    merge: str = "mean"
    routing: str = "batch"
    expert_bias: bool = False


class MoSALinear(nn.Module):
    """A linear projection split into ``num_experts`` disjoint sparse experts.

    Expert ``i`` has weight ``W0`` (the initial value) everywhere except on its own entries
    ``owner == i``, where it holds the trained values ``weight``. In training, every forward
    activates one expert drawn from a seeded generator (``routing="batch"``: one pick for the
    batch; ``"sample"``: one pick per item of the leading dimension), so only that expert's
    entries receive gradient. In eval, the merged weight (``mean`` or ``sum`` of the experts) is
    used. ``W0`` is stored only when it is non-zero (a zero-initialised projection needs none),
    so the module never holds N copies.

    The bias is dense and trained every step, or, with ``expert_bias``, one bias per expert
    (shape ``(N, out)``, the reference code's layout): the picked expert's row is used and
    trained, and the merge takes their mean (or sum). ``init_scale`` (only stored with ``W0``)
    is expert ``k``'s factor on ``W0`` outside its entries: 1 until an optimizer's decoupled
    weight decay shrinks it, as it shrinks the untrained part of an N-copy expert.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        num_experts: int,
        bias: bool = True,
        expert_bias: bool = False,
        init: str = "zero",
        granularity: str = "element",
        merge: str = "mean",
        routing: str = "batch",
        generator: torch.Generator | None = None,
        route_seed: int = 0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.num_experts = num_experts
        self.merge_rule = merge
        self.routing = routing
        weight = torch.zeros(out_features, in_features)
        if init == "kaiming":
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        elif init != "zero":
            raise ValueError(f"init must be 'zero' or 'kaiming', got {init!r}")
        self.weight = nn.Parameter(weight)
        if expert_bias and not bias:
            raise ValueError("expert_bias needs bias=True")
        self.expert_bias = expert_bias
        bias_shape = (num_experts, out_features) if expert_bias else (out_features,)
        self.bias = nn.Parameter(torch.zeros(bias_shape)) if bias else None
        owner = make_partition((out_features, in_features), num_experts, granularity, generator)
        self.register_buffer("owner", owner)
        if init == "zero":
            self.weight_init: torch.Tensor | None = None
            self.init_scale: torch.Tensor | None = None
        else:
            self.register_buffer("weight_init", weight.detach().clone())
            self.register_buffer("init_scale", torch.ones(num_experts))
        self._route_gen = torch.Generator().manual_seed(int(route_seed))
        # picks drawn ahead of the next training forward (``draw_routes``): a compiled forward
        # then only reads a tensor, so the seeded generator never enters dynamo's graph
        self.routes: torch.Tensor | None = None
        self.last_expert: torch.Tensor | int | None = None
        self.drawn: set[int] = set()  # experts picked since the optimizer last looked
        # batch size of the model's current input (set by a model pre-hook in sample routing),
        # so layers that see B*k rows (Swin windows) still pick one expert per image
        self.batch_hint: int | None = None
        self.groups = 1

    # ------------------------------------------------------------------ experts
    def expert_weight(self, k: int | torch.Tensor) -> torch.Tensor:
        """The dense weight of expert ``k`` (differentiable in ``weight`` on its entries only);
        ``k`` an int or a 1-element tensor."""
        mask = self.owner == (k.view(1, 1) if isinstance(k, torch.Tensor) else k)
        if self.weight_init is None:
            return self.weight * mask
        return torch.where(mask, self.weight, self.init_scale[k] * self.weight_init)

    def expert_bias_of(self, k: int | torch.Tensor) -> torch.Tensor | None:
        """The bias expert ``k`` applies (the shared one unless biases are per expert)."""
        return self.bias[k] if self.expert_bias else self.bias

    def expert_masks(self, picks: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        """Bool masks of what experts ``picks`` own: weight entries and per-expert bias rows."""
        picks = picks.to(self.owner.device).long()
        out = {self.weight: torch.isin(self.owner.long(), picks)}
        if self.expert_bias and self.bias is not None:
            rows = torch.zeros(self.num_experts, dtype=torch.bool, device=self.bias.device)
            rows[picks.to(rows.device)] = True
            out[self.bias] = rows.unsqueeze(1).expand_as(self.bias)
        return out

    def merged_weight(self) -> torch.Tensor:
        """Mean (or sum) of the N experts: ((N-1)·W0 + Θ)/N, or (N-1)·W0 + Θ.

        With a decayed ``init_scale`` s, entry e sums Θ_e and s_k·W0_e over the N-1 experts k
        that do not own it."""
        total = self.weight
        if self.weight_init is not None:
            others = self.init_scale.sum() - self.init_scale[self.owner.long()]
            total = total + others * self.weight_init
        return total / self.num_experts if self.merge_rule == "mean" else total

    def merged_bias(self) -> torch.Tensor | None:
        """The bias of the merged projection: per-expert biases merge by the same rule."""
        if not self.expert_bias or self.bias is None:
            return self.bias
        return self.bias.mean(0) if self.merge_rule == "mean" else self.bias.sum(0)

    def check_mergeable(self) -> None:
        """``ValueError`` when the merged weight or bias holds NaN or inf."""
        for t in (self.merged_weight(), self.merged_bias()):
            if t is not None and not torch.isfinite(t).all():
                raise ValueError("the merged MoSA projection holds NaN or inf: refusing to merge")

    def merge(self) -> nn.Linear:
        """The deployable form: :meth:`to_linear`, refusing non-finite merged values."""
        self.check_mergeable()
        return self.to_linear()

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the merged weight (the deployable form)."""
        lin = torch.nn.utils.skip_init(
            nn.Linear,
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            lin.weight.copy_(self.merged_weight())
            if self.bias is not None:
                lin.bias.copy_(self.merged_bias())
        lin.weight.requires_grad_(self.weight.requires_grad)
        if lin.bias is not None and self.bias is not None:
            lin.bias.requires_grad_(self.bias.requires_grad)
        return lin

    # ------------------------------------------------------------------ routing state
    def get_rng_state(self) -> torch.Tensor:
        return self._route_gen.get_state()

    def set_rng_state(self, state: torch.Tensor) -> None:
        self._route_gen.set_state(state)

    def draw(self, n: int) -> torch.Tensor:
        """``n`` expert picks from the routing generator, recorded nowhere (see
        :meth:`draw_picks` for the picks of a forward)."""
        return torch.randint(self.num_experts, (n,), generator=self._route_gen)

    def draw_picks(self, images: int) -> torch.Tensor:
        """Draw (on the CPU) the picks of the next training forward over ``images`` images,
        in the order the forward itself would draw them (``routing="batch"``: one per routing
        group; ``"sample"``: one per image), and record them for the optimizer."""
        g = self.groups
        if self.routing == "sample" and images % g:
            raise ValueError(f"routing groups={g} need a batch divisible by {g}, got {images}")
        n = 1 if self.routing == "batch" else images // g
        picks = torch.cat([self.draw(n) for _ in range(g)])
        self.last_expert = int(picks) if self.routing == "batch" and g == 1 else picks
        self.drawn.update(picks.tolist())
        return picks

    def draw_routes(self, images: int) -> torch.Tensor:
        """:meth:`draw_picks`, kept (on this module's device) for the next training forward.
        Call it outside a compiled region: the forward then runs without a graph break.
        Sample routing drawn ahead needs a forward whose rows are the ``images`` images (or
        their windows, Swin): other row counts raise."""
        picks = self.draw_picks(images)
        self.routes = picks.to(self.owner.device)
        return picks

    def train(self, mode: bool = True) -> MoSALinear:
        if not mode:
            self.routes = None  # picks drawn for a training forward that never ran
        return super().train(mode)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, self.merged_weight(), self.merged_bias())
        g = self.groups
        if g > 1 and (x.dim() < 2 or x.shape[0] % g):
            raise ValueError(
                f"routing groups={g} need a leading dimension divisible by {g}, got input of "
                f"shape {tuple(x.shape)}"
            )
        batch_routed = self.routing == "batch" or x.dim() < 2
        if self.routes is None:
            self.draw_routes(1 if batch_routed else self._images(x.shape[0]))
        picks, self.routes = self.routes, None
        if batch_routed and g == 1:
            if x.dim() < 2 and picks.shape[0] != 1:
                raise ValueError("sample routing drawn ahead needs inputs with a batch dimension")
            k = picks[:1]  # a 1-element tensor: indexing with it stays in the graph
            weight = self.expert_weight(k)
            bias = self.expert_bias_of(k)  # expert_bias implies a bias
            return F.linear(x, weight, bias[0] if self.expert_bias else bias)
        if batch_routed:
            w = self._expert_stack(picks)  # (g, out, in)
            flat = x.reshape(g, -1, x.shape[-1])
        else:
            if picks.shape[0] != self._images(x.shape[0]):
                raise ValueError(
                    f"routes were drawn for {picks.shape[0]} images, but this forward has "
                    f"{self._images(x.shape[0])}: call draw_routes with its batch size"
                )
            # timm's window partition keeps windows of one image contiguous (batch-major)
            picks = picks.repeat_interleave(x.shape[0] // picks.shape[0])
            w = self._expert_stack(picks)  # (rows, out, in)
            flat = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.bias is None:
            out = torch.bmm(flat, w.transpose(1, 2))
        else:  # the bias fused into the batched matmul (docs/method_notes.md)
            bias = self.bias[picks].unsqueeze(1) if self.expert_bias else self.bias
            out = torch.baddbmm(bias, flat, w.transpose(1, 2))
        return out.reshape(*x.shape[:-1], self.out_features)

    def _images(self, rows: int) -> int:
        """How many images ``rows`` leading rows hold (Swin layers see windows of images)."""
        b = self.batch_hint
        return b if b and rows != b and rows % b == 0 else rows

    def _expert_stack(self, picks: torch.Tensor) -> torch.Tensor:
        """The dense weights of experts ``picks``, stacked: ``(len(picks), out, in)``."""
        picks = picks.to(self.owner.device)
        masks = self.owner.unsqueeze(0) == picks.view(-1, 1, 1)
        if self.weight_init is None:
            init = self.weight.new_zeros(())
        else:
            init = self.init_scale[picks].view(-1, 1, 1) * self.weight_init
        return torch.where(masks, self.weight.unsqueeze(0), init)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"num_experts={self.num_experts}, merge={self.merge_rule}, routing={self.routing}, "
            f"expert_bias={self.expert_bias}, stores_init={self.weight_init is not None}"
        )
