"""echodeploy pheno (Echo2Pheno Module II): per-beat tables written here, p-values computed here independently."""

from itertools import combinations
from math import erfc, sqrt

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from echodeploy.analysis.pheno import PhenoOptions
from echodeploy.client.results.mmode_features import beat_table, good_events
from echodeploy.samples import synthetic_mmode, write_mmode_dicom

PUBLISHED_HEAD = ["", "f manual", "f automatic", "m manual", "m automatic"]
ROWS = ["LVIDs", "LVIDd", "ejection fraction", "fractional shortening"]


def exact_p(x, y) -> float:
    """Two-sided exact Mann-Whitney p (no ties) by enumerating every split of the pooled values."""
    pooled, n = np.r_[x, y], len(x)
    ranks = pooled.argsort().argsort() + 1
    observed = ranks[:n].sum()
    sums = np.array([ranks[list(c)].sum() for c in combinations(range(len(pooled)), n)])
    return min(1.0, 2 * min((sums <= observed).mean(), (sums >= observed).mean()))


def normal_p(x, y) -> float:
    """Two-sided normal approximation with continuity and tie correction."""
    pooled = pd.Series(np.r_[x, y])
    n1, n2, n = len(x), len(y), len(x) + len(y)
    u = pooled.rank().to_numpy()[:n1].sum() - n1 * (n1 + 1) / 2
    ties = pooled.value_counts().to_numpy()
    sigma = sqrt(n1 * n2 / 12 * ((n + 1) - (ties**3 - ties).sum() / (n * (n - 1))))
    return erfc(((abs(u - n1 * n2 / 2) - 0.5) / sigma) / sqrt(2))


def independent_p(x, y) -> float:
    """What scipy's default picks for groups of at most 8: exact without ties, else the normal approximation."""
    pooled = np.r_[x, y]
    return exact_p(x, y) if len(np.unique(pooled)) == len(pooled) else normal_p(x, y)


def bh(p: np.ndarray) -> np.ndarray:
    order = np.argsort(p)
    scaled = p[order] * len(p) / np.arange(1, len(p) + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1].clip(max=1)
    return q[np.argsort(order)]


