"""Pretrained weights from registry packages: TF.js decoding, the store
(import, fetch through npm, verify, load), refusal of damaged and foreign
files, and face-api's dlib ResNet in torch (layout and, with dlib and the real
weights, parity with dlib's own descriptor). No test touches the network:
tarballs and TF.js files are written here; `npm` is a stand-in script."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import c4s_core
from c4s_core import weights as store
from c4s_core.errors import DataError
from c4s_core.plugins import build_registries, make_plugin_manager

torch = pytest.importorskip("torch")
REAL_HOME = store.home()  # where `c4s weights fetch` put the real weights, before the fixture below


@pytest.fixture(autouse=True)
def c4s_home(tmp_path, monkeypatch):
    monkeypatch.setenv("C4S_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def quantise(arr: np.ndarray) -> tuple[bytes, dict]:
    lo, hi = float(arr.min()), float(arr.max())
    scale = (hi - lo) / 255 or 1.0
    q = np.clip(np.round((arr - lo) / scale), 0, 255).astype(np.uint8)
    return q.tobytes(), {"dtype": "uint8", "scale": scale, "min": lo}


def tfjs_files(tensors: dict[str, np.ndarray], quantised: set[str]) -> tuple[list, bytes]:
    """A one-shard TF.js weights manifest and its .bin, as face-api ships them."""
    weights, buf = [], b""
    for name, arr in tensors.items():
        w = {"name": name, "shape": list(arr.shape), "dtype": "float32"}
        if name in quantised:
            data, w["quantization"] = quantise(arr)
        else:
            data = arr.astype(np.float32).tobytes()
        weights.append(w)
        buf += data
    return [{"paths": ["w.bin"], "weights": weights}], buf


def test_read_tfjs_dequantises_and_checks_sizes():
    rng = np.random.default_rng(0)
    t = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=(5,)).astype(np.float32),
         "c": np.arange(6, dtype=np.float32).reshape(2, 3)}
    manifest, buf = tfjs_files(t, {"a", "b"})
    got = store.read_tfjs(manifest, {"w.bin": buf})
    assert got["c"].tolist() == t["c"].tolist()  # float32 as stored
    for k in ("a", "b"):  # uint8: within half a quantisation step
        step = (t[k].max() - t[k].min()) / 255
        assert np.abs(got[k] - t[k]).max() <= step / 2 + 1e-6
    with pytest.raises(DataError, match="end before tensor"):
        store.read_tfjs(manifest, {"w.bin": buf[:-3]})
    with pytest.raises(DataError, match="left over"):
        store.read_tfjs(manifest, {"w.bin": buf + b"xx"})
    with pytest.raises(DataError, match="shard w.bin"):
        store.read_tfjs(manifest, {})


# -- the store, with a tiny registered source --------------------------------------------


def make_tarball(path: Path, files: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny(tmp_path):
    """A registered source ``tiny`` pinned to a tarball written here."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    manifest, buf = tfjs_files({"layer/w": w}, set())
    tgz = tmp_path / "tiny-1.0.0.tgz"
    sha = make_tarball(tgz, {"m.json": json.dumps(manifest).encode(), "w.bin": buf})

    class Tiny(store.WeightSource):
        """A tiny test source."""

        name = "tiny"
        package, version, sha256, licence, upstream = "tiny-pkg", "1.0.0", sha, "MIT", "a test"
        files = ("m.json", "w.bin")

        def convert(self, files):
            t = store.read_tfjs(store.read_tfjs_manifest(files["m.json"], "m.json"), {"w.bin": files["w.bin"]})
            return {"layer.weight": t["layer/w"]}

    plugin = types.ModuleType("tinyweights")
    plugin.register_weights = c4s_core.hookimpl(lambda register: register(Tiny))
    plugin.register_weights.__name__ = "register_weights"
    regs = build_registries(make_plugin_manager(entry_points=False, plugins=(("tinyweights", plugin),)))
    return types.SimpleNamespace(regs=regs, tgz=tgz, w=w, cls=Tiny)


def test_import_then_load(tiny, c4s_home):
    d = store.import_package("tiny", tiny.tgz, tiny.regs)
    assert d == c4s_home / "weights" / "tiny"
    info = json.loads((d / "source.json").read_text())
    assert (info["package"], info["version"], info["package_sha256"]) == ("tiny-pkg", "1.0.0", tiny.cls.sha256)
    assert info["licence"] == "MIT" and info["parameters"] == 12
    got = store.load("tiny", tiny.regs)
    assert got["layer.weight"].numpy().tolist() == tiny.w.tolist()


