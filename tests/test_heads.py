"""Task heads on a timm model: one per task or one joint head, named in the checkpoint."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

import mosa
from mosa.heads import (
    HEADS,
    JOINT_HEAD,
    TaskView,
    attach_task_heads,
    has_task_heads,
    head_parameters,
    is_joint,
    label_offset,
    task_classes,
    task_logits,
    task_names,
)

MakeModel = Callable[..., nn.Module]


def _injected(make_model: MakeModel) -> nn.Module:
    return mosa.inject(make_model("vit"), mosa.MethodConfig(method="adapter", bottleneck=4))


def test_separate_heads_give_each_task_its_own_classes(
    make_model: MakeModel, images: torch.Tensor
) -> None:
    model = _injected(make_model)
    assert not has_task_heads(model) and task_names(model) == []
    attach_task_heads(model, {"a": 3, "b": 2})
    assert has_task_heads(model) and not is_joint(model)
    assert task_names(model) == ["a", "b"]
    assert [task_classes(model, t) for t in "ab"] == [3, 2]
    assert [label_offset(model, t) for t in "ab"] == [0, 0]
    dim = model.num_features
    assert head_parameters(model) == (dim + 1) * 5
    assert all(p.requires_grad for p in getattr(model, HEADS).parameters())
    keys = mosa.model.adapter_state_dict(model)
    assert {f"{HEADS}.a.weight", f"{HEADS}.b.bias"} <= keys.keys()
    model.eval()
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(images), pre_logits=True)
        torch.testing.assert_close(
            task_logits(model, images, "b"), getattr(model, HEADS)["b"](feats)
        )
        assert torch.equal(TaskView(model, "a")(images), task_logits(model, images, "a"))


def test_a_joint_head_slices_the_union_of_classes(
    make_model: MakeModel, images: torch.Tensor
) -> None:
    model = _injected(make_model)
    attach_task_heads(model, {"a": 3, "b": 2}, joint=True)
    assert is_joint(model) and task_names(model) == ["a", "b"]
    assert [label_offset(model, t) for t in "ab"] == [0, 3]
    assert getattr(model, JOINT_HEAD).out_features == 5
    view = TaskView(model, "b").eval()
    assert view.joint and view.num_classes == 2 and view.label_offset == 3
    with torch.no_grad():
        union = view.union_logits(images)
        assert union.shape[1] == 5
        assert torch.equal(view(images), union[:, 3:5])


def test_head_errors_name_the_problem(make_model: MakeModel) -> None:
    model = _injected(make_model)
    with pytest.raises(ValueError, match="no task heads"):
        task_classes(model, "a")
    with pytest.raises(ValueError, match="contain '.'"):
        attach_task_heads(model, {"a.b": 2})
    with pytest.raises(ValueError, match="at least one class"):
        attach_task_heads(model, {"a": 0})
    attach_task_heads(model, {"digits": 10})
    with pytest.raises(KeyError, match="did you mean 'digits'"):
        task_classes(model, "digit")
    with pytest.raises(ValueError, match="already has task heads"):
        attach_task_heads(model, {"b": 2})
    with pytest.raises(ValueError, match="joint head"):
        TaskView(model, "digits").union_logits(torch.zeros(1, 3, 32, 32))