def published_study(tmp_path, seed=0):
    """A per-beat table in the published tool's layout (16 mice, 1-2 files each, some bad beats) and its mice table."""
    rng = np.random.default_rng(seed)
    beats, mice = [], []
    for number in range(16):
        sex, genotype = "fm"[number // 8], ("control", "mutant")[number // 4 % 2]
        mouse = str(30500000 + number)
        shift = 0.4 if genotype == "mutant" else 0.0
        mice.append({"mouse_id": mouse, "strain": "C57BL/6N", "sex": sex, "genotype": genotype, "bw": 25.0,
                     "LVIDd_manual": round(rng.normal(3.5 + shift, 0.2), 1),
                     "LVIDs_manual": round(rng.normal(2.0 + shift, 0.2), 1),
                     "EF_manual": round(rng.normal(70, 5), 0), "FS_manual": round(rng.normal(40, 4), 0)})
        for file in range(1 + number % 2):
            for beat in range(6):
                d = rng.normal(3.5 + shift, 0.15)
                p_d, p_s = rng.uniform(0.55, 1), rng.uniform(0.55, 1)
                beats.append({"mouse_id": mouse, "file": f"{mouse}_{file}.dcm", "LVIDd_auto": d,
                              "LVIDd_auto_time": beat * 0.1, "LVIDs_auto": d * rng.uniform(0.45, 0.65),
                              "LVIDs_auto_time": beat * 0.1 + 0.04, "heart_rate_auto": rng.normal(500, 30),
                              "heart_rate_auto_time": beat * 0.1, "LVIDd_auto_quality_label": p_d,
                              "LVIDd_auto_quality_flag": "high", "LVIDs_auto_quality_label": p_s,
                              "LVIDs_auto_quality_flag": "high"})
    beats = pd.DataFrame(beats)
    beats.loc[3, ["LVIDd_auto_quality_label", "LVIDd_auto_quality_flag"]] = 0.2, "low"
    beats.loc[10, ["LVIDs_auto_quality_label", "LVIDs_auto_quality_flag"]] = 0.3, "low"
    beats.loc[20, "LVIDs_auto"] = 0.0
    beats.loc[30, "LVIDs_auto"] = beats.loc[30, "LVIDd_auto"] + 0.1
    beats.to_csv(tmp_path / "output_labeled.csv", index=False)
    pd.DataFrame(mice).to_csv(tmp_path / "manual_annotation.csv", index=False)
    return beats, pd.DataFrame(mice)


def test_published_method_reproduced_from_written_tables(tmp_path):
    beats, mice = published_study(tmp_path)
    out = tmp_path / "out"
    result = run_cli("pheno", str(tmp_path / "output_labeled.csv"), "--mice", str(tmp_path / "manual_annotation.csv"),
                     "--out", str(out))
    assert result.returncode == 0, result.stderr

    # the method, written out independently
    kept = beats[(beats["LVIDd_auto_quality_flag"] == "high") & (beats["LVIDs_auto_quality_flag"] == "high")
                 & (beats["LVIDs_auto"] != 0) & (beats["LVIDd_auto"] != 0) & (beats["LVIDd_auto"] > beats["LVIDs_auto"])]
    assert len(kept) == len(beats) - 4
    vd = 7 * kept["LVIDd_auto"] ** 3 / (2.4 + kept["LVIDd_auto"])
    vs = 7 * kept["LVIDs_auto"] ** 3 / (2.4 + kept["LVIDs_auto"])
    kept = kept.assign(EF_auto=100 * (vd - vs) / vd, FS_auto=100 * (kept["LVIDd_auto"] - kept["LVIDs_auto"])
                       / kept["LVIDd_auto"])
    means = kept.groupby("mouse_id")[["LVIDs_auto", "LVIDd_auto", "EF_auto", "FS_auto"]].mean().join(
        mice.set_index("mouse_id"))
    expected = {}
    for row, auto, manual in zip(ROWS, ["LVIDs_auto", "LVIDd_auto", "EF_auto", "FS_auto"],
                                 ["LVIDs_manual", "LVIDd_manual", "EF_manual", "FS_manual"]):
        for sex in ("f", "m", "all"):
            group = means if sex == "all" else means[means["sex"] == sex]
            control, mutant = (group[group["genotype"] == g] for g in ("control", "mutant"))
            expected[row, f"{sex} automatic"] = independent_p(control[auto], mutant[auto])
            expected[row, f"{sex} manual"] = independent_p(control[manual], mutant[manual])

    p_values = pd.read_csv(out / "p_values.csv", index_col=0, keep_default_na=False, na_values=[""])
    with open(out / "p_values.csv") as f:
        assert f.readline().split(",")[:5] == PUBLISHED_HEAD
    assert list(p_values.index[:4]) == ROWS
    for (row, column), p in expected.items():
        assert p_values.at[row, column] == pytest.approx(p, rel=1e-9), (row, column)
    tested = p_values[[c for c in p_values.columns if not c.endswith(" q")]]
    q = bh(tested.to_numpy().ravel()[~np.isnan(tested.to_numpy().ravel())])
    assert p_values[[f"{c} q" for c in tested.columns]].to_numpy().ravel()[~np.isnan(tested.to_numpy().ravel())] \
        == pytest.approx(q, rel=1e-9)
    assert np.isnan(p_values.at["heart rate", "f manual"]) and p_values.at["heart rate", "f automatic"] > 0

    table = pd.read_csv(out / "mice.csv", dtype={"mouse_id": str}).set_index("mouse_id")
    assert table["kept_beats"].to_dict() == kept.groupby("mouse_id").size().to_dict()
    np.testing.assert_allclose(table.loc[means.index, "EF_auto"], means["EF_auto"], rtol=1e-12)
    counts = pd.read_csv(out / "number_of_mice.csv", index_col=0)
    assert list(counts.columns) == ["man con", "auto con", "man mut", "auto mut"]
    assert counts.loc["f"].tolist() == [4, 4, 4, 4] and counts.loc["all"].tolist() == [8, 8, 8, 8]
    excluded = pd.read_csv(out / "excluded.csv")
    assert sorted(excluded["reason"]) == sorted(["diastole in a low-quality region", "systole in a low-quality region",
                                                 "LVIDd or LVIDs is zero", "LVIDd <= LVIDs"])
    agreement = pd.read_csv(out / "agreement.csv").set_index("quantity")
    pair = means[["LVIDd_auto", "LVIDd_manual"]]
    assert agreement.at["LVIDd", "pearson_r"] == pytest.approx(np.corrcoef(pair.T.to_numpy())[0, 1])
    assert agreement.at["LVIDd", "bias"] == pytest.approx((pair["LVIDd_auto"] - pair["LVIDd_manual"]).mean())
    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"box_lvids.png", "box_ejection_fraction.png", "agreement_scatter.png", "bland_altman.png"} <= figures
    assert "LVIDs" in result.stdout and "f manual" in result.stdout


