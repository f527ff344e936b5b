"""`c4s seeds`: pooling experiments that differ only in the matchers' seed, on
hand-built experiment folders (results.json, config.yaml, per-probe ranks)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from c4s_core.errors import ConfigError, DataError
from c4s_core.pipelines import seeds


def fake_run(root, seed, hits, n=60, protocols=("aligned", "forensic"), arms=("real", "diffusion")):
    """An experiment folder whose arm ``a`` finds the first ``hits[a]`` of ``n`` people at rank 1 (others rank 3)."""
    root.mkdir(parents=True)
    (root / "results.json").write_text(json.dumps({"arms": list(arms), "probes": list(protocols)}))
    (root / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "matcher": {"seed": seed}}))
    for a in arms:
        for p in protocols:
            d = root / f"05-evaluate-{a}-{p}"
            d.mkdir()
            recs = [{"i": i, "probe": f"id{i:03d}", "path": f"/elsewhere/{root.name}/id{i:03d}/sketch_0.png",
                     "rank": 1 if i < hits[a] else 3} for i in range(n)]
            (d / "probes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def test_pools_seeds_and_decides_only_beyond_the_seed_noise(tmp_path):
    # diffusion is 0.30 above real at every seed: decided. Copies live in other folders (paths differ but for the last two parts).
    runs = [fake_run(tmp_path / f"s{s}", s, {"real": 20 + s, "diffusion": 38 + s}) for s in range(3)]
    cfg = seeds.Config(runs=runs, out=tmp_path / "pooled", resamples=500)
    out = seeds.run(cfg)
    assert out["seeds"] == [0, 1, 2]
    res = json.loads((tmp_path / "pooled" / "results.json").read_text())
    d = res["differences"]["diffusion"]["forensic"]
    assert d["b_per_seed"] == pytest.approx([20 / 60, 21 / 60, 22 / 60]) and d["difference"] == pytest.approx(18 / 60)
    assert d["per_seed"] == pytest.approx([0.3] * 3) and d["seed_sd"] == pytest.approx(0, abs=1e-12)
    assert d["low"] > 0 and res["verdicts"]["diffusion"]["forensic"] == "above"
    report = (tmp_path / "pooled" / "report.md").read_text()
    assert "| forensic | 0.333 / 0.350 / 0.367 | 0.633 / 0.650 / 0.667 | +0.300 |" in report
    assert (tmp_path / "pooled" / "seeds.png").read_bytes()[:4] == b"\x89PNG"


def test_one_lucky_seed_is_not_a_verdict(tmp_path):
    # +0.5 at seed 0, -0.1 and -0.1 after: the mean is positive, the seeds disagree
    hits = [{"real": 20, "diffusion": 50}, {"real": 30, "diffusion": 24}, {"real": 30, "diffusion": 24}]
    runs = [fake_run(tmp_path / f"s{s}", s, h) for s, h in enumerate(hits)]
    seeds.run(seeds.Config(runs=runs, out=tmp_path / "pooled", resamples=500))
    res = json.loads((tmp_path / "pooled" / "results.json").read_text())
    d = res["differences"]["diffusion"]["aligned"]
    assert d["difference"] == pytest.approx(np.mean([30, -6, -6]) / 60)
    assert d["probe_low"] > 0  # the seeds held fixed, it would look decided
    assert d["low"] < 0 < d["high"] and d["t_low"] < 0 and res["verdicts"]["diffusion"]["aligned"] == "not decided"


def test_refuses_what_cannot_be_pooled(tmp_path):
    a = fake_run(tmp_path / "a", 0, {"real": 20, "diffusion": 30})
    with pytest.raises(ConfigError, match="runs needs at least 2"):
        seeds.run(seeds.Config(runs=[a], out=tmp_path / "x"))
    with pytest.raises(ValueError, match="twice"):
        seeds.Config(runs=[a, tmp_path / "a"])
    same = fake_run(tmp_path / "same", 0, {"real": 20, "diffusion": 30})
    with pytest.raises(DataError, match="same seed 0"):
        seeds.run(seeds.Config(runs=[a, same], out=tmp_path / "x"))
    other = fake_run(tmp_path / "other", 1, {"real": 20, "diffusion": 30}, n=50)
    with pytest.raises(DataError, match="other probes"):
        seeds.run(seeds.Config(runs=[a, other], out=tmp_path / "x"))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    with pytest.raises(DataError, match=r"unfinished/results\.json"):
        seeds.run(seeds.Config(runs=[a, unfinished], out=tmp_path / "x"))
    gone = fake_run(tmp_path / "gone", 2, {"real": 20, "diffusion": 30})
    (gone / "05-evaluate-diffusion-forensic" / "probes.jsonl").unlink()
    with pytest.raises(DataError, match="05-evaluate-diffusion-forensic: no probes.jsonl"):
        seeds.run(seeds.Config(runs=[a, gone], out=tmp_path / "x"))
    assert not (tmp_path / "x" / "results.json").exists()
