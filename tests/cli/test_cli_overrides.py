"""YAML config loading: base inheritance, dotted overrides, type coercion, typo errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mosa.config import ConfigError
from mosa.recipes import apply_overrides, load_config, load_tree, parse_value


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_parse_value_reads_yaml_scalars_and_exponent_floats():
    assert parse_value("1e-3") == pytest.approx(0.001)
    assert isinstance(parse_value("5E4"), float)
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("true") is True
    assert parse_value("null") is None
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("lora") == "lora"


def test_nested_overrides_and_type_coercion():
    cfg = load_config(
        "offline/digits",
        ["optim.lr=1e-3", "optim.epochs=3", "method.method=lora", "seed=1", "optim.grad_clip=1"],
    )
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.epochs == 3 and isinstance(cfg.optim.epochs, int)
    assert cfg.optim.grad_clip == 1.0 and isinstance(cfg.optim.grad_clip, float)
    assert cfg.method.method == "lora"
    assert cfg.seed == 1


def test_method_shortcut_and_string_fields_keep_text():
    cfg = load_config("offline/digits", ["method=adapter", "data.task=2017", "data.val_split=null"])
    assert cfg.method.method == "adapter"
    assert cfg.data[0].task == "2017"  # a str field never becomes an int
    assert cfg.data[0].val_split is None


def test_yaml_list_values_and_free_mappings():
    cfg = load_config(
        "offline/digits",
        ["data.mean=[0.5, 0.4, 0.3]", "method.targets=q,v,o", "backbone_kwargs.drop_path_rate=0.1"],
    )
    assert cfg.data[0].mean == (0.5, 0.4, 0.3)
    assert cfg.method.targets == ("q", "v", "o")
    assert cfg.backbone_kwargs == {"drop_path_rate": 0.1}


def test_list_index_overrides_edit_and_append_entries():
    cfg = load_config("offline/multitask", ["data.1.task=fmnist_count", "data.0.shots=4"])
    assert [d.task for d in cfg.data] == ["digits", "fmnist_count", "fmnist_loc"]
    assert cfg.data[0].shots == 4 and cfg.data[1].shots is None
    # one past the end adds an entry that copies the last one (same kind/root/splits)
    cfg = load_config("offline/digits", ["data.root=/x", "data.1.task=fmnist_rot"])
    assert [(d.task, d.root) for d in cfg.data] == [("digits", "/x"), ("fmnist_rot", "/x")]


def test_list_index_errors():
    with pytest.raises(ConfigError, match=r"data\.5: index out of range"):
        load_config("offline/digits", ["data.5.task=x"])
    with pytest.raises(ConfigError, match=r"data has 3 entries.*data\.0\.task"):
        load_config("offline/multitask", ["data.task=x"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("optim.lrr=1", r"unknown key 'optim\.lrr' \(did you mean 'optim\.lr'\?\)"),
        ("methd.method=lora", r"unknown key 'methd' \(did you mean 'method'\?\)"),
        ("data.tsk=dtd", r"unknown key 'data\.tsk' \(did you mean 'data\.task'\?\)"),
        ("data.0.tsk=dtd", r"unknown key 'data\.0\.tsk' \(did you mean 'data\.0\.task'\?\)"),
        ("optim.epochs=many", r"optim\.epochs must be an integer"),
        ("optim.lr=fast", r"optim\.lr must be a number"),
        ("pretrained=maybe", r"pretrained must be true or false"),
        ("method=lroa", r"method='lroa' is not one of .*did you mean 'lora'"),
        ("optim.lr", r"not key=value"),
        ("base=x.yaml", r"only be set inside a recipe file"),
    ],
)
def test_bad_overrides_raise_config_error(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("offline/digits", [override])


def test_override_apply_does_not_mutate_input():
    tree = {"optim": {"lr": 0.1}}
    out = apply_overrides(tree, ["optim.lr=0.2"])
    assert tree == {"optim": {"lr": 0.1}} and out["optim"]["lr"] == 0.2


def test_base_inheritance_relative_paths_and_lists(tmp_path):
    write(
        tmp_path / "bases/common.yaml",
        "optim: {lr: 1.0e-2, epochs: 7, warmup_epochs: 1}\nseed: 5\n",
    )
    write(tmp_path / "bases/method.yaml", "method: {method: lora, rank: 4}\n")
    child = write(
        tmp_path / "exp/child.yaml",
        "base: [../bases/common.yaml, ../bases/method.yaml]\noptim: {lr: 2e-3}\n"
        "data: {task: fmnist_rot}\ndescription: hi\n",
    )
    cfg = load_config(str(child))
    assert cfg.optim.lr == pytest.approx(2e-3)  # child wins, 2e-3 read as a float
    assert cfg.optim.epochs == 7  # merged key by key from the base
    assert (cfg.seed, cfg.method.method, cfg.method.rank) == (5, "lora", 4)
    assert cfg.data[0].task == "fmnist_rot"


def test_base_may_name_a_packaged_recipe(tmp_path):
    child = write(tmp_path / "mine.yaml", "base: vtab/dtd\noptim: {epochs: 3, warmup_epochs: 1}\n")
    cfg = load_config(str(child))
    assert cfg.backbone == "vit_base_patch16_224.orig_in21k"
    assert (cfg.data[0].task, cfg.optim.epochs, cfg.optim.lr) == ("dtd", 3, 0.005)


def test_base_cycle_and_typo_in_file_are_reported_with_the_file(tmp_path):
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_tree(str(tmp_path / "a.yaml"))
    bad = write(tmp_path / "bad.yaml", "optim:\n  lr: 1.0e-3\n  wieght_decay: 0.1\n")
    with pytest.raises(
        ConfigError, match=r"bad\.yaml.*'optim\.wieght_decay'.*'optim\.weight_decay'"
    ):
        load_config(str(bad))


def test_later_configs_merge_over_earlier_ones():
    cfg = load_config(["fgvc/stanford_cars", "methods/lora"])
    assert cfg.method.method == "lora"
    assert cfg.method.num_experts == 2 and cfg.method.bottleneck == 64  # task settings kept
    assert cfg.optim.deep_consistency == 0.0  # baselines drop MoSA's deep consistency


def test_out_placeholders_and_explicit_out():
    cfg = load_config("vtab/dtd", ["method=lora", "seed=2"])
    assert cfg.out == "runs/vtab/dtd/lora/seed2"
    cfg = load_config("vtab/dtd", [], out="x/{task}-{lr}")
    assert cfg.out == "x/dtd-0.005"
    with pytest.raises(ConfigError, match="placeholder"):
        load_config("vtab/dtd", [], out="x/{nope}")


def test_default_recipe_is_mosa_on_fmnist_digits():
    cfg = load_config(None)
    assert (cfg.backbone, cfg.method.method, cfg.data[0].task) == (
        "mosa_vit_fmnist",
        "mosa",
        "digits",
    )
    assert cfg.data[0].root == "data/vtab"
    assert 10 <= cfg.optim.epochs <= 15


def test_mapping_values_merge_into_the_existing_mapping():
    cfg = load_config("fgvc/stanford_cars", ["method={method: lora, rank: 4}", "data.0={shots: 2}"])
    assert (cfg.method.method, cfg.method.rank) == ("lora", 4)
    assert (cfg.method.bottleneck, cfg.method.num_experts) == (64, 2)  # kept from the recipe
    assert (cfg.data[0].task, cfg.data[0].shots) == ("stanford_cars", 2)