def test_missing_weights_say_how_to_fetch(tiny):
    with pytest.raises(store.WeightsError, match="c4s weights fetch tiny"):
        store.load("tiny", tiny.regs)


def test_a_tarball_other_than_the_pinned_one_is_refused(tiny, tmp_path):
    other = tmp_path / "other.tgz"
    make_tarball(other, {"m.json": b"[]", "w.bin": b""})
    with pytest.raises(store.WeightsError, match="other.tgz: sha256 .* is not that of tiny-pkg@1.0.0"):
        store.import_package("tiny", other, tiny.regs)


def test_damaged_weights_are_refused_naming_the_file(tiny):
    d = store.import_package("tiny", tiny.tgz, tiny.regs)
    st = d / "model.safetensors"
    data = bytearray(st.read_bytes())
    data[-3] ^= 0xFF
    st.write_bytes(bytes(data))
    with pytest.raises(store.WeightsError, match=r"model\.safetensors: content hash .* damaged"):
        store.load("tiny", tiny.regs)
    row = next(r for r in store.status(tiny.regs) if r.name == "tiny")
    assert row.fetched and row.ok is False


def test_weights_from_another_version_are_refused(tiny):
    d = store.import_package("tiny", tiny.tgz, tiny.regs)
    info = json.loads((d / "source.json").read_text())
    info["version"] = "0.9.0"
    (d / "source.json").write_text(json.dumps(info))
    with pytest.raises(store.WeightsError, match="tiny-pkg@0.9.0, but weights 'tiny' are pinned to tiny-pkg@1.0.0"):
        store.verify("tiny", tiny.regs)


def fake_npm(bin_dir: Path, tgz: Path) -> None:
    """An `npm` that copies ``tgz`` to --pack-destination, as `npm pack` would."""
    bin_dir.mkdir()
    script = bin_dir / "npm"
    script.write_text("#!/bin/sh\n"
                      "while [ $# -gt 0 ]; do case $1 in --pack-destination) dest=$2; shift;; esac; shift; done\n"
                      f"cp '{tgz}' \"$dest/\"\necho '[]'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_fetch_goes_through_npm_pack_once(tiny, tmp_path, monkeypatch):
    fake_npm(tmp_path / "bin", tiny.tgz)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    d = store.fetch("tiny", regs=tiny.regs)
    assert store.verify("tiny", tiny.regs)["weights_sha256"]
    tiny.tgz.unlink()  # an intact stored copy needs no npm and no tarball
    assert store.fetch("tiny", regs=tiny.regs) == d


def test_no_npm_is_a_clear_error_with_the_manual_route(tiny, monkeypatch):
    monkeypatch.setattr(store.shutil, "which", lambda name: None)
    with pytest.raises(store.WeightsError, match="npm is not installed.*npm pack tiny-pkg@1.0.0.*c4s weights import tiny"):
        store.fetch("tiny", regs=tiny.regs)


def test_weights_cli_lists_and_verifies(tiny, monkeypatch):
    from c4s_core.cli import cli

    monkeypatch.setattr("c4s_core.plugins._default", tiny.regs)
    res = CliRunner().invoke(cli, ["weights", "list"])
    assert res.exit_code == 0 and "tiny" in res.output and "missing" in res.output, res.output
    res = CliRunner().invoke(cli, ["weights", "import", "tiny", str(tiny.tgz)])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["weights", "verify", "tiny"])
    assert res.exit_code == 0 and "tiny: ok" in res.output
    st = store.folder("tiny") / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-1] + b"\x00")
    res = CliRunner().invoke(cli, ["weights", "verify", "tiny"])
    assert res.exit_code == 1 and "model.safetensors" in res.output and "Traceback" not in res.output


# -- face-api's dlib ResNet ------------------------------------------------------------


def to_tfjs_layout(model) -> dict[str, np.ndarray]:
    """The inverse of from_tfjs: a torch DlibResNet's tensors as face-api names them."""
    out = {}
    for k, v in model.state_dict().items():
        a = v.numpy()
        if k == "fc.weight":
            out["fc"] = a.T.copy()
            continue
        *mod, part, leaf = k.split(".")
        tf_leaf = {("conv", "weight"): "conv/filters", ("conv", "bias"): "conv/bias",
                   ("scale", "weight"): "scale/weights", ("scale", "bias"): "scale/biases"}[(part, leaf)]
        out["/".join(mod + [tf_leaf])] = a.transpose(2, 3, 1, 0).copy() if tf_leaf == "conv/filters" else a
    return out


