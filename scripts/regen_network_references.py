"""Check the project's networks against the authors' released code, then pin their outputs.

The only way test/data/network_references.npz is written. It first runs each released model
definition beside the project's model, with the same seeded random weights, on the same crop
of the real KITTI frame, in float64, and refuses to write anything if they differ by more than
``--max-rel-diff``; it prints what it compared and the measured difference.

The authors' code is read from local checkouts given on the command line (never committed
here). Their custom CUDA ops are replaced at run time, inside this process only, by pure
PyTorch written from their kernels in this file (deliberately not the project's sparse_ops /
deformable, so the check covers those too), and the packages they import that this
environment lacks (einops, timm, torchvision) by stand-ins for exactly what they use:

* BpOps.Dist: ``dist_kernel4``: valid pixels scanned in order, each inserted before the first
  slot whose squared distance is >= its own; missing slots repeat the previous one.
* BpOps.Conv2dLocal_F: the per-pixel K x K filter, zero outside the image.
* DCN.modulated_deform_conv_forward: DCNv2's im2col bilinear read (zero outside), times the
  mask, then the convolution with the given weight and bias.
* einops Rearrange('b (c h2 w2) h w -> b c (h h2) (w w2)'), timm DropPath (identity in eval),
  torchvision resnet18/34 (layer1-4 as torchvision defines them).

    .venv/bin/python scripts/regen_network_references.py \
        --bpnet-release /path/to/BP-Net --nlspn-release /path/to/NLSPN_ECCV20 [--check-only]

selfdc_r18 has no release; its reference is written after selfdc (the same blocks) passed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import math
import sys
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = REPO.parent / "shared" / "data"
OUT = REPO / "test" / "data" / "network_references.npz"
DRIVE = "2011_09_26_drive_0001_sync"
FRAME_ID = 5
#: the crop: rows/columns of the full 375 x 1242 KITTI image (inside the 352 x 1216
#: depth-completion crop, where the LiDAR has returns; sides multiples of 32 for BP-Net)
TOP, LEFT, HEIGHT, WIDTH = 199, 573, 64, 96
SEED = 20261127
MAX_REL_DIFF = 1e-10


# ---------------------------------------------------------------------------------------------
# inputs and weights (the tests import these two functions)


def reference_inputs(rgb: np.ndarray, sparse: np.ndarray, K: np.ndarray) -> dict[str, np.ndarray]:
    """The crop the references use, from the full frame: RGB uint8, sparse depth (float64
    metres, 0 = none), K shifted to the crop (float64)."""
    k = np.asarray(K, dtype=np.float64).copy()
    k[0, 2] -= LEFT
    k[1, 2] -= TOP
    return {
        "rgb": np.ascontiguousarray(rgb[TOP : TOP + HEIGHT, LEFT : LEFT + WIDTH]),
        "sparse": sparse[TOP : TOP + HEIGHT, LEFT : LEFT + WIDTH].astype(np.float64),
        "K": k,
    }


def seeded_state_dict(model: nn.Module, seed: int = SEED) -> dict[str, torch.Tensor]:
    """Random float64 weights for every entry of ``model.state_dict()``, in key order, from one
    seeded torch generator: convs He-uniform, biases and BN shifts small, BN gains and running
    statistics near 1 / 0 (so BN is not the identity). NLSPN's frozen all-ones kernels, zero
    bias and gamma keep their values (they are constants of the release)."""
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        leaf = name.rsplit(".", 1)[-1]
        if not t.is_floating_point() or name in _KEEP:
            out[name] = (
                t.detach().clone().to("cpu", torch.float64 if t.is_floating_point() else t.dtype)
            )
            continue
        u = torch.rand(tuple(t.shape), generator=g, dtype=torch.float64)
        bn = name[: -len(leaf)] + "running_mean" in sd
        if bn and leaf == "running_var":
            v = 0.5 + u
        elif bn and leaf == "weight":
            # the BN that closes a residual branch gets a small gain, so that 30-odd residual
            # blocks without batch statistics do not blow the activations up
            v = 0.1 + 0.2 * u if name.endswith(".bn2.weight") else 0.5 + 0.5 * u
        elif leaf in ("bias", "running_mean"):
            v = 0.2 * (u - 0.5)
        else:  # conv weights: He-uniform on the fan-in
            v = (2 * u - 1) * math.sqrt(6.0 / t[0].numel())
            if name.startswith("prop_layer.conv_offset_aff"):
                v = v * 0.1  # offsets of a pixel or two, affinities off saturation
        out[name] = v
    return out


#: constants of NLSPN's propagation layer (all-ones kernels, zero bias, gamma's start value)
_KEEP = ("prop_layer.w", "prop_layer.b", "prop_layer.w_conf", "prop_layer.aff_scale_const")


def load_frame() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shared KITTI frame as conftest's kitti_frame fixture reads it."""
    import cv2

    from depth_completion_ros.calibration import load_kitti_calibration

    frame = DATA_ROOT / "kitti_dc_frame"
    image = frame / "raw" / "2011_09_26" / DRIVE / "image_02" / "data" / f"{FRAME_ID:010d}.png"
    raw = (
        frame
        / "data_depth_velodyne"
        / "train"
        / DRIVE
        / "proj_depth"
        / "velodyne_raw"
        / "image_02"
        / f"{FRAME_ID:010d}.png"
    )
    if not image.exists() or not raw.exists():
        raise SystemExit(f"real KITTI frame not found under {frame} (see shared/data/README.md)")
    rgb = np.ascontiguousarray(cv2.imread(str(image))[:, :, ::-1])
    sparse = cv2.imread(str(raw), cv2.IMREAD_UNCHANGED).astype(np.float32) / 256.0
    K = load_kitti_calibration(frame / "raw" / "2011_09_26", camera_index=2).camera.K.copy()
    return rgb, sparse, K


