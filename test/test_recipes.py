"""The training recipes: every config in training/configs resolves to the loss terms, optimiser
and schedule its comments cite (the DMD3C release, BP-Net's NYU recipe, NLSPN's schedule for
SelfDC), the schedules compute those numbers, and SelfDC trains with the settings that let L_dc
reach the encoder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from training import losses as L
from training import methods
from training.config import CONFIG_DIR, load_config
from training.schedules import build_scheduler, lr_noise_factor
from training.trainer import build_optimizer

# --- what each config must resolve to (the values its YAML comments cite) ------------------------

_DMD3C_RELEASE_SCHEDULE = dict(
    name="onecycle", epochs=30, pct_start=0.1, div_factor=40.0, final_div_factor=0.1,
    momentum=[0.85, 0.90], lr_noise=0.1,
)  # fmt: skip
_NLSPN_SCHEDULE = dict(
    name="multistep", epochs=20, milestones=[10, 15], factors=[1.0, 0.2, 0.04], warmup_epochs=1.0
)
_SELFDC_TERMS = {"dc": 1.0, "seg": 0.1, "gc": 1.0, "sms": 1.0}
_SELFDC_OPTIM = dict(name="adam", lr=1e-3, weight_decay=0.0, betas=[0.9, 0.999], clip_norm=0.0)

EXPECTED = {
    "dmd3c_stage1.yaml": dict(
        terms={"l1": 1.0},
        optim=dict(name="adamw", lr=1e-3, weight_decay=0.05, clip_norm=0.1),
        schedule=dict(name="onecycle", max_steps=600000),
    ),
    "dmd3c_stage2_kitti.yaml": dict(
        terms={"mse": 1.0, "ssi_release": 1.0},
        optim=dict(name="adamw", lr=5e-4, weight_decay=0.05, clip_norm=0.1),
        schedule=_DMD3C_RELEASE_SCHEDULE,
        run=dict(ema_decay=0.9999, sync_batchnorm=True, best_metric="rmse", precision="fp32"),
        data=dict(batch_size=2, val_split="val_selection_cropped"),
        options=dict(
            crop=[256, 1216],
            crop_mode="random",
            random_crop_top=50,
            pca_jitter=0.1,
            color_jitter=0.0,
            flip=True,
        ),  # fmt: skip
        teacher=True,
    ),
    "dmd3c_stage2_kitti_wo_ssi.yaml": dict(
        terms={"mse": 1.0},
        optim=dict(name="adamw", lr=5e-4),
        schedule=_DMD3C_RELEASE_SCHEDULE,
        teacher=False,
    ),
    "dmd3c_stage2_kitti_paper.yaml": dict(
        terms={"l1": 1.0, "ssi": 1.0, "grad": 0.5},
        optim=dict(name="adamw", lr=1e-3, weight_decay=0.05, clip_norm=0.1),
        schedule=dict(name="onecycle", max_steps=300000, lr_noise=0.0),
        teacher=True,
    ),
    "dmd3c_stage2_kitti_paper_wo_ssi.yaml": dict(
        terms={"l1": 1.0},
        optim=dict(name="adamw", lr=1e-3),
        schedule=dict(name="onecycle", max_steps=300000),
        teacher=False,
    ),
    "dmd3c_stage2_nyu.yaml": dict(
        terms={"mse": 1.0, "ssi_release": 1.0},
        optim=dict(name="adamw", lr=2e-3, weight_decay=0.05, clip_norm=0.1),
        schedule={**_DMD3C_RELEASE_SCHEDULE, "epochs": 100, "momentum": [0.85, 0.95]},
        run=dict(ema_decay=0.9999, sync_batchnorm=True, best_metric="rmse"),
        data=dict(batch_size=8, val_split="val"),
        options=dict(
            scale=[1.0, 1.5],
            rotation=5.0,
            scale_depth=False,
            color_jitter=0.4,
            pad_to=[256, 320],
            nyu_samples=500,
            crop=None,
            pca_jitter=0.0,
        ),  # fmt: skip
        model=dict(dataset="nyu"),
        teacher=True,
    ),
    "selfdc_kitti.yaml": dict(
        terms=_SELFDC_TERMS,
        optim=_SELFDC_OPTIM,
        schedule=_NLSPN_SCHEDULE,
        options=dict(
            crop=[240, 1216],
            random_crop_top=100,
            scale=[1.0, 1.5],
            scale_depth=True,
            rotation=5.0,
            color_jitter=0.4,
            denoise=True,
        ),  # fmt: skip
        model=dict(encoder_init="imagenet"),
        loss_options=dict(window=8, gc_top_fraction=0.02, sms_top_fraction=0.4, gc_basis="mask"),
    ),
    "selfdc_nyu.yaml": dict(
        terms=_SELFDC_TERMS,
        optim=_SELFDC_OPTIM,
        schedule=_NLSPN_SCHEDULE,
        options=dict(scale=[1.0, 1.5], scale_depth=True, rotation=5.0, crop=None, denoise=False),
        model=dict(encoder_init="imagenet", dataset="nyu"),
    ),
    "selfdc_bag.yaml": dict(
        terms=_SELFDC_TERMS,
        optim=dict(name="adam", lr=1e-4),
        schedule=dict(name="constant", epochs=10),
    ),
}


def _configs() -> list[str]:
    return sorted(
        p.name
        for p in CONFIG_DIR.glob("*.yaml")
        if not p.name.startswith("smoke_") and p.name != "empty.yaml"
    )


def test_every_config_has_expectations():
    assert set(_configs()) == set(EXPECTED)


def _batch(method: str, b: int = 2, h: int = 32, w: int = 64) -> dict:
    g = torch.Generator().manual_seed(0)
    gt = 2 + 20 * torch.rand(b, 1, h, w, generator=g)
    keep = torch.rand(b, 1, h, w, generator=g)
    batch = {
        "rgb": torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8),
        "sparse": torch.where(keep > 0.9, gt, 0),
        "gt": torch.where(keep > 0.6, gt, 0),
        "teacher": 1.0 / gt,
        "teacher_kind": "disparity",
        "segments": torch.randint(-1, 4, (b, h, w), generator=g),
    }
    return batch


def _outputs(method: str, batch: dict):
    gt = batch["gt"].clone() + 1.0
    if method == "dmd3c":
        return [gt * (1 + 0.01 * k) for k in range(6)]
    return {"depth": gt, "seg_logits": torch.zeros(gt.shape[0], 4, *gt.shape[2:])}


def _check(obj, expected: dict, where: str):
    for key, value in expected.items():
        got = getattr(obj, key) if not isinstance(obj, dict) else obj.get(key)
        if isinstance(value, float):
            assert got == pytest.approx(value), f"{where}.{key}"
        else:
            assert got == value, f"{where}.{key}"


@pytest.mark.parametrize("name", _configs())
def test_config_resolves_to_its_recipe(name):
    cfg = load_config(CONFIG_DIR / name)
    want = EXPECTED[name]
    task = methods.make_task(cfg)
    # loss terms: the active weights, and the loss runs with the config's options
    active = {k: float(v) for k, v in cfg.loss.weights.items() if float(v) != 0.0}
    assert active == want["terms"]
    batch = _batch(cfg.loss.method)
    if not want.get("teacher", True):
        batch.pop("teacher")  # 'w/o SSI': no teacher term may ask for the maps
        assert not cfg.data.options.get("teacher_root")
    total, logged = task.loss(_outputs(cfg.loss.method, batch), batch)
    assert set(logged) == {*want["terms"], "total"}
    assert math.isfinite(total.item())
    teacher_terms = {"ssi", "grad", "ssi_release"}
    if not want.get("teacher", True):
        assert not teacher_terms & set(active)
    _check(cfg.loss.options, want.get("loss_options", {}), "loss.options")
    _check(cfg.data.options, want.get("options", {}), "data.options")
    _check(cfg.data, want.get("data", {}), "data")
    _check(cfg.run, want.get("run", {}), "run")
    _check(cfg.model, want.get("model", {}), "model")
    # optimiser and schedule, on a stand-in module (BP-Net's 90 M parameters are not needed to
    # check what the config resolves to)
    _check(cfg.optim, want["optim"], "optim")
    _check(cfg.schedule, want["schedule"], "schedule")
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = build_optimizer(module, cfg)
    assert type(opt).__name__.lower() == cfg.optim.name
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(cfg.optim.weight_decay)
    assert opt.param_groups[1]["weight_decay"] == 0.0  # norms and biases
    sched = build_scheduler(opt, cfg, total_steps=400)
    lrs = []
    for _ in range(400):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    top = cfg.optim.lr
    if cfg.schedule.name == "constant":
        assert set(lrs) == {top}
    elif cfg.schedule.name == "multistep":
        assert max(lrs) == pytest.approx(top) and lrs[0] < 0.1 * top
        assert lrs[-1] == pytest.approx(top * cfg.schedule.factors[-1])
    else:
        noise = 1 + cfg.schedule.lr_noise
        assert max(lrs) <= top * noise + 1e-12
        assert lrs[0] == pytest.approx(top / cfg.schedule.div_factor, rel=cfg.schedule.lr_noise)
        end = top / cfg.schedule.div_factor / cfg.schedule.final_div_factor
        assert lrs[-1] == pytest.approx(end, rel=cfg.schedule.lr_noise + 1e-3, abs=1e-4 * top)


# --- the schedules' numbers ----------------------------------------------------------------------


def _release_cfg(**overrides):
    return load_config(
        CONFIG_DIR / "dmd3c_stage2_kitti.yaml", [f"{k}={v}" for k, v in overrides.items()]
    )


def _trace(cfg, steps, module=None):
    module = module or nn.Linear(2, 2)
    opt = build_optimizer(module, cfg)
    sched = build_scheduler(opt, cfg, steps)
    lrs, betas = [], []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        betas.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()
    return lrs, betas, opt, sched


def test_noisy_onecycle_is_the_releases_noise_one_cycle_cos_mo():
    """configs/sched/lr/NoiseOneCycleCosMo.yaml + schedulers.py of the BP-Net/DMD3C releases:
    lr/40 -> lr at 10 % -> lr/4 (final_div 0.1), cosine; beta1 0.90 -> 0.85 -> 0.90; every
    step's rate times 1 + 0.1 U(-1, 1), a function of the step alone."""
    steps = 1000
    cfg = _release_cfg()
    lrs, betas, opt, sched = _trace(cfg, steps)
    clean, _, _, _ = _trace(_release_cfg(**{"schedule.lr_noise": 0.0}), steps)
    lr = 5e-4
    assert clean[0] == pytest.approx(lr / 40)
    assert max(clean) == pytest.approx(lr, rel=1e-4) and clean.index(max(clean)) in (99, 100)
    assert clean[-1] == pytest.approx(lr / 4, rel=1e-4)
    ratio = torch.tensor(lrs, dtype=torch.float64) / torch.tensor(clean, dtype=torch.float64)
    assert ratio.min() >= 0.9 - 1e-9 and ratio.max() <= 1.1 + 1e-9
    assert ratio.std() > 0.03  # uniform on [0.9, 1.1): std 0.058
    for step in (0, 17, 500):
        assert ratio[step].item() == pytest.approx(lr_noise_factor(step, 0.1, 0), rel=1e-9)
    assert betas[0] == pytest.approx(0.90) and min(betas) == pytest.approx(0.85, abs=1e-5)
    assert betas[-1] == pytest.approx(0.90, abs=1e-4)
    # resuming from the state_dict gives the same rates (the noise depends on the step only)
    state = sched.state_dict()
    module = nn.Linear(2, 2)
    opt2 = build_optimizer(module, cfg)
    sched2 = build_scheduler(opt2, cfg, steps)
    sched2.load_state_dict(state)
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_nlspn_multistep_schedule_with_warm_up():
    """NLSPN: iteration i of the first epoch at lr * i / (n + 1) (src/main.py:176-214); then
    x1 until epoch 10, x0.2 until 15, x0.04 after (src/config.py:195-202, utility.py:22-33)."""
    cfg = load_config(CONFIG_DIR / "selfdc_kitti.yaml")
    per_epoch = 10
    lrs, _, _, _ = _trace(cfg, 20 * per_epoch)
    lr = 1e-3
    for i in range(per_epoch):
        assert lrs[i] == pytest.approx(lr * (i + 1) / (per_epoch + 1))
    assert lrs[per_epoch : 10 * per_epoch] == pytest.approx([lr] * 9 * per_epoch)
    assert lrs[10 * per_epoch : 15 * per_epoch] == pytest.approx([0.2 * lr] * 5 * per_epoch)
    assert lrs[15 * per_epoch :] == pytest.approx([0.04 * lr] * 5 * per_epoch)


