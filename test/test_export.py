"""ONNX export (export_model) and runtime:=onnxruntime: parity with the torch backend.

Exports are CPU-heavy (selfdc_r18 ~15 s, BP-Net at a fixed small size ~25 s on 2 cores), so
each is made once per module; BP-Net at full size and dynamic is the benchmark's job.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
from conftest import in_ci

if not in_ci():  # CI installs requirements.txt, which holds the onnx extra: fail there instead
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip '.[onnx]')")
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed (pip '.[onnx]')")

import torch  # noqa: E402

from depth_completion_ros.backends import BackendError, make_backend  # noqa: E402
from depth_completion_ros.backends.network import NetworkBackend  # noqa: E402
from depth_completion_ros.export import (  # noqa: E402
    PARITY_TOLERANCE,
    check_parity,
    export_network,
    read_metadata,
)

pytestmark = pytest.mark.timeout(600)


def _crop(frame, rows: int, cols: int, x0: int):
    """The bottom ``rows`` x ``cols`` of a frame from column x0, K shifted to match."""
    rgb, sparse, K = frame
    y0 = rgb.shape[0] - rows
    K2 = K.copy()
    K2[0, 2] -= x0
    K2[1, 2] -= y0
    return (
        np.ascontiguousarray(rgb[y0:, x0 : x0 + cols]),
        np.ascontiguousarray(sparse[y0:, x0 : x0 + cols]),
        K2,
    )


@pytest.fixture(scope="module")
def r18_onnx(r18_weights, tmp_path_factory):
    """selfdc_r18 exported by the console script's main (dynamic; its own parity check)."""
    from depth_completion_ros.tools.export_model import main

    out = tmp_path_factory.mktemp("onnx") / "selfdc_r18.onnx"
    assert main(["selfdc_r18", str(r18_weights), str(out), "--size", "64x128"]) == 0
    return out


def test_export_records_what_it_holds(r18_onnx, r18_weights):
    meta = read_metadata(r18_onnx)
    assert meta["model"] == "selfdc_r18" and meta["dataset"] == "kitti"
    assert meta["dynamic"] == "true" and meta["traced_size"] == "64x128"
    assert str(r18_weights) in meta["weights"]
    assert json.loads(meta["inputs"]) == ["image", "sparse"]


def test_selfdc_r18_parity_on_the_kitti_frame(r18_onnx, r18_weights, kitti_frame):
    """Full frame (375 x 1242: the 352 x 1216 window and two 32-column edge tiles, batch 2)
    through one dynamic export, against the torch backend: <= 1e-4 relative in fp32."""
    ort_backend = make_backend("selfdc_r18", str(r18_onnx), device="cpu", runtime="onnxruntime")
    torch_backend = make_backend("selfdc_r18", str(r18_weights), device="cpu")
    report = check_parity(ort_backend, torch_backend, *kitti_frame)
    print("selfdc_r18 parity (KITTI frame):", report)
    assert report["ok"], report
    assert "CPUExecutionProvider" in ort_backend.describe()


def test_bpnet_parity_with_neighbours_fed_in(kitti_frame, tmp_path):
    """BP-Net with its neighbour search outside the graph, on a 96 x 256 part of the real
    frame (a fixed-size export: the full frame is ~12 s per frame here, in the benchmark)."""
    torch.manual_seed(0)
    reference = NetworkBackend("bpnet", device="cpu", allow_random_weights=True)
    frame = _crop(kitti_frame, 96, 256, 500)
    g = reference.plan(*frame[1].shape, reference.top_row(frame[1]), reference.scale(frame[2]))
    assert g.net_size == (96, 256) and not g.tiles
    path = tmp_path / "bpnet.onnx"
    export_network(
        reference.net,
        True,
        path,
        96,
        256,
        dynamic=False,
        metadata={"model": "bpnet", "dataset": "kitti"},
    )
    ort_backend = make_backend("bpnet", str(path), device="cpu", runtime="onnxruntime")
    report = check_parity(ort_backend, reference, *frame)
    print("bpnet parity (96 x 256 of the KITTI frame):", report)
    assert report["ok"], report


def test_a_changed_activation_fails_the_parity_check(r18_weights, kitti_frame, tmp_path):
    """The check can fail: the same weights exported with ReLU where the network has
    LeakyReLU(0.2) are caught."""
    reference = NetworkBackend("selfdc_r18", r18_weights, device="cpu", channels_last=False)
    altered = copy.deepcopy(reference.net)
    changed = 0
    for module in altered.modules():
        for name, child in module.named_children():
            if isinstance(child, torch.nn.LeakyReLU):
                setattr(module, name, torch.nn.ReLU())
                changed += 1
    assert changed
    path = tmp_path / "altered.onnx"
    export_network(altered, False, path, 96, 256, dynamic=False, metadata={"model": "selfdc_r18"})
    frame = _crop(kitti_frame, 96, 256, 500)
    ort_backend = make_backend("selfdc_r18", str(path), device="cpu", runtime="onnxruntime")
    report = check_parity(ort_backend, reference, *frame)
    assert not report["ok"] and report["relative_difference"] > PARITY_TOLERANCE, report


def test_wrong_files_are_refused_with_the_fix(r18_onnx, r18_weights):
    with pytest.raises(BackendError, match="export_model"):
        make_backend("selfdc_r18", str(r18_weights), device="cpu", runtime="onnxruntime")
    with pytest.raises(BackendError, match="is an export of model 'selfdc_r18'"):
        make_backend("selfdc", str(r18_onnx), device="cpu", runtime="onnxruntime")
    with pytest.raises(BackendError, match="needs checkpoint"):
        make_backend("selfdc_r18", "", device="cpu", runtime="onnxruntime")


def test_runtime_is_a_node_parameter():
    from depth_completion_ros.parameters import PARAMETERS

    (runtime,) = [p for p in PARAMETERS if p.name == "runtime"]
    assert runtime.default == "torch" and runtime.choices == ("torch", "onnxruntime")


def test_cuda_request_without_gpu_providers_falls_back_to_the_cpu(tmp_path, caplog):
    from depth_completion_ros.backends.onnx import CPU, CUDA, TRT, choose_providers

    model = tmp_path / "m.onnx"
    assert choose_providers("cpu", "fp32", model, [CUDA, CPU]) == [(CPU, {})]
    assert [p for p, _ in choose_providers("cuda", "fp32", model, [CPU])] == [CPU]
    assert "running on the CPU" in caplog.text
    chosen = choose_providers("cuda:1", "fp16", model, [TRT, CUDA, CPU])
    assert [p for p, _ in chosen] == [TRT, CUDA, CPU]
    assert chosen[0][1]["trt_fp16_enable"] and chosen[0][1]["device_id"] == 1
    assert os.path.isdir(chosen[0][1]["trt_engine_cache_path"])
