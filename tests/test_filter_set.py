"""c4s filter-set: keep the generated sketches a recogniser matches to their photo."""

from __future__ import annotations

import json

import numpy as np
import pytest

import c4s_core
from c4s_core.data.io import save_image
from c4s_core.errors import C4SError, DataError
from c4s_core.pipelines import filter_set
from c4s_core.registry import Origin

ENC = {"name": "colour_id"}


class ColourId:
    """A test recogniser whose identity is an image's centred mean colour: the
    cosines are known in advance (random frozen networks map every image near
    one point, so they cannot tell the filter's cases apart)."""

    name = "colour_id"
    role = "identity"

    class Config(c4s_core.ComponentConfig):
        pass

    def __init__(self, config):
        self.config = config

    def encode(self, images, _texts):
        return np.stack([np.asarray(i, np.float32).reshape(-1, 3).mean(0) - 127.5 for i in images])[:, None]


@pytest.fixture(autouse=True)
def _colour_id():
    from c4s_core.plugins import get_registries

    get_registries().conditioner.register(ColourId, origin=Origin("tests", "tests", "0"))


def _face(seed: int) -> np.ndarray:
    """A flat colour, one per seed, far from the others in direction."""
    rgb = np.random.default_rng(seed).integers(0, 256, 3)
    return np.broadcast_to(rgb.astype(np.uint8), (64, 64, 3)).copy()


def _set(root, people: int = 4, copies: tuple[int, ...] = (0, 2)):
    """Each person a photo and two sketches: ``cufs_0`` is the photo itself for
    the people in ``copies`` (a perfect sketch) and another random image for the
    rest; ``cufs_1`` is always another random image."""
    rows = []
    for p in range(people):
        d = f"p{p}"
        photo = _face(p)
        save_image(root / d / "photo.png", photo)
        save_image(root / d / "cufs_0.png", photo if p in copies else _face(100 + p))
        save_image(root / d / "cufs_1.png", _face(200 + p))
        rows += [{"path": f"{d}/photo.png", "identity": d, "modality": "photo", "style": None}]
        rows += [{"path": f"{d}/cufs_{k}.png", "identity": d, "modality": "sketch", "style": "cufs", "k": k}
                 for k in (0, 1)]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_keeps_the_sketches_at_the_threshold_and_the_photos_of_their_people(tmp_path):
    from c4s_core.plugins import get_registries

    src = _set(tmp_path / "set")
    before = (src / "manifest.jsonl").read_bytes()
    out = tmp_path / "kept"
    s = filter_set.run(filter_set.Config(path=src, out=out, encoder=ENC, min_similarity=0.9999), progress=False)
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    sketches = sorted((r["identity"], r["path"].rsplit("/", 1)[1]) for r in recs if r["modality"] == "sketch")
    assert sketches == [("p0", "cufs_0.png"), ("p2", "cufs_0.png")]  # the two exact copies only
    assert sorted(r["identity"] for r in recs if r["modality"] == "photo") == ["p0", "p2"]
    assert all(r["identity_similarity"] >= 0.9999 for r in recs if r["modality"] == "sketch")
    assert (s["kept_sketches"], s["sketches"], s["kept_identities"], s["identities"]) == (2, 8, 2, 4)
    assert s["kept_by_style"]["cufs"] == {"kept": 2, "of": 8, "share": 0.25}
    assert (src / "manifest.jsonl").read_bytes() == before  # the set is never changed
    assert (out / "similarity.png").stat().st_size > 0
    # the kept manifest points into the set: the manifest dataset reads the same pixels from out
    ds = get_registries().dataset.build("manifest", {"path": str(out / "manifest.jsonl")})
    got = {(ds[i].identity, ds[i].modality): ds[i].image for i in range(len(ds))}
    assert np.array_equal(got[("p2", "sketch")], _face(2)) and np.array_equal(got[("p0", "photo")], _face(0))


def test_far_sets_the_threshold_from_the_impostor_pairs(tmp_path):
    s = filter_set.run(filter_set.Config(path=_set(tmp_path / "set", people=5, copies=(1,)), out=tmp_path / "kept",
                                         encoder=ENC, far=0.1), progress=False)
    # 10 sketches x 4 other people = 40 impostor pairs; at most 10 % of them reach the threshold
    assert s["impostor"]["n"] == 40 and not s["impostor_pairs_sampled"]
    assert s["impostor_share_accepted"] <= 0.1
    recs = [json.loads(line) for line in (tmp_path / "kept" / "manifest.jsonl").read_text().splitlines()]
    assert ("p1", 0) in {(r["identity"], r.get("k")) for r in recs if r["modality"] == "sketch"}  # the copy passes


def test_many_impostor_pairs_are_sampled_not_all_held(tmp_path, monkeypatch):
    monkeypatch.setattr(filter_set, "MAX_IMPOSTORS", 20)
    s = filter_set.run(filter_set.Config(path=_set(tmp_path / "set", people=5, copies=(1,)), out=tmp_path / "kept",
                                         encoder=ENC, far=0.1), progress=False)
    # 40 pairs, each kept with probability 1/2: 20 expected, 4 standard deviations either side
    assert s["impostor_pairs_sampled"] and 20 - 4 * 40 ** 0.5 / 2 <= s["impostor"]["n"] <= 20 + 4 * 40 ** 0.5 / 2
    assert s["impostor"]["n"] < 40


def test_threshold_at_far_admits_at_most_that_share():
    imp = np.linspace(0.0, 0.99, 100)  # 0.00, 0.01, ..., 0.99
    t = filter_set.threshold_at_far(imp, 0.05)
    assert np.mean(imp >= t) == pytest.approx(0.05)
    assert 0.94 < t <= 0.95  # 0.95 .. 0.99 accepted, 0.94 not
    t = filter_set.threshold_at_far(np.array([0.5, 0.5, 0.5, 0.2]), 0.5)  # ties cannot be split: fewer pass
    assert np.mean(np.array([0.5, 0.5, 0.5, 0.2]) >= t) <= 0.5


def test_bad_sets_and_settings_are_named(tmp_path):
    src = _set(tmp_path / "set")
    with pytest.raises(ValueError, match="far"):
        filter_set.Config(path=src, out=tmp_path / "k", encoder=ENC, far=1.5)
    with pytest.raises(C4SError, match="must differ from `path`"):
        filter_set.run(filter_set.Config(path=src, out=src, encoder=ENC, far=0.1), progress=False)
    # a sketch whose person has no reference photo
    rows = [json.loads(line) for line in (src / "manifest.jsonl").read_text().splitlines()]
    (src / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows
                                                if not (r["identity"] == "p3" and r["modality"] == "photo")))
    with pytest.raises(DataError, match=r"manifest.jsonl: 1 identities have sketches but no photo record \(e.g. p3\)"):
        filter_set.run(filter_set.Config(path=src, out=tmp_path / "k", encoder=ENC, far=0.1), progress=False)
    # a damaged sketch file is named
    src2 = _set(tmp_path / "set2")
    (src2 / "p1" / "cufs_1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"p1/cufs_1.png"):
        filter_set.run(filter_set.Config(path=src2, out=tmp_path / "k2", encoder=ENC, far=0.1), progress=False)
    # nothing reaches the threshold: an error, and the summary is on disk to look at
    with pytest.raises(DataError, match="no sketch of .* reaches the threshold"):
        filter_set.run(filter_set.Config(path=_set(tmp_path / "set3", copies=()), out=tmp_path / "k3", encoder=ENC,
                                         min_similarity=0.9999), progress=False)
    assert json.loads((tmp_path / "k3" / "filter.json").read_text())["kept_sketches"] == 0
