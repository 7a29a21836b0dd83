"""MethodConfig: defaults from the paper's recipe, validation naming the field, JSON round trip."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle

import pytest

from mosa import ConfigError, MethodConfig
from mosa import config as config_module
from mosa.config import (
    LORA_FIELDS,
    KeyChecked,
    MethodSpec,
    method_names,
    method_spec,
    register_method,
)
from mosa.engine.config import DataConfig, EvalConfig, OptimConfig, TrainConfig
from mosa.methods import LORA


def test_defaults_follow_the_published_recipe() -> None:
    c = MethodConfig()
    assert c.method == "mosa" and c.style == "adaptformer"
    assert c.num_experts == 4 and c.share == "down" and c.merge == "mean"
    assert c.granularity == "element" and c.routing == "batch"
    assert c.bottleneck == 16 and c.adapter_dropout == 0.1 and c.seed == 3407
    assert MethodConfig(style="houlsby").adapter_dropout == 0.0  # reference: no dropout
    assert c.rank == 16 and c.targets == ("q", "v")
    assert c.adapter_scale == 0.1
    assert MethodConfig(style="pfeiffer").adapter_scale == 1.0
    assert MethodConfig(style="houlsby").adapter_scale == 1.0
    assert MethodConfig(scale=0.25).adapter_scale == 0.25
    assert c.lora_scaling == 1.0 and MethodConfig(rank=8, alpha=16).lora_scaling == 2.0


@pytest.mark.parametrize(
    ("method", "share", "down", "up"),
    [
        ("mosa", "down", False, True),
        ("mosa", "up", True, False),
        ("mosa", "none", True, True),
        ("mosa_lora", "down", False, True),
        ("adapter", "none", False, False),
        ("lora", "none", False, False),
        ("linear", "down", False, False),
    ],
)
def test_split_flags(method: str, share: str, down: bool, up: bool) -> None:
    c = MethodConfig(method=method, share=share)
    assert (c.split_down, c.split_up) == (down, up)
    assert c.is_mosa == (method in ("mosa", "mosa_lora"))
    assert c.uses_adapter == (method in ("adapter", "mosa"))
    assert c.uses_lora == (method in ("lora", "mosa_lora"))


INVALID = [
    ({"method": "moza"}, "method"),
    ({"method": "prompt"}, "method"),
    ({"style": "parallel"}, "style"),
    ({"share": "both"}, "share"),
    ({"granularity": "block"}, "granularity"),
    ({"merge": "max"}, "merge"),
    ({"routing": "token"}, "routing"),
    ({"targets": ("q", "x")}, "targets"),
    ({"targets": "q,qkv"}, "targets"),
    ({"targets": ()}, "targets"),
    ({"targets": ("q", "q")}, "targets"),
    ({"bottleneck": 0}, "bottleneck"),
    ({"bottleneck": -3}, "bottleneck"),
    ({"bottleneck": 8.0}, "bottleneck"),
    ({"bottleneck": "16"}, "bottleneck"),
    ({"rank": 0}, "rank"),
    ({"rank": True}, "rank"),
    ({"num_experts": 1}, "num_experts"),
    ({"num_experts": 0}, "num_experts"),
    ({"num_experts": 256}, "num_experts"),
    ({"seed": 1.5}, "seed"),
    ({"dropout": 1.0}, "dropout"),
    ({"dropout": -0.1}, "dropout"),
    ({"scale": 0.0}, "scale"),
    ({"scale": -1.0}, "scale"),
    ({"alpha": 0}, "alpha"),
]


@pytest.mark.parametrize(
    ("kwargs", "field"), INVALID, ids=[f"{f}={list(k.values())[0]!r}" for k, f in INVALID]
)
def test_invalid_value_names_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        MethodConfig(**kwargs)
    with pytest.raises(ConfigError, match=field):
        MethodConfig.from_dict(kwargs)


@pytest.mark.parametrize(
    ("typo", "hint"),
    [("bottlneck", "bottleneck"), ("num_expert", "num_experts"), ("shar", "share")],
)
def test_unknown_key_names_it_and_suggests(typo: str, hint: str) -> None:
    for build in (
        lambda: MethodConfig(**{typo: 1}),
        lambda: MethodConfig.from_dict({typo: 1}),
        lambda: MethodConfig.from_json(json.dumps({typo: 1})),
    ):
        with pytest.raises(ConfigError) as info:
            build()
        assert repr(typo) in str(info.value) and repr(hint) in str(info.value)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        MethodConfig(share="diagonal")


def test_choice_error_suggests_the_close_value() -> None:
    with pytest.raises(ConfigError, match="'mosa_lora'"):
        MethodConfig(method="mosa_lroa")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"method": "mosa_lora", "rank": 4, "alpha": 8.0, "targets": ("q", "k", "v", "o", "mlp")},
        {"method": "adapter", "style": "houlsby", "scale": 0.5, "dropout": 0.0},
        {
            "share": "none",
            "granularity": "column",
            "merge": "sum",
            "routing": "sample",
            "num_experts": 7,
            "seed": 1,
        },
    ],
)
def test_json_round_trip(kwargs: dict[str, object]) -> None:
    c = MethodConfig(**kwargs)
    text = c.to_json()
    assert json.loads(text)["targets"] == list(c.targets)  # plain JSON types
    back = MethodConfig.from_json(text)
    assert back == c
    assert isinstance(back.targets, tuple)
    assert MethodConfig.from_dict(c.to_dict()) == c
    assert back.to_json() == text


def test_targets_accept_a_comma_separated_string() -> None:
    assert MethodConfig(targets="q, v,o").targets == ("q", "v", "o")
    assert MethodConfig(targets=["k"]).targets == ("k",)


def test_unused_options_are_still_validated() -> None:
    # one config can be swept over methods, so a LoRA option is checked for an adapter too
    with pytest.raises(ConfigError, match="rank"):
        MethodConfig(method="adapter", rank=0)


def test_copy_pickle_and_replace() -> None:
    c = MethodConfig(method="mosa_lora", share="up", rank=4)
    assert copy.deepcopy(c) == c
    assert pickle.loads(pickle.dumps(c)) == c
    d = dataclasses.replace(c, rank=8)
    assert d.rank == 8 and d.share == "up"
    with pytest.raises(ConfigError, match="rank"):
        dataclasses.replace(c, rank=0)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Methods registered in a test are gone after it."""
    monkeypatch.setattr(config_module, "_METHODS", dict(config_module._METHODS))


