"""Fine-tuning a pretrained backbone in train-matcher: photo/sketch pair
batches, the symmetric contrastive loss, a lower backbone learning rate,
frozen stages, resume and ONNX export with dlib_r29."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from c4s_core.cli import cli
from c4s_core.pipelines import train_matcher as tm

torch = pytest.importorskip("torch")

DATA = 'data=[{dataset: {name: synthfaces, options: {num_identities: 10, size: 64, images_per_identity: 2, sketches_per_identity: 1}}}]'
SETS = ["--set", DATA, "--set", "backbone={name: dlib_r29, options: {pretrained: false, input_size: 112}}",
        "--set", "batch_size=8", "--set", "loss=pairs", "--set", "optimizer=adamw", "--set", "lr=1e-3",
        "--set", "val_fraction=0.2", "--set", "device=cpu", "--set", "threads=1", "--set", "warmup_epochs=0"]


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_epoch_pairs_are_photo_sketch_pairs_of_one_identity():
    ids = np.array(["a", "a", "a", "b", "b", "c", "d", "d"])
    mods = np.array(["photo", "photo", "sketch", "photo", "sketch", "photo", "photo", "sketch"])
    src = np.zeros(8, int)
    train = np.arange(8)
    order = tm._epoch_pairs(train, ids, mods, src, [1.0], 0, 0)
    pairs = order.reshape(-1, 2)
    assert sorted(ids[pairs[:, 0]].tolist()) == ["a", "b", "d"]  # c has no sketch: left out
    assert (mods[pairs[:, 0]] == "photo").all() and (mods[pairs[:, 1]] == "sketch").all()
    assert (ids[pairs[:, 0]] == ids[pairs[:, 1]]).all()
    assert len(tm._epoch_pairs(train, ids, mods, src, [2.0], 0, 0)) == 12  # twice over
    assert len(tm._epoch_pairs(train, ids, mods, src, [0.34], 0, 0)) == 2  # a random third
    picks = {tuple(tm._epoch_pairs(train, ids, mods, src, [1.0], 0, e).tolist()) for e in range(8)}
    assert len(picks) > 1  # a's photo and the order vary by epoch


def test_pairs_loss_rewards_matching_and_ignores_same_identity_negatives():
    z = torch.nn.functional.normalize(torch.randn(3, 16), dim=1)
    good = torch.stack([z[0], z[0], z[1], z[1], z[2], z[2]])  # each sketch equals its photo
    bad = torch.stack([z[0], z[1], z[1], z[2], z[2], z[0]])  # each sketch equals another's photo
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    assert tm._pairs_loss(good, y, 0.05) < 0.1 < tm._pairs_loss(bad, y, 0.05)
    # identity 0 drawn twice: its second pair is no negative of the first
    twice = torch.stack([z[0], z[0], z[0], z[0], z[1], z[1]])
    yt = torch.tensor([0, 0, 0, 0, 1, 1])
    loss = tm._pairs_loss(twice, yt, 0.05)
    assert torch.isfinite(loss) and loss < 0.1


def test_extra_negative_photos_compete_with_each_sketchs_photo():
    import math

    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(5, 64), dim=1)
    pairs = torch.stack([z[0], z[0], z[1], z[1], z[2], z[2]])  # each sketch equals its photo
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    base = tm._pairs_loss(pairs, y, 0.05)
    # a stranger's photo identical to sketch 0: that sketch's row becomes a two-way tie (log 2 more),
    # one of the three sketch rows, in one of the two directions (photos of pairs see sketches only)
    tie = tm._pairs_loss(torch.cat([pairs, z[0:1]]), torch.cat([y, torch.tensor([7])]), 0.05, negatives=1)
    assert abs((tie - base).item() - math.log(2) / 6) < 0.01
    # far strangers change nothing that matters; one of the same identity is no negative
    far = tm._pairs_loss(torch.cat([pairs, -z[0:1], -z[1:2]]), torch.cat([y, torch.tensor([7, 8])]), 0.05, negatives=2)
    assert abs((far - base).item()) < 1e-4
    same = tm._pairs_loss(torch.cat([pairs, z[0:1]]), torch.cat([y, torch.tensor([0])]), 0.05, negatives=1)
    assert abs((same - base).item()) < 1e-6


def test_epoch_negatives_come_from_the_pool_and_vary_by_epoch():
    pool = np.array([3, 5, 9, 11])
    a = tm._epoch_negatives(pool, 6, 3, 0, 0)
    assert a.shape == (6, 3) and set(a.ravel()) <= set(pool.tolist())
    assert all(len(set(row)) == 3 for row in a.tolist())  # without replacement when the pool allows
    assert (a == tm._epoch_negatives(pool, 6, 3, 0, 0)).all()  # resumable: a function of seed and epoch
    assert not (a == tm._epoch_negatives(pool, 6, 3, 0, 1)).all()
    assert tm._epoch_negatives(pool, 2, 6, 0, 0).shape == (2, 6)  # a small pool repeats


def test_pair_negatives_need_pairs_and_a_photo_only_source():
    with pytest.raises(ValueError, match="needs loss 'pairs'"):
        tm.Config(pair_negatives=4)
    with pytest.raises(ValueError, match="has none"):
        tm.Config(pair_negatives=4, loss="pairs")


def test_finetune_with_negative_photos_of_strangers(tmp_path):
    strangers = ('{dataset: {name: synthfaces, options: {num_identities: 12, size: 64, images_per_identity: 1, '
                 'sketches_per_identity: 1, seed: 5, prefix: other}}, modality: photo}')
    data = DATA.replace("}}]", "}}, " + strangers + "]")
    runs = {}
    for k in (0, 4):
        out = tmp_path / f"neg{k}"
        res = run_cli("train-matcher", "--out", out, "--no-progress", *SETS, "--set", data, "--set", "epochs=1",
                      "--set", f"pair_negatives={k}")
        assert res.exit_code == 0, res.output
        summary = json.loads(res.output)
        assert summary["finished"] and np.isfinite(summary["history"][0]["loss"])
        runs[k] = weights(out / "last")
    # the same seed, batches and augmentation: only the extra negatives differ
    assert any(not np.array_equal(runs[0][n], runs[4][n]) for n in runs[0])


def test_hardest_negatives_are_the_strangers_nearest_to_any_sketch():
    sketches = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), dim=1)
    cands = torch.nn.functional.normalize(torch.tensor(
        [[0.0, 0.0, 1.0], [0.9, 0.1, 0.0], [0.1, 0.0, 1.0], [0.0, 1.0, 0.2], [-1.0, 0.0, 0.0]]), dim=1)
    # nearest to sketch 0: row 1; to sketch 1: row 3; the rest are far from both
    assert tm._hardest(sketches, cands, 2).tolist() == [1, 3]
    assert tm._hardest(sketches, cands, 9).tolist()[:2] == [1, 3]  # k above the pool: every row, hardest first
    # a sketch's own person's photo (row 1, the nearest) is no stranger: it is ranked last
    own = torch.tensor([False, True, False, False, False])
    assert tm._hardest(sketches, cands, 2, own).tolist() == [3, 2]
    assert tm._hardest(sketches, cands, 5, own).tolist()[-1] == 1
    with pytest.raises(ValueError, match="set pair_negatives too"):
        tm.Config(negatives_pool=4, loss="pairs")


def _spy_mining(monkeypatch) -> list[tuple]:
    """Record (sketches, candidates, k, own candidates, own kept) for every mining call."""
    picked = []
    real_hardest = tm._hardest

    def spy(sk, cand, k, own):
        keep = real_hardest(sk, cand, k, own)
        picked.append((len(sk), len(cand), k, int(own.sum()), int(own[keep].sum())))
        return keep

    monkeypatch.setattr(tm, "_hardest", spy)
    return picked


def test_finetune_mines_hard_negatives_among_a_larger_draw(tmp_path, monkeypatch):
    strangers = ('{dataset: {name: synthfaces, options: {num_identities: 12, size: 64, images_per_identity: 1, '
                 'sketches_per_identity: 1, seed: 5, prefix: other}}, modality: photo}')
    data = DATA.replace("}}]", "}}, " + strangers + "]")
    picked = _spy_mining(monkeypatch)
    out = tmp_path / "mined"
    res = run_cli("train-matcher", "--out", out, "--no-progress", *SETS, "--set", data, "--set", "epochs=1",
                  "--set", "pair_negatives=3", "--set", "negatives_pool=4")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["finished"] and np.isfinite(summary["history"][0]["loss"])
    # every step: its sketches (batch 8 = 4 pairs; the last step fewer) against 3 x 4 drawn strangers, keeping 3;
    # none of them is one of the step's people
    assert picked[0] == (4, 12, 3, 0, 0) and all(1 <= p[0] <= 4 and p[1:] == (12, 3, 0, 0) for p in picked)
    assert json.loads((out / "run.json").read_text())["config"]["negatives_pool"] == 4


def test_mining_skips_photos_of_the_steps_own_people(tmp_path, monkeypatch):
    """A synthetic arm's people are also in the stranger pool (the experiment
    draws both from faces_utk): a step whose draw holds one of its own
    sketches' people keeps other photos, which are the negatives."""
    same = ('{dataset: {name: synthfaces, options: {num_identities: 10, size: 64, images_per_identity: 1, '
            'sketches_per_identity: 0}}, modality: photo}')
    data = DATA.replace("}}]", "}}, " + same + "]")
    picked = _spy_mining(monkeypatch)
    res = run_cli("train-matcher", "--out", tmp_path / "own", "--no-progress", *SETS, "--set", data,
                  "--set", "epochs=2", "--set", "pair_negatives=2", "--set", "negatives_pool=4")
    assert res.exit_code == 0, res.output
    assert any(n_own for *_, n_own, _ in picked)  # 8 drawn of 10 people's photos: a step's own are among them
    # kept: only strangers wherever the draw held enough of them
    assert all(kept == max(0, k - (n - n_own)) for _, n, k, n_own, kept in picked)