def test_schedule_settings_are_checked():
    with pytest.raises(ValueError, match="factors needs one value more"):
        _trace(load_config(CONFIG_DIR / "selfdc_kitti.yaml", ["schedule.factors=[1.0, 0.2]"]), 5)
    with pytest.raises(ValueError, match=r"momentum must be \[base, max\]"):
        _trace(_release_cfg(**{"schedule.momentum": "[0.9]"}), 5)


# --- SelfDC: the training build, the ImageNet encoder, what the node loads -----------------------


def _selfdc_cfg(*overrides: str):
    return load_config(
        CONFIG_DIR / "selfdc_kitti.yaml", ["model.encoder_init=", "model.seg_classes=0", *overrides]
    )


def _first_conv_grad_norm(net: nn.Module) -> float:
    torch.manual_seed(0)
    rgb = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    depth = 5 + 30 * torch.rand(1, 1, 64, 96)
    sparse = torch.where(torch.rand(1, 1, 64, 96) > 0.95, depth, 0)
    image = (rgb.float() / 255 - 0.45) / 0.225
    net.train()
    out = net.forward_train(image, sparse)
    loss = L.depth_consistency_loss(out["depth"], sparse)
    loss.backward()
    grads = [net.conv1_rgb[0].weight.grad, net.conv1_dep[0].weight.grad]
    return float(torch.sqrt(sum(g.square().sum() for g in grads))), float(loss)