@pytest.mark.usefixtures("registry")
def test_a_registered_method_is_a_valid_name_and_injects_its_parts() -> None:
    import timm
    import torch

    import mosa

    register_method(MethodSpec("my_lora", (LORA,), LORA_FIELDS))
    cfg = MethodConfig(method="my_lora", rank=2)
    assert cfg.uses_lora and not cfg.is_mosa and not cfg.uses_adapter
    assert "my_lora" in method_names()

    def tiny() -> torch.nn.Module:
        torch.manual_seed(0)
        kw = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=3)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw)

    mine = mosa.inject(tiny(), cfg).state_dict()
    lora = mosa.inject(tiny(), MethodConfig(method="lora", rank=2)).state_dict()
    assert mine.keys() == lora.keys()
    assert all(torch.equal(mine[k], lora[k]) for k in mine)
    with pytest.raises(ConfigError, match="my_lor"):
        MethodConfig(method="my_lor")


@pytest.mark.usefixtures("registry")
def test_a_method_naming_an_unknown_field_is_refused() -> None:
    with pytest.raises(ConfigError, match="'rnk'.*'rank'"):
        register_method(MethodSpec("bad_lora", (LORA,), ("rnk",)))
    assert "bad_lora" not in method_names()


def test_the_built_in_methods_name_the_fields_they_read() -> None:
    assert method_names()[:6] == ("linear", "full", "adapter", "lora", "mosa", "mosa_lora")
    assert "rank" not in method_spec("adapter").fields
    assert "bottleneck" not in method_spec("lora").fields
    assert "num_experts" in method_spec("mosa_lora").fields
    assert method_spec("linear").fields == () and method_spec("linear").parts == ()


def test_every_config_dataclass_checks_its_keys() -> None:
    for cls in (MethodConfig, DataConfig, OptimConfig, EvalConfig, TrainConfig):
        assert issubclass(cls, KeyChecked)
        with pytest.raises(ConfigError, match=f"unknown {cls.__name__} option 'sed'"):
            cls(sed=1)
