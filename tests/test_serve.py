"""`c4s serve`: the JSON API through FastAPI's TestClient (search equals `c4s match
search`, bad uploads, token, host and binding policy, path-like ids), index
thumbnails, reload, and the optional generator."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import c4s_core

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from c4s_core.errors import ConfigError  # noqa: E402
from c4s_core.serve import (  # noqa: E402
    COOKIE,
    SearchService,
    ServeLimits,
    build_server,
    create_app,
    decode_upload,
    is_loopback,
)

TOKEN = "correct-horse-battery-staple-42"
BASE = "http://127.0.0.1:8000"


def build_deployment(root: Path, num_identities: int = 20, size: int = 64, thumb: int = 48) -> dict:
    """A tiny exported model, a synthfaces photo gallery enrolled with thumbnails, and sketches."""
    torch = pytest.importorskip("torch")
    from c4s_core import export as ex
    from c4s_core.data.io import resize, save_image
    from c4s_core.match_cli import match

    torch.set_num_threads(1)
    ds = c4s_core.get_registries().dataset.build(
        "synthfaces", {"num_identities": num_identities, "images_per_identity": 1, "sketches_per_identity": 1,
                       "size": size})
    photos, sketches = root / "photos", root / "sketches"
    for s in ds:
        save_image((photos if s.modality == "photo" else sketches) / f"{s.identity}.png", s.image)
    meta = ex.ExportMeta(input_size=(32, 32), color_order="BGR", mean=(0.5,) * 3, std=(0.5,) * 3,
                         embedding_dim=16, backbone="tiny")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.Tanh(), torch.nn.AdaptiveAvgPool2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(128, 16))
    parity = np.stack([resize(ds[i].image, 32) for i in range(4)])
    model = ex.export_onnx(net, meta, root / "model.onnx", parity, check_batches=(1, 2)).path
    index = root / "gallery"
    res = CliRunner().invoke(match, ["enroll", "--model", str(model), "--photos", str(photos), "--index", str(index),
                                     "--aligner", "center", "--thumbnail-size", str(thumb), "--no-progress", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return {"root": root, "model": Path(model), "index": index, "photos": photos,
            "sketches": sorted(sketches.glob("*.png")), "ids": sorted({s.identity for s in ds})}


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    return build_deployment(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def service(dep):
    return SearchService(dep["index"], dep["model"])


@pytest.fixture
def client(service):
    return TestClient(create_app(service, limits=ServeLimits(max_upload_bytes=200_000, max_pixels=4_000_000,
                                                             max_side=4000)), base_url=BASE)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def upload(client, data: bytes, name="sketch.png", ctype="image/png", **params):
    return client.post("/search", files={"image": (name, data, ctype)}, params=params)


# -- search ------------------------------------------------------------------------------------------


def test_search_equals_match_search(dep, client):
    from c4s_core.match_cli import match

    probes = dep["sketches"][:3]
    res = CliRunner().invoke(match, ["search", "--index", str(dep["index"]), "--model", str(dep["model"]),
                                     *map(str, probes), "--top-k", "7", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    want = json.loads(res.output)["results"]
    assert len(want) == 3
    for probe, w in zip(probes, want, strict=True):
        r = upload(client, probe.read_bytes(), name=probe.name, top_k=7)
        assert r.status_code == 200, r.text
        got = r.json()
        assert [h["identity"] for h in got["hits"]] == [h["identity"] for h in w["hits"]]
        np.testing.assert_allclose([h["score"] for h in got["hits"]], [h["score"] for h in w["hits"]], atol=2e-6)
        assert [h["rank"] for h in got["hits"]] == list(range(1, 8))
        assert [h["source"] for h in got["hits"]] == [Path(h["source"]).name for h in w["hits"]]
        # every hit links its stored image and its candidate page
        assert all(h["image"].startswith("images/") and h["candidate"] == f"candidates/{h['identity']}"
                   for h in got["hits"])
        # the aligned crop is the model input: 32x32, and what the center aligner makes of the probe
        q = got["query"]
        assert q["input_size"] == [32, 32] and q["aligner"] == "center" and (q["width"], q["height"]) == (64, 64)
        from PIL import Image

        from c4s_core.data.io import load_image

        crop = np.asarray(Image.open(io.BytesIO(base64.b64decode(q["aligned"].split(",", 1)[1]))))
        assert crop.shape == (32, 32, 3)
        expect = client.app.fastapi.state.service.align(load_image(probe))[0]
        assert np.array_equal(crop, expect)


def test_search_top_k_bounds_and_default(client, dep):
    data = dep["sketches"][0].read_bytes()
    assert len(upload(client, data).json()["hits"]) == 10  # default
    assert len(upload(client, data, top_k=100).json()["hits"]) == 20  # the whole gallery
    for bad in (0, 101, "x"):
        r = upload(client, data, top_k=bad)
        assert r.status_code == 422 and "top_k" in r.text


def test_status_shows_model_index_and_device(client, dep):
    s = client.get("/api/status").json()
    assert s["model"]["backbone"] == "tiny" and s["model"]["input_size"] == [32, 32]
    assert s["index"]["identities"] == 20 and s["index"]["rows"] == 20 and s["index"]["images_stored"] == 20
    assert s["device"]["name"] == "cpu" and s["device"]["providers"] == ["CPUExecutionProvider"]
    assert s["generator"] is None and s["limits"]["max_upload_bytes"] == 200_000
    page = client.get("/")
    assert page.status_code == 200 and "Drop a sketch" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_openapi_documents_the_api(client):
    spec = client.get("/openapi.json").json()
    assert {"/search", "/candidates/{identity}", "/images/{name}", "/api/status"} <= set(spec["paths"])
    assert "post" in spec["paths"]["/search"] and client.get("/docs").status_code == 200


# -- candidates and gallery images ---------------------------------------------------------------------


def test_candidate_and_its_image_come_from_the_index(client, dep):
    ident = dep["ids"][4]
    c = client.get(f"/candidates/{ident}").json()
    assert c["identity"] == ident and c["rows"] == 1 and c["images"][0]["source"] == f"{ident}.png"
    r = client.get("/" + c["images"][0]["image"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    from PIL import Image

    im = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
    assert im.shape == (48, 48, 3)  # --thumbnail-size 48 shrank the 64 px photo
    from c4s_core.data.io import load_image, resize

    photo = resize(load_image(dep["photos"] / f"{ident}.png"), 48).astype(int)
    assert np.abs(im.astype(int) - photo).mean() < 6  # JPEG of the same photo
    # the file is the one inside the index
    name = c["images"][0]["image"].split("/")[-1]
    assert r.content == (dep["index"] / "thumbs" / name).read_bytes()


@pytest.mark.parametrize("path,codes", [
    ("/candidates/nobody", {404}),
    ("/candidates/%2E%2E", {400, 404}),
    ("/candidates/..%2F..%2Fetc%2Fpasswd", {400, 404}),
    ("/candidates/%2Fetc%2Fpasswd", {400, 404}),
    ("/candidates/a%5C..%5Cindex.json", {400}),
    ("/candidates/%00", {400}),
    ("/images/index.json", {400}),
    ("/images/..%2Findex.json", {400, 404}),
    ("/images/" + "0" * 32 + ".jpg", {404}),
    ("/images/%2Fetc%2Fpasswd", {400, 404}),
    ("/images/../index.json", {404}),
])
def test_path_like_ids_are_rejected(client, path, codes):
    r = client.get(path)
    assert r.status_code in codes, (path, r.status_code, r.text)
    assert "root:" not in r.text and "model_hash" not in r.text
    assert r.headers["content-type"].startswith("application/json")


# -- bad uploads --------------------------------------------------------------------------------------


def huge_png_header(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h (only the header and one tiny IDAT): must be refused unread."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_uploads_get_4xx_with_a_message_and_the_server_stays_up(client, dep):
    good = dep["sketches"][1].read_bytes()
    cases = {
        "text": (b"hello, this is not an image\n" * 10, "notes.txt", "text/plain", 415, "not an image"),
        "truncated": (good[: len(good) // 2], "cut.png", "image/png", 400, "corrupt or truncated"),
        "empty": (b"", "empty.png", "image/png", 400, "empty upload"),
        "too large": (good + b"\0" * 250_000, "big.png", "image/png", 413, "upload limit"),
        "huge dims": (huge_png_header(60_000, 60_000), "bomb.png", "image/png", 413, "pixels"),
        "long side": (png_bytes(np.zeros((10, 5000, 3), np.uint8)), "wide.png", "image/png", 413, "px a side"),
        "svg": (b'<svg xmlns="http://www.w3.org/2000/svg"/>', "x.svg", "image/svg+xml", 415, "PNG"),
        "tiff refused": (_tiff(), "x.tif", "image/tiff", 415, "not an image"),
    }
    for what, (data, name, ctype, code, msg) in cases.items():
        r = upload(client, data, name=name, ctype=ctype)
        assert r.status_code == code, (what, r.status_code, r.text)
        assert msg in r.json()["detail"], (what, r.text)
    r = client.post("/search", files={"other": ("a.png", good, "image/png")})
    assert r.status_code == 422 and "image" in r.text
    # still serving
    assert upload(client, good).status_code == 200 and client.get("/api/status").status_code == 200


def _tiff() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="TIFF")
    return buf.getvalue()


def test_body_limit_holds_without_content_length(client, dep):
    """A chunked upload larger than the limit is cut off with a 4xx, whatever it claims."""
    data = (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + dep["sketches"][0].read_bytes() + b"\0" * 400_000 + b"\r\n--xyz--\r\n")

    def chunks():
        for i in range(0, len(data), 32_768):
            yield data[i:i + 32_768]

    r = client.post("/search", content=chunks(), headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
    assert r.status_code == 413 and "upload limit" in r.json()["detail"]
    assert upload(client, dep["sketches"][0].read_bytes()).status_code == 200


def test_decode_upload_matches_load_image(dep):
    from c4s_core.data.io import load_image

    p = dep["sketches"][2]
    assert np.array_equal(decode_upload(p.read_bytes()), load_image(p))


# -- token, host, binding ------------------------------------------------------------------------------


def test_token_is_required_on_every_request(service, dep):
    c = TestClient(create_app(service, token=TOKEN), base_url=BASE)
    data = dep["sketches"][0].read_bytes()
    for path in ("/api/status", "/openapi.json", "/docs", "/static/app.js", "/candidates/" + dep["ids"][0]):
        assert c.get(path).status_code == 401, path
    r = upload(c, data)
    assert r.status_code == 401 and "token" in r.json()["detail"]
    assert c.get("/api/status", headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    assert c.get("/api/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert c.get("/api/status", headers={"X-C4S-Token": TOKEN}).status_code == 200
    assert c.post("/search", files={"image": ("s.png", data, "image/png")},
                  headers={"X-C4S-Token": TOKEN}).status_code == 200
    # a browser gets the sign-in form, and a session cookie once it signs in
    page = c.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 401 and 'name="token"' in page.text
    assert c.post("/login", data={"token": "nope"}).status_code == 401
    assert COOKIE not in c.cookies
    r = c.post("/login", data={"token": TOKEN}, follow_redirects=False)
    assert r.status_code == 303 and "httponly" in r.headers["set-cookie"].lower()
    assert TOKEN not in r.headers["set-cookie"]
    assert c.get("/").status_code == 200 and c.get("/api/status").status_code == 200
    forged = TestClient(create_app(service, token=TOKEN), base_url=BASE, cookies={COOKIE: "forged"})
    assert forged.get("/api/status").status_code == 401


def test_binding_policy(dep):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")
    kw = {"index": dep["index"], "model": dep["model"]}
    with pytest.raises(ConfigError, match="--token"):
        build_server(**kw, host="0.0.0.0")
    with pytest.raises(ConfigError, match="16 characters"):
        build_server(**kw, host="0.0.0.0", token="short")
    app, url = build_server(**kw, host="0.0.0.0", token=TOKEN)
    assert url == "http://0.0.0.0:8000/" and app.token == TOKEN
    app, _ = build_server(**kw, host="0.0.0.0", insecure=True)
    assert app.token is None and app.allowed_hosts is None
    from c4s_core.serve import serve_command

    res = CliRunner().invoke(serve_command, ["--index", str(dep["index"]), "--model", str(dep["model"]),
                                             "--host", "0.0.0.0"], env={"C4S_SERVE_TOKEN": None})
    assert res.exit_code != 0 and "--token" in res.output and "--insecure" in res.output


def test_loopback_server_refuses_other_host_names(dep):
    """Without a token, only loopback Host headers are answered (DNS rebinding)."""
    app, url = build_server(dep["index"], dep["model"])
    assert url == "http://127.0.0.1:8000/"
    assert TestClient(app, base_url=BASE).get("/api/status").status_code == 200
    assert TestClient(app, base_url="http://localhost:8000").get("/api/status").status_code == 200
    r = TestClient(app, base_url="http://attacker.example:8000").get("/api/status")
    assert r.status_code == 400 and "not served here" in r.json()["detail"]


def test_wrong_model_is_refused(dep, tmp_path):
    other = tmp_path / "other.onnx"
    other.write_bytes(dep["model"].read_bytes())
    SearchService(dep["index"], other)  # the same bytes under another name: the same model
    import onnx

    m = onnx.load(str(dep["model"]))
    m.doc_string = "changed"
    onnx.save(m, str(other))
    from c4s_core.index import ModelMismatchError

    with pytest.raises(ModelMismatchError, match="not by this model"):
        SearchService(dep["index"], other)


# -- index thumbnails and reload ------------------------------------------------------------------------


def test_thumbnails_are_content_addressed_and_cleaned_up(tmp_path):
    from c4s_core.index import GalleryIndex, IndexError_

    gi = GalleryIndex.create(tmp_path / "g", model_hash="m" * 64, embedding_dim=4)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (40, 30, 3), dtype=np.uint8) for _ in range(3)]
    names = [gi.put_thumbnail(im, max_side=20) for im in imgs]
    assert len(set(names)) == 3 and names[0] == gi.put_thumbnail(imgs[0], max_side=20)
    with pytest.raises(IndexError_, match="put_thumbnail"):
        gi.add(["x"], np.ones((1, 4)), thumbnails=["../../etc/passwd"])
    gi.add(["a", "b", "c"], rng.standard_normal((3, 4)), ["a.png", "b.png", "c.png"], thumbnails=names)
    orphan = gi.put_thumbnail(imgs[0][:20], max_side=20)
    gi.save()
    gi = GalleryIndex.open(tmp_path / "g", verify=True)
    from PIL import Image

    assert Image.open(gi.thumbnail_path(1)).size == (15, 20)  # shrunk to 20 px, aspect kept
    assert not (tmp_path / "g" / "thumbs" / orphan).exists()
    assert gi.summary()["thumbnails"] == 3
    with pytest.raises(IndexError_, match="not in this index"):
        gi.thumbnail_path(3)
    with pytest.raises(IndexError_, match="not in this index"):
        gi.thumbnail_path("../index.json")
    gi.remove(["b"])
    gi.save()
    assert sorted(p.name for p in (tmp_path / "g" / "thumbs").iterdir()) == sorted([names[0], names[2]])
    (tmp_path / "g" / "thumbs" / names[0]).write_bytes(b"tampered")
    with pytest.raises(IndexError_, match="thumbnail missing or damaged"):
        GalleryIndex.open(tmp_path / "g", verify=True)


def test_enroll_without_thumbnails_serves_no_images(dep, tmp_path):
    from c4s_core.match_cli import match

    g = tmp_path / "g"
    res = CliRunner().invoke(match, ["enroll", "--model", str(dep["model"]), "--photos", str(dep["photos"]),
                                     "--index", str(g), "--thumbnail-size", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert not (g / "thumbs").exists()
    c = TestClient(create_app(SearchService(g, dep["model"])), base_url=BASE)
    hits = upload(c, dep["sketches"][0].read_bytes()).json()["hits"]
    assert hits and all(h["image"] is None for h in hits)


def test_index_changes_are_picked_up_while_serving(dep, tmp_path):
    import shutil

    from c4s_core.index import GalleryIndex

    g = tmp_path / "g"
    shutil.copytree(dep["index"], g)
    svc = SearchService(g, dep["model"])
    c = TestClient(create_app(svc), base_url=BASE)
    probe = dep["sketches"][3]
    before = upload(c, probe.read_bytes(), top_k=1).json()["hits"][0]
    gi = GalleryIndex.open(g)
    vec = svc.embedder.run(svc.align(decode_upload(probe.read_bytes()))[0][None])
    gi.add(["exact_match"], vec, ["new.png"], thumbnails=[gi.put_thumbnail(np.zeros((20, 20, 3), np.uint8))])
    gi.save()
    svc._checked = float("-inf")  # skip the 1 s throttle
    after = upload(c, probe.read_bytes(), top_k=2).json()
    assert after["hits"][0]["identity"] == "exact_match" and after["hits"][0]["score"] == pytest.approx(1, abs=1e-5)
    assert after["hits"][1]["identity"] == before["identity"]
    assert c.get("/candidates/exact_match").status_code == 200
    assert c.get("/api/status").json()["index"]["rows"] == 21


# -- the optional generator ---------------------------------------------------------------------------


def test_sketches_without_generator_is_a_clear_404(client, dep):
    r = client.post(f"/candidates/{dep['ids'][0]}/sketches", data={"count": "1"})
    assert r.status_code == 404 and "--generator" in r.json()["detail"]


def test_generated_sketches_with_a_tiny_generator(dep, tmp_path):
    reg = c4s_core.get_registries().generator
    if "diffusion" not in reg:
        pytest.skip("the diffusion generator plugin is not registered")
    tiny_clip = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8,
                                                  "head_width": 16},
                 "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    try:
        gen = reg.build("diffusion", {
            "preset": "tiny", "device": "cpu", "ema_decay": 0.0,
            "conditioners": [{"name": "clip_image", "options": {"model_config": tiny_clip}},
                             {"name": "clip_text", "options": {"model_config": tiny_clip}}]})
        from c4s_core.data.io import load_image

        photos = [np.array(load_image(p)) for p in sorted(dep["photos"].glob("*.png"))[:4]]
        sketches = np.stack([load_image(p) for p in dep["sketches"][:4]])
        from c4s_core.data.io import resize

        sketches = np.stack([resize(s, gen.size) for s in sketches])
        tokens = gen.encode_conditions(photos, ["pencil"] * 4)
        gen.fit(sketches, tokens, out=tmp_path / "fit", steps=2, batch_size=2, lr=1e-3, checkpoint_every=0,
                progress=False)
        gen.save_pretrained(tmp_path / "gen")
    except Exception as err:  # noqa: BLE001 - another engineer is finishing the generator
        pytest.skip(f"cannot train a tiny diffusion generator here: {type(err).__name__}: {err}")
    svc = SearchService(dep["index"], dep["model"], generator=tmp_path / "gen", generator_device="cpu",
                        generator_steps=2, default_style="pencil")
    c = TestClient(create_app(svc), base_url=BASE)
    st = c.get("/api/status").json()["generator"]
    assert st["loaded"] is False and "pencil" in st["styles"]  # lazy
    ident = dep["ids"][2]
    r = c.post(f"/candidates/{ident}/sketches", data={"style": "charcoal", "count": "2", "seed": "3"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["style"] == "charcoal" and len(out["images"]) == 2
    from PIL import Image

    ims = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))) for u in out["images"]]
    assert all(im.shape == (gen.size, gen.size, 3) for im in ims)
    assert c.get("/api/status").json()["generator"]["loaded"] is True
    again = c.post(f"/candidates/{ident}/sketches", data={"style": "charcoal", "count": "2", "seed": "3"}).json()
    assert again["images"] == out["images"]  # seeded
    r = c.post(f"/candidates/{ident}/sketches", data={"style": "../../etc/passwd"})
    assert r.status_code == 422 and "not one of" in r.json()["detail"]
    assert c.post(f"/candidates/{ident}/sketches", data={"count": "99"}).status_code == 422


# -- under load, and other stores ---------------------------------------------------------------------


def test_searches_while_enrolling_see_whole_generations_only(dep, tmp_path):
    import shutil
    import threading

    from c4s_core.gallery import GalleryIndex

    g = tmp_path / "g"
    shutil.copytree(dep["index"], g)
    svc = SearchService(g, dep["model"], backend="int8")
    svc.gallery.every_s = 0.0  # look for a new generation in every request
    probe = decode_upload(dep["sketches"][0].read_bytes())
    vec = svc.embedder.run(svc.align(probe)[0][None])[0]
    committed = {svc.index.generation: len(svc.index)}
    answers, errors, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                answers.append(svc.search(probe, top_k=5))
            except Exception as err:  # noqa: BLE001 - every failure is the test's business
                errors.append(repr(err))

    def writer():
        rng = np.random.default_rng(0)
        for _ in range(6):
            gi = GalleryIndex.open(g)
            gen = gi.generation + 1
            gi.add([f"w{gen:05d}_{k}" for k in range(3)], vec[None] + 0.01 * rng.standard_normal((3, len(vec))))
            committed[gen] = len(gi)  # known before the commit, so no reader sees an unknown generation
            gi.save()
            time.sleep(0.05)  # a reload between commits

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    w = threading.Thread(target=writer)
    w.start()
    w.join()
    deadline = time.monotonic() + 30  # let the readers reach the last commit
    while time.monotonic() < deadline and not any(a["index_generation"] == max(committed) for a in answers[-8:]):
        time.sleep(0.05)
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    seen = {a["index_generation"] for a in answers}
    assert len(seen) >= 2 and max(seen) == max(committed)  # reloads happened, the last commit was reached
    for a in answers:
        gen = a["index_generation"]
        assert a["index_rows"] == committed[gen]  # the rows of one whole generation
        assert all(int(h["identity"][1:6]) <= gen for h in a["hits"] if h["identity"].startswith("w"))
    last = svc.search(probe, top_k=1)["hits"][0]["identity"]
    assert last.startswith("w")  # the enrolled near-copies of the probe rank first


def test_serve_a_milvus_store(dep, tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from PIL import Image

    from c4s_core.gallery import GalleryIndex, create_store

    folder = GalleryIndex.open(dep["index"])
    uri = f"milvus:{tmp_path}/g.db?collection=served"
    st = create_store(uri, model_hash=folder.model_hash, embedding_dim=int(folder.info["embedding_dim"]),
                      model=folder.info["model"], aligner=folder.info.get("aligner"))
    thumbs = [st.put_thumbnail(np.asarray(Image.open(io.BytesIO(folder.read_thumbnail(r["thumb"])))))
              if r.get("thumb") else None for r in folder.rows]
    st.add([r["identity"] for r in folder.rows], folder.embeddings, [r["source"] for r in folder.rows], thumbnails=thumbs)
    st.save()
    st.close()
    c_folder = TestClient(create_app(SearchService(dep["index"], dep["model"])), base_url=BASE)
    c_milvus = TestClient(create_app(SearchService(uri, dep["model"])), base_url=BASE)
    probe = dep["sketches"][4].read_bytes()
    a, b = upload(c_folder, probe, top_k=5).json(), upload(c_milvus, probe, top_k=5).json()
    assert [(h["identity"], round(h["score"], 4)) for h in a["hits"]] == [
        (h["identity"], round(h["score"], 4)) for h in b["hits"]]
    hit = b["hits"][0]
    img = c_milvus.get(f"/{hit['image']}")
    assert img.status_code == 200 and img.content[:2] == b"\xff\xd8"
    assert c_milvus.get(f"/{hit['candidate']}").json()["images"][0]["image"] == hit["image"]
    assert c_milvus.get("/api/status").json()["index"]["store"] == "milvus"
