"""The report-dataset pipeline on a small procedural set."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tinyclip import TINY_CLIP

from c4s_core.data.manifest import read_manifest
from c4s_core.errors import DataError
from c4s_core.pipelines import get_pipeline


def make_set(out, jitter=1.0):
    g = get_pipeline("generate")
    g.run(g.Config(generator={"name": "procedural", "options": {"size": 32, "jitter": jitter}},
                   dataset={"name": "synthfaces", "options": {"num_identities": 3, "size": 48,
                                                              "sketches_per_identity": 0}},
                   styles=["pencil", "line_drawing"], num_per_style=3, condition_size=48,
                   id_conditioner={"name": "clip_image", "options": {"model_config": TINY_CLIP}}, out=out),
          progress=False)


def test_report_figures_and_numbers(tmp_path):
    make_set(tmp_path / "set")
    rd = get_pipeline("report-dataset")
    s = rd.run(rd.Config(path=tmp_path / "set", out=tmp_path / "rep",
                         encoder={"name": "clip_image", "options": {"model_config": TINY_CLIP}}), progress=False)
    assert s["sketches"] == 18 and s["identities"] == 3 and s["styles"] == {"line_drawing": 9, "pencil": 9}
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    sims = [r["identity_similarity"] for r in read_manifest(tmp_path / "set" / "manifest.jsonl") if r["modality"] == "sketch"]
    assert rep["identity_similarity"]["mean"] == pytest.approx(np.mean(sims))
    assert rep["identity_similarity"]["n"] == 18 and rep["similarity_encoder"] == "clip_image"
    assert 0 < rep["diversity"]["diversity_within_style"] < rep["diversity"]["diversity_identity"]
    assert rep["embedding_diversity"]["diversity_identity"] is not None
    for f in ("similarity_hist.png", "contact_sheet.png", "report.md"):
        assert (tmp_path / "rep" / f).stat().st_size > 0
    from c4s_core.data import load_image

    sheet = load_image(tmp_path / "rep" / "contact_sheet.png")
    assert sheet.shape[0] > 3 * 32 and sheet.shape[1] > 3 * 32  # 3 rows x (photo + 2 styles)
    assert "line_drawing" in (tmp_path / "rep" / "report.md").read_text()


def test_no_jitter_means_no_diversity_and_errors(tmp_path):
    make_set(tmp_path / "set", jitter=0.0)
    rd = get_pipeline("report-dataset")
    s = rd.run(rd.Config(out=tmp_path / "set"), progress=False)  # path defaults to out
    assert s["diversity_within_style"] == 0.0
    with pytest.raises(DataError, match="generate"):
        rd.run(rd.Config(path=tmp_path / "empty"), progress=False)