def our_table(tmp_path):
    """A features_all.csv in our layout: good-only rows with quality columns, a failed file, a file without beats."""
    rows = []
    for file, lvids in [("a.dcm", 2.0), ("b.dcm", 2.1), ("c.dcm", 2.6), ("d.dcm", 2.7), ("e.dcm", 2.2),
                        ("lost.dcm", 2.0), ("stranger.dcm", 2.0), ("twin.dcm", 2.0), ("odd.dcm", 2.0)]:
        for beat in range(3):
            rows.append({"file": file, "mass_g": 22, "status": "ok", "error": "", "notes": "", "untrained": False,
                         "beat": beat, "lvid_d_mm": 3.6 + beat / 10, "lvid_d_time_s": beat / 8,
                         "lvid_s_mm": lvids + beat / 20, "lvid_s_time_s": beat / 8 + 0.05,
                         "heart_rate_bpm": 480.0, "heart_rate_time_s": beat / 8, "lvid_d_quality": 0.9,
                         "lvid_d_quality_flag": "high", "lvid_s_quality": 0.8, "lvid_s_quality_flag": "high"})
    table = pd.DataFrame(rows)
    table.loc[table["file"] == "e.dcm", ["lvid_s_mm", "lvid_s_quality", "lvid_s_quality_flag"]] = np.nan, 0.1, "low"
    table = pd.concat([table, pd.DataFrame([
        {"file": "broken.dcm", "mass_g": 22, "status": "no_calibration", "error": "no M-mode region", "beat": 0},
        {"file": "flat.dcm", "mass_g": 22, "status": "ok", "error": "", "beat": 0}])], ignore_index=True)
    table.to_csv(tmp_path / "features_all.csv", index=False)