def test_selfdc_training_build_lets_l_dc_reach_the_encoder():
    """With the release's inference settings (preserve_input) the output equals the input at
    every sparse pixel: L_dc ~ 0 and no gradient reaches the first convs. The training build
    turns it off (and legacy), as NLSPN trains."""
    task = methods.make_task(_selfdc_cfg())
    assert task.model_kwargs()["preserve_input"] is False
    assert task.model_kwargs()["legacy"] is False
    torch.manual_seed(0)
    trained = task.build_model()
    assert trained.prop_layer.preserve_input is False and trained.prop_layer.legacy is False
    grad, loss = _first_conv_grad_norm(trained)
    torch.manual_seed(0)
    release = methods.make_task(
        _selfdc_cfg("model.kwargs={preserve_input: true, legacy: true}")
    ).build_model()
    grad_release, loss_release = _first_conv_grad_norm(release)
    assert loss > 1.0 and grad > 1.0  # a real signal (metres; measured ~10 and ~100s)
    assert loss_release < 1e-3 and grad_release < 1e-2 * grad


def _torchvision_file(net: nn.Module, path: Path) -> dict:
    """A weights file in torchvision's ResNet layout, written from our own random encoder
    (layer1..4 + the stem and classifier torchvision has and NLSPN does not use)."""
    state = {}
    for ours, theirs in (("conv2.", "layer1."), ("conv3.", "layer2."), ("conv4.", "layer3."),
                         ("conv5.", "layer4.")):  # fmt: skip
        for key, value in net.state_dict().items():
            if key.startswith(ours):
                state[theirs + key[len(ours) :]] = torch.randn_like(value.float()).to(value.dtype)
    state["conv1.weight"] = torch.randn(64, 3, 7, 7)
    state["bn1.weight"] = torch.ones(64)
    state["fc.weight"] = torch.randn(1000, 512)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("model", ["selfdc", "selfdc_r18"])