def test_odd_batch_size_is_refused_with_pairs():
    with pytest.raises(ValueError, match="batch_size must be even"):
        tm.Config(loss="pairs", batch_size=7)


def test_finetune_with_frozen_stem_and_lower_backbone_lr(tmp_path):
    out = tmp_path / "ft"
    res = run_cli("train-matcher", "--out", out, "--no-progress", *SETS, "--set", "epochs=2",
                  "--set", "freeze=[conv32_down, conv32_1]", "--set", "backbone_lr_scale=0.5")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["finished"] and all(np.isfinite(h["loss"]) for h in summary["history"])
    # the same network, initialised the same way, before training
    from c4s_core import get_registries

    torch.manual_seed(0)
    start = get_registries().backbone.build("dlib_r29", {"pretrained": False, "input_size": 112, "device": "cpu"})
    start = {k: v.numpy() for k, v in start.model.state_dict().items()}
    after = weights(out / "last")
    for k, v in after.items():
        if k.startswith(("conv32_down.", "conv32_1.")):
            np.testing.assert_array_equal(v, start[k], err_msg=k)  # frozen
    assert any(not np.array_equal(after[k], start[k]) for k in after if k.startswith("conv256"))


def test_freeze_names_an_unknown_prefix(tmp_path):
    res = run_cli("train-matcher", "--out", tmp_path / "x", "--no-progress", *SETS, "--set", "epochs=1",
                  "--set", "freeze=[layer1]")
    assert res.exit_code != 0 and "freeze: 'layer1' match no parameter of backbone 'dlib_r29'" in res.output


def test_finetune_resumed_equals_uninterrupted_and_exports(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert run_cli("train-matcher", "--out", ref, "--no-progress", *SETS, "--set", "epochs=2").exit_code == 0
    assert run_cli("train-matcher", "--out", run, "--no-progress", *SETS, "--set", "epochs=2",
                   "--set", "stop_after=1").exit_code == 0
    res = run_cli("train-matcher", "--out", run, "--no-progress", "--resume", *SETS, "--set", "epochs=2")
    assert res.exit_code == 0, res.output
    a, b = weights(ref / "last"), weights(run / "last")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # the matcher folder rebuilds without the pretrained store, and exports with parity
    res = run_cli("export", "--out", tmp_path / "onnx", "--no-progress",
                  "--set", f"backbone={{name: matcher, options: {{path: {ref / 'best'}}}}}",
                  "--set", "check_batches=[1, 3]", "--set", "parity={count: 4}")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["min_cosine"] >= 0.9999
