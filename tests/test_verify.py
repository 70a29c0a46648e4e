"""`viadk8s verify`: a real run's stored result re-checked, then its files tampered with one by one."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import Cli, padim_spec
from viadk8s.lock import lock_sha256
from viadk8s.pixel_summary import PIXEL_METRICS, PIXEL_SUMMARY, PIXEL_TOLERANCE, PixelSummary


def test_verify_passes_a_real_run_and_catches_each_tampering(cli: Cli, tiny_config: Path, tmp_path: Path) -> None:
    done = cli("worker", "--spec", "-", "--config", str(tiny_config), stdin=json.dumps(padim_spec(sweep="v")))
    assert done.returncode == 0, done.stderr[-2000:]
    (result_path,) = (tmp_path / "store" / "runs" / "v").glob("*/result.json")
    scores_path = result_path.with_name("scores.csv")
    original_result, original_scores = result_path.read_text(), scores_path.read_bytes()
    assert json.loads(original_result)["scores_sha256"] == hashlib.sha256(original_scores).hexdigest()

    def verify() -> tuple[int, list[str]]:
        found = cli("verify", "--sweep", "v", "--config", str(tiny_config))
        return found.returncode, found.stdout.splitlines()

    code, lines = verify()
    assert code == 0, lines
    assert lines[-1] == "verified 1 runs of sweep v: 0 disagreements, 0 warnings"
    # the stored pixel summary reproduces the run's (exact) pixel metrics, images in scores.csv's order
    summary_path = result_path.with_name(PIXEL_SUMMARY)
    summary = PixelSummary.from_bytes(summary_path.read_bytes())
    reported = json.loads(original_result)["metrics"]
    assert summary.metrics() == pytest.approx({m: reported[m] for m in PIXEL_METRICS}, abs=PIXEL_TOLERANCE)
    assert summary.images.tolist() == pd.read_csv(scores_path)["image_path"].tolist()
    # and gives the pixel metrics their intervals in aggregate --ci, as scores.csv the image metrics'
    ci = cli("aggregate", "--sweep", "v", "--config", str(tiny_config), "--ci", "--metrics", "pixel_AUPRO,pixel_F1Max")
    assert ci.returncode == 0 and len(re.findall(r"\d\.\d \[\d+\.\d, \d+\.\d\]", ci.stdout)) >= 2, ci.stdout

    # the sweep is the evaluation experiment on a synthetic dataset: the paper comparison is one note
    paper = cli("aggregate", "--sweep", "v", "--config", str(tiny_config), "--against", "paper")
    assert paper.returncode == 0 and "note: the paper's Tables 11-15 do not report the evaluation experiment" in paper.stderr

    # the highest-scored bad image now scored below every good one: AUROC drops, so does its interval
    scores = pd.read_csv(scores_path)
    top_bad = scores.loc[scores["label"] == 1, "score"].idxmax()
    scores.loc[top_bad, "score"] = scores["score"].min() - 1
    scores.to_csv(scores_path, index=False)
    code, lines = verify()
    problems = [line for line in lines if line.startswith("error: ")]
    assert code == 1 and len(problems) == 3, lines
    assert "sha256 differs" in problems[0]
    assert "image metrics disagree with scores.csv: image_AUROC reported" in problems[1]
    assert "intervals disagree with a recomputation: image_AUROC stored" in problems[2]
    assert lines[-1] == "verified 1 runs of sweep v: 3 disagreements, 0 warnings"

    # a result written before results kept the hash still loads; the metrics still catch the edit
    older = json.loads(original_result)
    del older["scores_sha256"]
    result_path.write_text(json.dumps(older))
    code, lines = verify()
    assert code == 1 and not any("sha256 differs" in line for line in lines)
    assert any("image metrics disagree" in line for line in lines)
    assert any("1 run(s) recorded no scores.csv sha256" in line for line in lines)

    # untouched scores, an edited interval: only the intervals disagree
    scores_path.write_bytes(original_scores)
    edited = json.loads(original_result)
    edited["uncertainty"]["intervals"]["image_PB2"] = [0.0, 0.01]
    result_path.write_text(json.dumps(edited))
    code, lines = verify()
    (error,) = [line for line in lines if line.startswith("error")]
    assert code == 1 and "intervals disagree with a recomputation: image_PB2 stored [0, 0.01], recomputed" in error

    # another dependency lock is a warning, not a disagreement
    other_lock = {**json.loads(original_result), "lock_sha256": "0" * 64}
    result_path.write_text(json.dumps(other_lock))
    code, lines = verify()
    assert code == 0, lines
    assert [line for line in lines if line.startswith("warning")] == [
        f"warning: {other_lock['run_key']} (padim_tiny_tiles_seed1): ran on dependency lock 000000000000, "
        f"this environment's is {lock_sha256()[:12]}"
    ]
    assert lines[-1] == "verified 1 runs of sweep v: 0 disagreements, 1 warnings"

    # the summary's images renamed: its metrics are unchanged, its recorded sha256 is not
    result_path.write_text(original_result)
    original_summary = summary_path.read_bytes()
    assert json.loads(original_result)["pixel_summary_sha256"] == hashlib.sha256(original_summary).hexdigest()
    summary_path.write_bytes(replace(summary, images=summary.images[::-1]).to_bytes())
    code, lines = verify()
    assert code == 1 and [line for line in lines if line.startswith("error")] == [
        f"error: {other_lock['run_key']} (padim_tiny_tiles_seed1): pixel_summary.npz is not the file the run wrote "
        "(sha256 differs from result.json's)"
    ]

    # every defect pixel moved to the summary's lowest bin: the pixel metrics disagree with it
    moved = summary.regions.copy()
    moved[:, 0], moved[:, 1:] = moved.sum(-1), 0
    summary_path.write_bytes(replace(summary, regions=moved).to_bytes())
    code, lines = verify()
    errors = [line for line in lines if line.startswith("error")]
    assert code == 1 and len(errors) == 2 and "pixel metrics disagree with pixel_summary.npz: pixel_AUROC reported" in errors[1]
    summary_path.write_bytes(b"not a summary")
    code, lines = verify()
    assert code == 1 and any("pixel_summary.npz is unreadable" in line for line in lines)
    summary_path.unlink()  # a run written before runs kept one: a warning
    code, lines = verify()
    assert code == 0 and any("no pixel_summary.npz (written before runs kept one)" in line for line in lines)