def test_imagenet_encoder_init_maps_torchvision_keys(tmp_path, monkeypatch, model):
    net = methods.make_task(_selfdc_cfg(f"model.name={model}")).build_model()
    depth = 34 if model == "selfdc" else 18
    file = tmp_path / f"resnet{depth}-custom.pth"
    state = _torchvision_file(net, file)
    built = methods.make_task(_selfdc_cfg(f"model.name={model}", f"model.encoder_init={file}"))
    loaded = built.build_model().state_dict()
    assert torch.equal(loaded["conv2.0.conv1.weight"], state["layer1.0.conv1.weight"])
    assert torch.equal(loaded["conv5.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    assert torch.equal(loaded["conv3.0.downsample.0.weight"], state["layer2.0.downsample.0.weight"])
    n = sum(1 for k in loaded if k.startswith(("conv2.", "conv3.", "conv4.", "conv5.")))
    assert n == len([k for k in state if k.startswith("layer")])
    # 'imagenet' = torchvision's file name in the torch hub cache
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / methods.TORCHVISION_RESNET_FILES[depth][0]).write_bytes(file.read_bytes())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = methods.make_task(_selfdc_cfg(f"model.name={model}", "model.encoder_init=imagenet"))
    assert torch.equal(
        cached.build_model().state_dict()["conv4.1.conv2.weight"], state["layer3.1.conv2.weight"]
    )


def test_imagenet_encoder_init_says_how_to_get_the_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty_hub"))
    with pytest.raises(
        methods.EncoderInitError, match=r"resnet34-b627a593\.pth.*model\.encoder_init"
    ):
        methods.make_task(_selfdc_cfg("model.encoder_init=imagenet")).build_model()
    with pytest.raises(methods.EncoderInitError, match="not found"):
        methods.make_task(_selfdc_cfg(f"model.encoder_init={tmp_path / 'nope.pth'}")).build_model()
    wrong = tmp_path / "r18.pth"
    _torchvision_file(methods.make_task(_selfdc_cfg("model.name=selfdc_r18")).build_model(), wrong)
    with pytest.raises(methods.EncoderInitError, match="does not fit the ResNet-34"):
        methods.make_task(_selfdc_cfg(f"model.encoder_init={wrong}")).build_model()
    cfg = load_config(CONFIG_DIR / "dmd3c_stage2_kitti.yaml", ["model.encoder_init=imagenet"])
    task = methods.make_task(cfg)
    # BP-Net itself is not needed: any network without a ResNet encoder
    monkeypatch.setattr(type(task.model_spec), "build", lambda *a, **k: nn.Linear(1, 1))
    with pytest.raises(methods.EncoderInitError, match="not 'bpnet'"):
        task.build_model()


def test_exported_selfdc_weights_run_in_the_node_as_trained(tmp_path):
    """The training build (legacy off) is recorded in the exported metadata and applied when
    the node loads the file; a file without it (a released conversion) keeps the release's
    settings."""
    from depth_completion_ros.backends import make_backend
    from training.trainer import export_weights

    task = methods.make_task(_selfdc_cfg("model.name=selfdc_r18"))
    meta = task.export_metadata()
    assert json.loads(meta["model_kwargs"]) == {"legacy": False}
    net = task.build_model()
    path = export_weights(
        tmp_path / "w.safetensors", net.state_dict(), {"model": "selfdc_r18", **meta}
    )
    backend = make_backend("selfdc_r18", str(path), device="cpu")
    assert backend.net.prop_layer.legacy is False
    assert backend.net.prop_layer.preserve_input is True  # inference writes the points back
    release = methods.make_task(_selfdc_cfg("model.kwargs={legacy: true}"))
    assert json.loads(release.export_metadata()["model_kwargs"]) == {"legacy": True}
    # a file that records nothing (e.g. converted released weights): the registry's settings
    full = methods.make_task(_selfdc_cfg())
    plain = export_weights(tmp_path / "plain.safetensors", full.build_model().state_dict(), {})
    assert make_backend("selfdc", str(plain), device="cpu").net.prop_layer.legacy is True
    recorded = export_weights(
        tmp_path / "trained.safetensors", full.build_model().state_dict(), full.export_metadata()
    )
    assert make_backend("selfdc", str(recorded), device="cpu").net.prop_layer.legacy is False