def test_bad_input_gets_a_line_and_an_excluded_row(tmp_path):
    our_table(tmp_path)
    pd.DataFrame({"file": ["a.dcm", "b", "study/c.dcm", "d.dcm", "e.dcm", "twin.dcm", "twin.dcm", "odd.dcm",
                           "flat.dcm", "ghost.dcm"],
                  "mouse_id": ["A", "B", "C", "D", "E", "T1", "T2", "O", "F", "G"]}).to_csv(tmp_path / "files.csv",
                                                                                          index=False)
    pd.DataFrame({"mouse_id": ["A", "B", "C", "D", "E", "O", "X", "X", "Y", "Y", "N"],
                  "sex": ["f", "F", "f", "female", "f", "x", "m", "m", "m", "m", "m"],
                  "genotype": ["WT", "wt", "hom", "hom", "hom", "wt", "wt", "wt", "wt", "hom", "het"],
                  "LVIDs_manual": [2.0, 2.1, 2.6, 2.7, 2.2, 1, 1, 1, 1, 1, 1]}).to_csv(tmp_path / "mice.csv", index=False)
    out = tmp_path / "out"
    result = run_cli("pheno", str(tmp_path / "features_all.csv"), "--mice", str(tmp_path / "mice.csv"),
                     "--files", str(tmp_path / "files.csv"), "--control", "wt", "--mutant", "HOM", "--out", str(out),
                     "--no-figures")
    assert result.returncode == 1, result.stderr  # finished, with files and mice left out
    assert "Traceback" not in result.stderr
    excluded = pd.read_csv(out / "excluded.csv", dtype=str, keep_default_na=False)
    reasons = excluded[excluded["level"] != "beat"].groupby(
        [excluded["level"], excluded["mouse_id"] + excluded["file"]])["reason"].agg(" | ".join).to_dict()
    expected = {
        ("file", "broken.dcm"): "mmode status no_calibration: no M-mode region",
        ("file", "flat.dcm"): "no beats detected in this file",
        ("file", "lost.dcm"): "maps to no mouse",
        ("file", "stranger.dcm"): "maps to no mouse",
        ("file", "twin.dcm"): "several mice (T1, T2)",
        ("file", "ghost.dcm"): "in no per-beat table",
        ("mouse", "O"): "sex 'x' is not f or m",
        ("mouse", "N"): "genotype 'het' is neither the control label 'wt' nor the mutant label 'HOM'",
        ("mouse", "X"): "listed 2 times with identical rows: counted once",
        ("mouse", "Y"): "listed 2 times with different values: left out",
        ("mouse", "E"): "no beats left after the beat filter",
    }
    for key, reason in expected.items():
        assert reason in reasons.get(key, ""), (key, reasons.get(key))
        assert reason.split(":")[0] in result.stderr
    beats_out = excluded[excluded["level"] == "beat"]
    assert set(beats_out["file"]) == {"e.dcm"} and set(beats_out["reason"]) == {"systole in a low-quality region"}
    assert "mouse E: 0 of 3 beats kept (3 systole in a low-quality region)" in result.stderr

    tests = pd.read_csv(out / "tests.csv", keep_default_na=False, na_values=[""])
    f_auto = tests[(tests["quantity"] == "LVIDs") & (tests["sex"] == "f") & (tests["source"] == "automatic")].iloc[0]
    assert (f_auto["n_control"], f_auto["n_mutant"]) == (2, 2)  # E has no kept beats
    assert f_auto["p"] == pytest.approx(exact_p([2.05, 2.15], [2.65, 2.75]))
    f_manual = tests[(tests["quantity"] == "LVIDs") & (tests["sex"] == "f") & (tests["source"] == "manual")].iloc[0]
    assert (f_manual["n_control"], f_manual["n_mutant"]) == (2, 3)  # E's manual read still counts
    m_auto = tests[(tests["quantity"] == "LVIDs") & (tests["sex"] == "m") & (tests["source"] == "automatic")].iloc[0]
    assert np.isnan(m_auto["p"]) and "too few mice" in m_auto["reason"]
    no_column = tests[(tests["quantity"] == "LVIDd") & (tests["source"] == "manual")]
    assert no_column["reason"].str.contains("no LVIDd_manual column").all()
    p_values = pd.read_csv(out / "p_values.csv", index_col=0)
    assert np.isnan(p_values.at["LVIDs", "m automatic"]) and "no p-value for m automatic" in result.stderr

    pd.DataFrame({"file": ["a.dcm"], "lvid_d_mm": [3.0], "lvid_s_mm": [2.0]}).to_csv(tmp_path / "old.csv", index=False)
    old = run_cli("pheno", str(tmp_path / "old.csv"), "--mice", str(tmp_path / "mice.csv"), "--out", str(out))
    assert old.returncode == 2 and "without per-event quality" in old.stderr and "Traceback" not in old.stderr
    wrong = run_cli("pheno", str(tmp_path / "mice.csv"), "--mice", str(tmp_path / "mice.csv"), "--out", str(out))
    assert wrong.returncode == 2 and "not a per-beat table: missing file" in wrong.stderr


def test_beat_table_carries_event_quality():
    _, mask = synthetic_mmode(length=1200, heart_rate_bpm=500, seed=2)
    lvid = mask.sum(0) * 0.0115
    quality = np.where(np.arange(1200) < 600, 0.9, 0.2)
    every = beat_table(lvid, 0.00083334, quality, all_events=True)
    times = (every["lvid_d_time_s"] / 0.00083334).round().astype(int)
    assert (every["lvid_d_quality"] == quality[times]).all()
    assert (every["lvid_d_quality_flag"] == np.where(times < 600, "high", "low")).all()
    assert every["lvid_d_mm"].notna().all() and (every["lvid_d_quality_flag"] == "low").any()
    default = beat_table(lvid, 0.00083334, quality)
    assert default.equals(good_events(every))
    assert default["lvid_d_mm"].notna().sum() == (every["lvid_d_quality_flag"] == "high").sum()
    assert (default.loc[default["lvid_d_quality_flag"] == "low", "lvid_d_mm"].isna()).all()


