"""onnxruntime runtime: explicit providers (no silent CPU fallback), metadata-driven
preprocessing, and the ``onnx`` backbone plugin."""

from __future__ import annotations

import numpy as np
import pytest

import c4s_core
from c4s_core.errors import C4SError, DataError, ImageReadError

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch.set_num_threads(1)

from c4s_core import export as ex  # noqa: E402
from c4s_core import runtime as rt  # noqa: E402

SIZE = 32


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.fc = torch.nn.Linear(8 * 16, 16)

    def forward(self, x):
        return self.fc(self.pool(torch.tanh(self.conv(x))).flatten(1))


META = ex.ExportMeta(input_size=(SIZE, SIZE), color_order="BGR", mean=(0.5,) * 3, std=(0.5,) * 3,
                     embedding_dim=16, backbone="tiny")


def synth(n, size=64, seed=0):
    ds = c4s_core.get_registries().dataset.build(
        "synthfaces", {"num_identities": n, "images_per_identity": 1, "sketches_per_identity": 0,
                       "size": size, "seed": seed})
    return [ds[i].image for i in range(len(ds))], [ds[i].identity for i in range(len(ds))]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    from c4s_core.data.io import resize

    images, _ = synth(8, 32)
    model = Tiny()
    path = tmp_path_factory.mktemp("model") / "tiny.onnx"
    ex.export_onnx(model, META, path, np.stack([resize(im, SIZE) for im in images]), check_batches=(1, 5))
    return path, model


def test_embedder_reads_metadata_and_resizes(model_path):
    path, model = model_path
    emb = rt.OnnxEmbedder(path, device="cpu", batch_size=3)
    assert emb.providers[0] == "CPUExecutionProvider"
    assert emb.input_size == (SIZE, SIZE) and emb.embedding_dim == 16
    assert emb.metadata["backbone"] == "tiny" and emb.metadata["color_order"] == "BGR"
    assert emb.model_hash == ex.file_sha256(path)
    images, _ = synth(7, 64)  # 64 px: resized to 32 by the runtime, in chunks of 3
    got = emb.embed(images)
    assert got.shape == (7, 16) and got.dtype == np.float32
    from c4s_core.data.io import resize

    ref = ex.torch_reference(model, META, np.stack([resize(im, SIZE) for im in images]))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    gray = emb.embed([images[0].mean(2).astype(np.uint8)])  # HxW grey is replicated
    assert gray.shape == (1, 16)
    with pytest.raises(DataError, match="uint8"):
        emb.embed([images[0].astype(np.float32)])
    assert emb.embed([]).shape == (0, 16)


def test_embed_files_with_aligner_and_skips(model_path, tmp_path):
    from c4s_core.data.io import save_image

    path, _ = model_path
    images, _ = synth(3, 64)
    files = []
    for i, im in enumerate(images):
        save_image(tmp_path / f"{i}.png", im)
        files.append(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    emb = rt.OnnxEmbedder(path)
    aligner = c4s_core.get_registries().aligner.build("center", {"size": SIZE, "box": [0, 0, 1, 1]})
    emb.aligner = aligner
    vecs, kept, skipped = emb.embed_files([*files, tmp_path / "bad.png"], on_error="skip")
    assert vecs.shape == (3, 16) and kept == [0, 1, 2]
    assert len(skipped) == 1 and "bad.png" in skipped[0][0]
    np.testing.assert_allclose(vecs, emb.embed(images), atol=1e-5)  # same crops as arrays
    with pytest.raises(ImageReadError):
        emb.embed_files([tmp_path / "bad.png"])


def test_cuda_on_a_cpu_machine_is_an_error_not_a_fallback(model_path):
    path, _ = model_path
    if "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            active = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"]).get_providers()
        except Exception:
            active = []
        if "CUDAExecutionProvider" in active:
            pytest.skip("this machine really has CUDA")
    with pytest.raises(rt.ProviderError, match="cuda") as err:
        rt.OnnxEmbedder(path, device="cuda")
    assert isinstance(err.value, C4SError)
    assert "device=cpu" in str(err.value)


def test_provider_missing_from_available_list(model_path, monkeypatch):
    path, _ = model_path
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(rt.ProviderError, match="offers only CPUExecutionProvider"):
        rt.make_session(path, "cuda")
    with pytest.raises(rt.ProviderError, match="TensorrtExecutionProvider"):
        rt.make_session(path, "tensorrt")


def test_session_that_silently_falls_back_is_refused(model_path, monkeypatch):
    """onnxruntime-gpu lists CUDA as available, then runs on CPU: detected."""
    path, _ = model_path
    real = ort.InferenceSession

    class FallingBack(real):
        def __init__(self, p, so=None, providers=None, **kw):
            super().__init__(p, so, providers=["CPUExecutionProvider"], **kw)

    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", FallingBack)
    with pytest.raises(rt.ProviderError, match="runs on CPUExecutionProvider only"):
        rt.make_session(path, "cuda")


def test_bad_device_and_missing_file(model_path, tmp_path):
    path, _ = model_path
    with pytest.raises(rt.ProviderError, match="'gpu'"):
        rt.make_session(path, "gpu")
    with pytest.raises(DataError, match="not found"):
        rt.make_session(tmp_path / "none.onnx", "cpu")


def test_model_without_c4s_metadata_is_refused(tmp_path):
    model = Tiny().eval()
    p = tmp_path / "plain.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, SIZE, SIZE),), str(p), dynamo=False)
    with pytest.raises(DataError, match="c4s export"):
        rt.OnnxEmbedder(p)


def _onnx_registries():
    from c4s_plugins import onnx_matcher

    from c4s_core.plugins import build_registries, make_plugin_manager

    regs = c4s_core.get_registries()
    if "onnx" in regs.backbone:  # the lead registered the entry point
        return regs
    return build_registries(make_plugin_manager(plugins=(("onnx_matcher", onnx_matcher),)))


def test_onnx_backbone_plugin(model_path):
    path, model = model_path
    regs = _onnx_registries()
    bb = regs.backbone.build("onnx", {"path": str(path), "batch_size": 4})
    assert bb.input_size == (SIZE, SIZE) and bb.embedding_dim == 16 and bb.color_order == "RGB"
    images, _ = synth(5, 32)
    e = bb.embed(images)
    assert e.shape == (5, 16)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e, ex.torch_reference(model, META, np.stack(images)), atol=1e-4)
    with pytest.raises(rt.ProviderError):
        regs.backbone.build("onnx", {"path": str(path), "device": "tensorrt"})


def test_evaluate_runs_on_the_onnx_backbone(model_path, tmp_path):
    from c4s_core.pipelines import evaluate
    from c4s_core.plugins import set_registries

    path, _ = model_path
    set_registries(_onnx_registries())
    sf = {"name": "synthfaces", "options": {"num_identities": 6, "images_per_identity": 1,
                                             "sketches_per_identity": 1, "size": 32}}
    cfg = evaluate.Config(probes=sf, gallery=sf, backbone={"name": "onnx", "options": {"path": str(path)}},
                          aligner={"name": "center", "options": {"size": SIZE, "box": [0, 0, 1, 1]}},
                          out=tmp_path / "ev")
    evaluate.run(cfg, progress=False)
    import json

    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["backbone"] == "onnx"
    assert report["counts"]["probes"] == 6 and report["counts"]["gallery"] == 6