def test_face_api_layout_converts_to_the_same_network():
    """A random DlibResNet written in face-api's TF.js layout (filters HWIO,
    uint8 like the package but eight float32 filters) converts back to a
    network that gives the same descriptors, up to the quantisation."""
    from c4s_plugins._dlib_resnet import DlibResNet
    from c4s_plugins.face_api import MANIFEST, SHARD, FaceApiResNet

    torch.manual_seed(0)
    ref = DlibResNet().eval()
    tf = to_tfjs_layout(ref)
    floats = {n for n in tf if n.endswith("filters")}
    floats = set(sorted(floats)[:8])
    manifest, buf = tfjs_files(tf, set(tf) - floats)
    manifest[0]["paths"] = ["face_recognition_model.bin"]
    sd = FaceApiResNet().convert({MANIFEST: json.dumps(manifest).encode(), SHARD: buf})
    got = DlibResNet().eval()
    got.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    x = torch.rand(3, 3, 150, 150) - 0.45
    with torch.no_grad():
        a, b = ref(x), got(x)
    cos = torch.nn.functional.cosine_similarity(a, b)
    assert cos.min() > 0.99, cos  # uint8 rounding of 29 layers, not a wrong axis (that gives ~0)
    for name, arr in tf.items():  # float32 tensors come back bit for bit
        if name in floats:
            key = name.replace("/conv/filters", ".conv.weight").replace("/", ".")
            assert np.array_equal(sd[key], arr.transpose(3, 2, 0, 1))


def test_dlib_r29_shapes_on_other_input_sizes():
    from c4s_plugins._dlib_resnet import DlibResNet

    m = DlibResNet().eval()
    with torch.no_grad():
        for size in (150, 128, 112):
            assert m(torch.zeros(2, 3, size, size)).shape == (2, 128)
        assert m.features(torch.zeros(1, 3, 150, 150)).shape == (1, 256, 2, 2)


def test_dlib_r29_without_fetched_weights_says_how_to_get_them():
    with pytest.raises(store.WeightsError, match="c4s weights fetch face_api_resnet"):
        c4s_core.get_registries().backbone.build("dlib_r29", {"device": "cpu"})
    bb = c4s_core.get_registries().backbone.build("dlib_r29", {"device": "cpu", "pretrained": False})
    assert bb.embed([np.zeros((150, 150, 3), np.uint8)]).shape == (1, 128)


def test_dlib_r29_equals_dlibs_descriptor_on_real_faces(cufs, monkeypatch):
    """On dlib's own chips, the torch rebuild gives dlib's descriptor (cosine
    >= 0.999): uint8 weights and float32 arithmetic, the only differences."""
    pytest.importorskip("dlib")
    home = REAL_HOME
    if not (home / "weights" / "face_api_resnet" / "source.json").is_file():
        pytest.skip(f"face_api_resnet is not fetched in {home} (c4s weights fetch face_api_resnet)")
    monkeypatch.setenv("C4S_HOME", str(home))
    from c4s_core.data.io import load_image

    regs = c4s_core.get_registries()
    paths = sorted((cufs / "photos").iterdir())[:20] + sorted((cufs / "sketches").iterdir())[:20]
    images = [load_image(p) for p in paths]
    dl = regs.backbone.build("dlib_resnet", {})
    chips, found = dl.chips(images)
    assert sum(found) >= 30
    a = dl.embed(images)
    r29 = regs.backbone.build("dlib_r29", {"device": "cpu"})
    cos = (a * r29.embed(chips)).sum(1)
    assert cos.mean() >= 0.999 and cos.min() >= 0.998, cos
    # the dlib_chip template reproduces dlib's crop closely enough for the same descriptor
    # (measured: mean 0.998; on the ArcFace template 0.92)
    crops = [r.image for r in regs.aligner.build("dlib", {"template": "dlib_chip", "size": 150}).align(images)]
    cos = (a * r29.embed(crops)).sum(1)
    assert cos.mean() >= 0.99, cos


def test_describe_names_the_weights_and_their_licence():
    from c4s_core.cli import cli

    res = CliRunner().invoke(cli, ["describe", "backbone", "dlib_r29"])
    assert res.exit_code == 0, res.output
    assert "@vladmandic/face-api@1.7.15" in res.output and "licence: MIT" in res.output
    assert "dlib_face_recognition_resnet_model_v1" in res.output