@pytest.mark.slow
def test_mmode_to_pheno_end_to_end(mmode_repository, tmp_path):
    data = tmp_path / "study"
    for i in range(4):
        write_mmode_dicom(data / f"m{i}.dcm", synthetic_mmode(length=800, heart_rate_bpm=420 + 60 * i, seed=i,
                                                              lvid_s_px=50 + 5 * i)[0])
    (data / "garbage.dcm").write_bytes(b"\0" * 50)
    out = tmp_path / "mmode"
    run = run_cli("mmode", str(data), "--mass", "22", "--out", str(out), "--repository", str(mmode_repository),
                  "--write", "all", "--all-beats", "--no-figures")
    assert run.returncode == 1, run.stderr  # garbage.dcm
    every = pd.read_csv(out / "features_all.csv")
    pd.DataFrame({"file": [f"m{i}.dcm" for i in range(4)], "mouse_id": list("ABCD")}).to_csv(tmp_path / "files.csv",
                                                                                          index=False)
    pd.DataFrame({"mouse_id": list("ABCDE"), "sex": "f", "genotype": ["control", "control", "mutant", "mutant",
                                                                     "mutant"]}).to_csv(tmp_path / "mice.csv",
                                                                                        index=False)
    args = ["--mice", str(tmp_path / "mice.csv"), "--files", str(tmp_path / "files.csv"), "--no-figures"]
    pheno = run_cli("pheno", str(out / "features_all.csv"), "--out", str(tmp_path / "all"), *args)
    assert pheno.returncode == 1, pheno.stderr  # garbage.dcm and mouse E are reported

    ok = every[every["status"] == "ok"]
    good = ok[(ok["lvid_d_quality_flag"] == "high") & (ok["lvid_s_quality_flag"] == "high")
              & (ok["lvid_s_mm"] > 0) & (ok["lvid_d_mm"] > ok["lvid_s_mm"])]
    assert 0 < len(good) < len(ok)  # the untrained quality network flags both kinds of region
    mice = pd.read_csv(tmp_path / "all" / "mice.csv").set_index("mouse_id")
    assert mice.loc[list("ABCD"), "kept_beats"].tolist() == [int((good["file"] == f"m{i}.dcm").sum()) for i in range(4)]
    assert mice.loc[list("ABCD"), "beats"].tolist() == [int((ok["file"] == f"m{i}.dcm").sum()) for i in range(4)]
    excluded = pd.read_csv(tmp_path / "all" / "excluded.csv")
    assert (excluded["level"] == "beat").sum() == len(ok) - len(good)
    assert "mmode status unreadable" in excluded.loc[excluded["file"] == "garbage.dcm", "reason"].iloc[0]
    lvids = good.groupby(good["file"].map({f"m{i}.dcm": m for i, m in enumerate("ABCD")}))["lvid_s_mm"].mean()
    p_values = pd.read_csv(tmp_path / "all" / "p_values.csv", index_col=0)
    assert p_values.at["LVIDs", "f automatic"] == pytest.approx(independent_p(lvids[["A", "B"]], lvids[["C", "D"]]))

    # the default good-only table (rewritten from the journal, no inference) keeps the same beats
    again = run_cli("mmode", str(data), "--mass", "22", "--out", str(out), "--repository", str(mmode_repository),
                    "--write", "all", "--no-figures")
    assert "resuming: 5 of 5 files already done" in again.stderr
    assert len(pd.read_csv(out / "features_all.csv")) < len(every)
    run_cli("pheno", str(out / "features_all.csv"), "--out", str(tmp_path / "good"), *args)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "good" / "p_values.csv"),
                                  pd.read_csv(tmp_path / "all" / "p_values.csv"))
    columns = ["kept_beats", "LVIDs_auto", "LVIDd_auto", "EF_auto", "FS_auto", "heart_rate_auto"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "good" / "mice.csv", index_col="mouse_id")[columns],
                                  mice[columns])


def test_options_are_checked():
    with pytest.raises(Exception, match="must differ"):
        PhenoOptions(control="WT", mutant="wt")
    with pytest.raises(Exception, match="at least 1"):
        PhenoOptions(min_mice=0)