def model_inputs(name: str, inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    """Normalised float64 tensors as the registry's KITTI input spec prescribes."""
    from depth_completion_ros.networks import registry

    spec = registry.MODELS[name].inputs["kitti"]
    rgb = torch.from_numpy(inputs["rgb"].astype(np.float64)).permute(2, 0, 1)[None]
    rgb = rgb / 255.0 * spec.input_range
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, 3, 1, 1)
    image = (rgb - mean) / std
    sparse = torch.from_numpy(inputs["sparse"])[None, None] * spec.depth_scale
    return image, sparse, torch.from_numpy(inputs["K"])[None]


def project_model(name: str) -> nn.Module:
    """The project's model as the registry builds it for KITTI, float64, seeded weights."""
    from depth_completion_ros.networks import registry

    spec = registry.MODELS[name]
    module, attr = spec.constructor.split(":")
    ctor = getattr(importlib.import_module(module), attr)
    model = ctor(**spec.inputs["kitti"].model_kwargs).double().eval()
    model.load_state_dict(seeded_state_dict(model))
    return model


def project_outputs(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What the test pins: BP-Net's final depth; SelfDC's final and initial depth."""
    image, sparse, K = model_inputs(name, inputs)
    model = project_model(name)
    with torch.no_grad():
        if name == "bpnet":
            return {"depth": model(image, sparse, K)[-1][0, 0].numpy()}
        depth, aux = model(image, sparse, return_aux=True)
    return {"depth": depth[0, 0].numpy(), "init_depth": aux["pred_init"][0, 0].numpy()}


# ---------------------------------------------------------------------------------------------
# the releases' custom ops and missing packages, written from their definitions


def _release_dist(Pc, IPCnum, args, H, W):  # noqa: N803 - the extension's signature
    """dist_kernel4 for one image: Pc 1 x 2 x M (x, y), outputs written in place."""
    m_count = Pc.shape[2]
    if m_count == 0:
        raise SystemExit(
            "a level of the crop has no valid pixel (the release's kernel is then "
            "undefined): choose another crop"
        )
    n = H * W
    yy = torch.arange(n, dtype=Pc.dtype) // W
    xx = torch.arange(n, dtype=Pc.dtype) % W
    best = torch.full((n, 4), 1e20, dtype=Pc.dtype)
    arg = torch.zeros((n, 4), dtype=torch.long)
    for m in range(m_count):
        d = (Pc[0, 0, m] - xx) ** 2 + (Pc[0, 1, m] - yy) ** 2
        placed = torch.zeros(n, dtype=torch.bool)
        new_best, new_arg = best.clone(), arg.clone()
        for i in range(4):  # the kernel's loop: insert before the first slot >= d, shift
            here = ~placed & (best[:, i] >= d)
            for j in range(i + 1, 4):
                new_best[here, j] = best[here, j - 1]
                new_arg[here, j] = arg[here, j - 1]
            new_best[here, i] = d[here]
            new_arg[here, i] = m
            placed |= here
        best, arg = new_best, new_arg
    for i in range(1, 4):
        miss = best[:, i] >= 1e20
        arg[miss, i] = arg[miss, i - 1]
    args[0] = arg.T
    IPCnum[0, 0] = (Pc[0, 0][arg] - xx[:, None]).T
    IPCnum[0, 1] = (Pc[0, 1][arg] - yy[:, None]).T


def _release_conv_local(a, b):
    """Conv2dLocal_F: out[r, c] = sum_ij a[r+i-R, c+j-R] * b[i*K+j, r, c], zero outside."""
    bsz, ch, h, w = a.shape
    k = int(round(math.sqrt(b.shape[1] / ch)))
    r = (k - 1) // 2
    padded = F.pad(a, (r, r, r, r))
    out = torch.zeros_like(a)
    for i in range(k):
        for j in range(k):
            out += padded[:, :, i : i + h, j : j + w] * b[:, i * k + j : i * k + j + 1]
    return out


def _dcn_bilinear(img, hh, ww):
    """DCNv2's dmcn_im2col_bilinear on C x H x W at float positions (any shape), with the
    im2col guard (h > -1, w > -1, h < H, w < W) and corners outside read as zero."""
    c, h, w = img.shape
    inside = (hh > -1) & (ww > -1) & (hh < h) & (ww < w)
    h_low, w_low = torch.floor(hh), torch.floor(ww)
    lh, lw = hh - h_low, ww - w_low
    out = torch.zeros((c, *hh.shape), dtype=img.dtype)
    for dy, dx, wgt in (
        (0, 0, (1 - lh) * (1 - lw)),
        (0, 1, (1 - lh) * lw),
        (1, 0, lh * (1 - lw)),
        (1, 1, lh * lw),
    ):
        yy, xx = (h_low + dy).long(), (w_low + dx).long()
        ok = inside & (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
        vals = img[:, yy.clamp(0, h - 1), xx.clamp(0, w - 1)]
        out += torch.where(ok, wgt, 0.0) * vals
    return out


def _release_dcn_forward(
    inp,
    weight,
    bias,
    offset,
    mask,
    kh,
    kw,
    sh,
    sw,
    ph,
    pw,
    dh,
    dw,
    group,
    deformable_group,
    im2col_step,
):
    """DCN.modulated_deform_conv_forward (stride 1, one deformable group)."""
    if (sh, sw) != (1, 1) or deformable_group != 1:
        raise SystemExit("stand-in DCN: only stride 1 and one deformable group are written")
    bsz, cin, h, w = inp.shape
    cout = weight.shape[0]
    ys = torch.arange(h, dtype=inp.dtype).view(h, 1).expand(h, w)
    xs = torch.arange(w, dtype=inp.dtype).view(1, w).expand(h, w)
    out = torch.zeros((bsz, cout, h, w), dtype=inp.dtype)
    cin_g, cout_g = cin // group, cout // group
    for b in range(bsz):
        cols = []
        for i in range(kh):
            for j in range(kw):
                kk = i * kw + j
                hpos = ys - ph + i * dh + offset[b, 2 * kk]
                wpos = xs - pw + j * dw + offset[b, 2 * kk + 1]
                cols.append(_dcn_bilinear(inp[b], hpos, wpos) * mask[b, kk])
        col = torch.stack(cols, dim=1)  # C x K x H x W
        for g in range(group):
            wg = weight[g * cout_g : (g + 1) * cout_g].reshape(cout_g, cin_g, kh * kw)
            cg = col[g * cin_g : (g + 1) * cin_g]
            out[b, g * cout_g : (g + 1) * cout_g] = torch.einsum("ock,ckhw->ohw", wg, cg)
        out[b] += bias.view(-1, 1, 1)
    return out


class _Rearrange(nn.Module):
    """einops Rearrange for the one pattern BP-Net uses."""

    PATTERN = "b (c h2 w2) h w -> b c (h h2) (w w2)"

    def __init__(self, pattern: str, c: int, h2: int, w2: int) -> None:
        super().__init__()
        if pattern != self.PATTERN:
            raise SystemExit(f"stand-in einops: unexpected pattern {pattern!r}")
        self.c, self.h2, self.w2 = c, h2, w2

    def forward(self, x):
        b, _, h, w = x.shape
        x = x.reshape(b, self.c, self.h2, self.w2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, self.c, h * self.h2, w * self.w2)


class _DropPath(nn.Module):
    """timm DropPath, evaluation only (the comparison runs in eval mode)."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x):
        if self.training and self.rate > 0:
            raise SystemExit("stand-in DropPath: evaluation only")
        return x


class _TVBasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock."""

    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class _TVResNet(nn.Module):
    """torchvision.models.ResNet's layer1-4 (the parts NLSPN keeps)."""

    def __init__(self, layers):
        super().__init__()
        self.inplanes = 64
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        layers = [_TVBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [_TVBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)


def _install_stand_ins() -> None:
    """Put the stand-in modules into sys.modules (this process only)."""

    def module(name: str, **attrs) -> types.ModuleType:
        mod = sys.modules.get(name) or types.ModuleType(name)
        for key, value in attrs.items():
            setattr(mod, key, value)
        sys.modules[name] = mod
        return mod

    module("BpOps", Dist=_release_dist, Conv2dLocal_F=_release_conv_local)
    module("DCN", modulated_deform_conv_forward=_release_dcn_forward)
    for name, attrs in (
        ("einops", {}),
        ("einops.layers", {}),
        ("einops.layers.torch", {"Rearrange": _Rearrange}),
        ("timm", {}),
        ("timm.models", {}),
        ("timm.models.layers", {"DropPath": _DropPath}),
        ("torchvision", {}),
        (
            "torchvision.models",
            {
                "resnet18": lambda pretrained=False: _TVResNet((2, 2, 2, 2)),
                "resnet34": lambda pretrained=False: _TVResNet((3, 4, 6, 3)),
            },
        ),
    ):
        try:
            importlib.import_module(name)  # the real package where it is installed
        except ImportError:
            module(name, **attrs)
    sys.modules["torchvision"].models = sys.modules["torchvision.models"]


def _load_package(alias: str, folder: Path) -> None:
    """Import ``folder`` (a package with relative imports) under a name that cannot clash."""
    init = folder / "__init__.py"
    if not init.exists():
        raise SystemExit(f"{folder} is not the release's package folder ({init} missing)")
    spec = importlib.util.spec_from_file_location(
        alias, init, submodule_search_locations=[str(folder)]
    )
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[alias] = pkg
    spec.loader.exec_module(pkg)


def release_bpnet(root: Path) -> nn.Module:
    _load_package("_release_bpnet_models", root / "models")
    net = importlib.import_module("_release_bpnet_models.BPNet").Net()
    return net


def release_nlspn(root: Path) -> nn.Module:
    _load_package("_release_nlspn_model", root / "src" / "model")
    cls = importlib.import_module("_release_nlspn_model.nlspnmodel").NLSPNModel
    args = Namespace(
        network="resnet34",
        from_scratch=True,
        prop_time=18,
        prop_kernel=3,
        affinity="TGASS",
        affinity_gamma=0.5,
        conf_prop=True,
        legacy=True,
        preserve_input=True,
        lr=1e-3,
    )
    return cls(args)


def _rel_diff(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours - theirs| / max |theirs| over the map."""
    return float((ours - theirs).abs().max() / theirs.abs().max().clamp(min=1e-300))


def compare(name: str, release: nn.Module, inputs: dict[str, np.ndarray]) -> dict:
    """Same seeded weights into both, float64, same input: the outputs' relative difference."""
    ours = project_model(name)
    sd = seeded_state_dict(ours)
    release = release.double().eval()  # float64 first: loading into float32 would round
    release.load_state_dict(sd, strict=True)
    image, sparse, K = model_inputs(name, inputs)
    with torch.no_grad():
        if name == "bpnet":
            a, b = ours(image, sparse, K), release(image, sparse, K)
            diffs = {
                f"output_{i}": _rel_diff(x, y) for i, (x, y) in enumerate(zip(a, b, strict=True))
            }
            scale = float(b[-1].abs().max())
        else:
            depth, aux = ours(image, sparse, return_aux=True)
            out = release({"rgb": image, "dep": sparse})
            diffs = {
                "depth": _rel_diff(depth, out["pred"]),
                "init_depth": _rel_diff(aux["pred_init"], out["pred_init"]),
                "confidence": _rel_diff(aux["confidence"], out["confidence"]),
            }
            scale = float(out["pred"].abs().max())
    return {"max_rel_diff": max(diffs.values()), "per_output": diffs, "output_max_abs": scale}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bpnet-release",
        type=Path,
        required=True,
        help="checkout of github.com/kakaxi314/BP-Net (or DMD3C)",
    )
    parser.add_argument(
        "--nlspn-release",
        type=Path,
        required=True,
        help="checkout of github.com/zzangjinsun/NLSPN_ECCV20",
    )
    parser.add_argument("--max-rel-diff", type=float, default=MAX_REL_DIFF)
    parser.add_argument("--check-only", action="store_true", help="compare, write nothing")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    inputs = reference_inputs(*load_frame())
    _install_stand_ins()
    report = {
        "crop": {
            "top": TOP,
            "left": LEFT,
            "height": HEIGHT,
            "width": WIDTH,
            "valid_pixels": int((inputs["sparse"] > 0).sum()),
        },
        "seed": SEED,
        "bpnet": compare("bpnet", release_bpnet(args.bpnet_release), inputs),
        "selfdc": compare("selfdc", release_nlspn(args.nlspn_release), inputs),
    }
    ok = all(report[m]["max_rel_diff"] <= args.max_rel_diff for m in ("bpnet", "selfdc"))
    report["release_check"] = (
        f"{'PASSED' if ok else 'FAILED'}: the project's bpnet and selfdc against the authors' "
        f"code (float64, same weights), max relative difference allowed {args.max_rel_diff:g}"
    )
    if ok and not args.check_only:
        arrays = {f"input_{k}": v for k, v in inputs.items()}
        for name in ("bpnet", "selfdc", "selfdc_r18"):
            for key, value in project_outputs(name, inputs).items():
                arrays[f"{name}_{key}"] = value
        from depth_completion_ros.depth_io import write_bytes_atomic

        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        OUT.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(OUT, buf.getvalue())
        report["written"] = str(OUT.relative_to(REPO))
    print(json.dumps(report, indent=2))
    if not ok:
        raise SystemExit("release check failed: references NOT written")


if __name__ == "__main__":
    main()
