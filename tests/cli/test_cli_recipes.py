"""Every packaged recipe validates, and the published recipes say what SPEC section 2 says."""

from __future__ import annotations

import pytest

from mosa.config import method_names
from mosa.data.fgvc import FGVC_SETS
from mosa.data.vtab import VTAB_TASKS
from mosa.engine.config import TrainConfig
from mosa.recipes import RECIPES_DIR, list_recipes, load_config, recipe_description

ALL = list_recipes(include_private=True)
MIXINS = [n for n in ALL if n.startswith("methods/")]
RUNNABLE = [n for n in list_recipes() if not n.startswith("methods/")]
PUBLISHED = ("vtab", "fgvc", "general", "multitask")


@pytest.mark.parametrize("name", [n for n in ALL if not n.startswith("methods/")])
def test_every_recipe_validates(name):
    cfg = load_config(name)
    assert isinstance(cfg, TrainConfig)
    assert "{" not in cfg.out  # placeholders are filled


@pytest.mark.parametrize("mixin", MIXINS)
def test_every_method_mixin_validates_on_top_of_a_task(mixin):
    cfg = load_config(["vtab/dtd", mixin])
    assert cfg.method.method == mixin.split("/")[1].removesuffix("_paper")
    assert cfg.data[0].task == "dtd"


def test_mixins_cover_every_method_and_recipes_have_descriptions():
    assert {m.split("/")[1].removesuffix("_paper") for m in MIXINS} == set(method_names())
    for name in list_recipes():
        assert recipe_description(name), f"{name} has no description"


def test_vtab_recipes_cover_the_19_tasks_with_the_published_settings():
    names = {n.split("/")[1] for n in RUNNABLE if n.startswith("vtab/")}
    assert names == set(VTAB_TASKS)
    for task in VTAB_TASKS:
        cfg = load_config(f"vtab/{task}")
        d = cfg.data[0]
        assert (d.kind, d.task, d.train_split, d.img_size) == ("vtab", task, "train800val200", 224)
        assert cfg.backbone == "vit_base_patch16_224.orig_in21k"
        assert cfg.optim.lr == pytest.approx(5e-3)
        assert (cfg.optim.epochs, cfg.optim.warmup_epochs, cfg.optim.batch_size) == (100, 10, 128)
        assert cfg.optim.weight_decay == pytest.approx(0.01)
        m = cfg.method
        assert (m.method, m.bottleneck, m.num_experts, m.share, m.merge) == (
            "mosa",
            16,
            4,
            "down",
            "mean",
        )
        assert cfg.seed == 3407 and cfg.consistency_weight == 1.0
        assert d.mean == pytest.approx((0.485, 0.456, 0.406))


def test_fgvc_and_general_recipes_have_the_published_learning_rates():
    want = {
        "fgvc/cub": 1e-3,
        "fgvc/nabirds": 5e-4,
        "fgvc/oxford_flowers": 5e-3,
        "fgvc/stanford_dogs": 5e-4,
        "fgvc/stanford_cars": 5e-3,
        "general/cifar100": 5e-4,
        "general/food101": 5e-4,
        "general/aircraft": 5e-3,
    }
    assert {n for n in RUNNABLE if n.startswith(("fgvc/", "general/"))} == set(want)
    assert {n.split("/")[1] for n in want if n.startswith("fgvc/")} == set(FGVC_SETS)
    for name, lr in want.items():
        cfg = load_config(name)
        assert cfg.optim.lr == pytest.approx(lr), name
        assert cfg.method.bottleneck == 64, name
        assert cfg.data[0].img_size == 224
    cars = load_config("fgvc/stanford_cars")
    assert (cars.method.num_experts, cars.method.share) == (2, "up")
    # the reference's deep term: 0.01 * (sum of 6 blocks' MSE) / 6, inside the weight 1.0
    assert cars.consistency_weight * cars.optim.deep_consistency == pytest.approx(0.01)
    assert cars.optim.deep_consistency_blocks == 6
    cub = load_config("fgvc/cub")
    assert (cub.method.num_experts, cub.method.share, cub.optim.deep_consistency) == (4, "down", 0)
    assert load_config("general/food101").data[0].kind == "food101"


@pytest.mark.parametrize("name", [n for n in RUNNABLE if n.split("/")[0] in PUBLISHED])
def test_published_recipes_train_the_paper_configuration(name):
    cfg = load_config(name)
    paper = load_config(["offline/digits", "methods/mosa_paper"])
    assert cfg.method.method == "mosa" and cfg.method.bias == "expert"
    assert cfg.method.routing == "batch" and cfg.method.merge == "mean"
    assert (cfg.optim.expert_updates, cfg.optim.eps) == ("reference", 1e-6)
    assert cfg.consistency_weight == paper.consistency_weight == 1.0
    if name != "fgvc/stanford_cars":
        assert cfg.method.num_experts == 4 or name.startswith("multitask/")
        assert cfg.optim.deep_consistency == 0
    lora = load_config([name, "methods/mosa_lora_paper"])
    assert (lora.method.method, lora.optim.expert_updates) == ("mosa_lora", "reference")


@pytest.mark.parametrize("name", list_recipes())
def test_a_one_epoch_run_of_every_recipe_starts(name, caplog):
    """optim.epochs=1 is accepted everywhere: a longer warm-up is clamped, with a notice."""
    cfg = load_config(name, ["optim.epochs=1"])
    assert cfg.optim.epochs == 1 and cfg.optim.warmup_epochs <= 1
    recipe = load_config(name)
    if recipe.optim.warmup_epochs > 1:
        assert "warm-up clamped to 1" in caplog.text


def test_offline_recipes_name_real_prepared_tasks():
    prepare = pytest.importorskip("mosa.data.prepare")
    names = {n.split("/")[1] for n in RUNNABLE if n.startswith("offline/")} - {"multitask"}
    assert names == set(prepare.PREPARE_TASKS)
    for d in load_config("offline/multitask").data:
        assert d.task in prepare.PREPARE_TASKS


def test_recipe_files_are_package_data_yaml():
    files = list(RECIPES_DIR.rglob("*.yaml"))
    assert len(files) >= 19 + 5 + 3 + len(method_names())
    assert all(f.suffix == ".yaml" for f in files)
