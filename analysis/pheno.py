"""Echo2Pheno Module II: mutant vs control mice, per sex, from per-beat M-mode tables.

The published analysis, step by step: keep the beats whose diastole and systole both lie in
good-quality regions (flag `high`), with LVIDs and LVIDd non-zero and LVIDd > LVIDs; per
beat, Teichholz volumes, ejection fraction and fractional shortening; per mouse, the mean
over all its kept beats (all its files together); per sex, a two-sided Mann-Whitney U test
with continuity correction, control vs mutant, on the per-mouse means ("automatic") and on
the mice table's manual reads ("manual"). Added here: both sexes pooled, Benjamini-Hochberg
q-values over the whole table, and a record of every beat, file and mouse left out, with why.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import false_discovery_control, mannwhitneyu, pearsonr

from echodeploy.client.results.mmode_features import teichholz_volume_ul
from echodeploy.client.runs.inputs import read_table
from echodeploy.client.runs.journal import write_csv_atomic
from echodeploy.errors import EchodeployError

# The published tool's per-beat columns, and ours (features_all.csv) renamed to them.
PUBLISHED_COLUMNS = ["mouse_id", "file", "LVIDd_auto", "LVIDd_auto_time", "LVIDs_auto", "LVIDs_auto_time",
                     "heart_rate_auto", "heart_rate_auto_time", "LVIDd_auto_quality_label", "LVIDd_auto_quality_flag",
                     "LVIDs_auto_quality_label", "LVIDs_auto_quality_flag"]
OUR_COLUMNS = {"lvid_d_mm": "LVIDd_auto", "lvid_d_time_s": "LVIDd_auto_time", "lvid_s_mm": "LVIDs_auto",
               "lvid_s_time_s": "LVIDs_auto_time", "heart_rate_bpm": "heart_rate_auto",
               "heart_rate_time_s": "heart_rate_auto_time", "lvid_d_quality": "LVIDd_auto_quality_label",
               "lvid_d_quality_flag": "LVIDd_auto_quality_flag", "lvid_s_quality": "LVIDs_auto_quality_label",
               "lvid_s_quality_flag": "LVIDs_auto_quality_flag"}
NEEDED = ["file", "LVIDd_auto", "LVIDs_auto", "LVIDd_auto_quality_flag", "LVIDs_auto_quality_flag"]
MANUAL_COLUMNS = ["LVIDs_manual", "LVIDd_manual", "EF_manual", "FS_manual"]


@dataclass(frozen=True)
class Quantity:
    label: str  # the row of p_values.csv
    auto: str  # per-beat column, and per-mouse mean in mice.csv
    manual: str | None  # mice table column of the manual read


# The first four rows are the published table's, in its order.
QUANTITIES = (
    Quantity("LVIDs", "LVIDs_auto", "LVIDs_manual"),
    Quantity("LVIDd", "LVIDd_auto", "LVIDd_manual"),
    Quantity("ejection fraction", "EF_auto", "EF_manual"),
    Quantity("fractional shortening", "FS_auto", "FS_manual"),
    Quantity("heart rate", "heart_rate_auto", None),
    Quantity("LV volume diastole", "LV_Vold_auto", None),
    Quantity("LV volume systole", "LV_Vols_auto", None),
)
SEXES = ("f", "m", "all")  # all: both sexes pooled
SOURCES = ("manual", "automatic")
SEX_NAMES = {"f": "f", "female": "f", "m": "m", "male": "m"}


@dataclass(frozen=True, kw_only=True)
class PhenoOptions:
    control: str = "control"
    mutant: str = "mutant"
    min_mice: int = 2  # per group, below which a p-value is left empty
    figures: bool = True

    def __post_init__(self):
        if self.min_mice < 1:
            raise EchodeployError(f"--min-mice must be at least 1, got {self.min_mice}")
        if _label(self.control) == _label(self.mutant):
            raise EchodeployError(f"--control and --mutant must differ, both are {self.control!r}")


@dataclass
class PhenoResult:
    p_values: pd.DataFrame
    tests: pd.DataFrame
    number_of_mice: pd.DataFrame
    mice: pd.DataFrame
    excluded: pd.DataFrame
    agreement: pd.DataFrame
    lines: list[str] = field(default_factory=list)  # what a user should read, one line each
    figures: list[Path] = field(default_factory=list)


class Exclusions:
    """Everything left out, as excluded.csv rows and as lines for the console."""

    def __init__(self):
        self.rows: list[dict] = []
        self.lines: list[str] = []

    def add(self, level: str, reason: str, *, table: str = "", file: str = "", beat=None, mouse_id: str = "",
            line: bool = True) -> None:
        self.rows.append({"level": level, "mouse_id": mouse_id, "file": file, "beat": beat, "table": table,
                          "reason": reason})
        if line:
            what = {"mouse": f"mouse {mouse_id}", "file": f"file {file}"}.get(level, f"{file or table} beat {beat}")
            self.lines.append(f"{what}: {reason}")

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["level", "mouse_id", "file", "beat", "table", "reason"])


def _label(value) -> str:
    return str(value).strip().casefold() if isinstance(value, str) else ""


def _text(series: pd.Series) -> pd.Series:
    """Identifiers as stripped text; empty and missing become ''."""
    return series.astype(object).where(series.notna(), "").astype(str).str.strip()


def read_beats(paths: list[Path], exclusions: Exclusions) -> pd.DataFrame:
    """Every per-beat table in the published column layout, with `table` and `beat`; a file found
    in an earlier table is read from that one only."""
    tables, seen = [], {}
    for path in paths:
        beats = normalise_beats(read_table(path, dtype={"mouse_id": str, "file": str}), str(path), exclusions)
        repeated = beats["file"].isin(list(seen))
        for name in beats.loc[repeated, "file"].unique():
            exclusions.add("file", f"also in {seen[name]}: read from there only", table=str(path), file=name)
        beats = beats[~repeated]
        seen.update(dict.fromkeys(beats["file"].unique(), str(path)))
        tables.append(beats)
    return pd.concat(tables, ignore_index=True)


def normalise_beats(table: pd.DataFrame, name: str, exclusions: Exclusions) -> pd.DataFrame:
    """One per-beat table (ours or the published tool's) in the published layout; rows of
    failed files and files without beats go to `exclusions`."""
    ours = "lvid_d_mm" in table.columns
    if ours:
        if "lvid_d_quality_flag" not in table.columns:
            raise EchodeployError(f"{name}: per-beat table without per-event quality (written by an older echodeploy): "
                                  "rerun `echodeploy mmode ... --write all --all-beats`")
        table = table.rename(columns=OUR_COLUMNS)
    missing = [c for c in NEEDED if c not in table.columns]
    if missing:
        raise EchodeployError(f"{name}: not a per-beat table: missing {', '.join(missing)} (expected the columns of "
                              "`echodeploy mmode --write all` or the published Echo2Pheno tool's)")
    table = table.assign(file=_text(table["file"]), table=name)
    table["mouse_id"] = _text(table["mouse_id"]) if "mouse_id" in table else ""
    if "beat" not in table:
        table["beat"] = table.groupby("file").cumcount()
    for column in ("LVIDd_auto", "LVIDs_auto", "heart_rate_auto", "LVIDd_auto_quality_label",
                   "LVIDs_auto_quality_label"):
        table[column] = pd.to_numeric(table[column], errors="coerce") if column in table else np.nan
    for column in ("LVIDd_auto_quality_flag", "LVIDs_auto_quality_flag"):
        table[column] = _text(table[column]).str.casefold()
    keep = table["file"] != ""
    for row in table[~keep].itertuples():
        exclusions.add("beat", "row without a file name", table=name, beat=row.beat)
    if ours and "status" in table:
        failed = keep & (_text(table["status"]) != "ok")
        for row in table[failed].drop_duplicates("file").itertuples():
            error = getattr(row, "error", "")
            exclusions.add("file", f"mmode status {row.status}" + (f": {error}" if isinstance(error, str) and error
                                                                    else ""), table=name, file=row.file)
        keep &= ~failed
    empty = keep & table[["LVIDd_auto", "LVIDs_auto"]].isna().all(axis=1) & (table["LVIDd_auto_quality_flag"] == "")
    for row in table[empty].drop_duplicates("file").itertuples():
        exclusions.add("file", "no beats detected in this file", table=name, file=row.file)
    return table[keep & ~empty].reset_index(drop=True)


def assign_mice(beats: pd.DataFrame, files: pd.DataFrame | None, exclusions: Exclusions) -> pd.DataFrame:
    """Beats with the mouse of their file: the file table's (file,mouse_id) where it lists the file
    (by path, name or stem), else the per-beat table's own mouse_id; files of no mouse are left out."""
    if files is not None:
        if not {"file", "mouse_id"} <= set(files.columns):
            raise EchodeployError(f"file table needs columns file,mouse_id; found {', '.join(map(str, files.columns))}")
        files = files.assign(file=_text(files["file"]), mouse_id=_text(files["mouse_id"]))
        files = files[(files["file"] != "") & (files["mouse_id"] != "")].drop_duplicates(["file", "mouse_id"])
        lookup: dict[str, set[str]] = {}
        for name, mouse in zip(files["file"], files["mouse_id"]):
            for key in {name, Path(name).name, Path(name).stem}:
                lookup.setdefault(key, set()).add(mouse)
        used = set()
        for name in beats["file"].unique():
            key = next((k for k in (name, Path(name).name, Path(name).stem) if k in lookup), None)
            if key is None:
                continue
            mice = lookup[key]
            used.add(key)
            own = set(beats.loc[beats["file"] == name, "mouse_id"]) - {""}
            if len(mice) > 1:
                reason = f"the file table gives it several mice ({', '.join(sorted(mice))})"
            elif own and own != mice:
                reason = f"mouse {', '.join(sorted(own))} in its table but {next(iter(mice))} in the file table"
            else:
                beats.loc[beats["file"] == name, "mouse_id"] = next(iter(mice))
                continue
            exclusions.add("file", reason, file=name)
            beats = beats[beats["file"] != name]
        seen = {r["file"] for r in exclusions.rows if r["file"]}  # files of the tables left out before
        for name in files["file"]:
            if not {name, Path(name).name, Path(name).stem} & used and not {name, Path(name).name} & seen:
                exclusions.add("file", "in the file table but in no per-beat table", file=name)
    unmapped = beats["mouse_id"] == ""
    for name in beats.loc[unmapped, "file"].unique():
        exclusions.add("file", "maps to no mouse: its table has no mouse_id and the file table (--files) "
                       "does not list it", file=name)
    return beats[~unmapped].reset_index(drop=True)


def read_mice(table: pd.DataFrame, options: PhenoOptions, exclusions: Exclusions) -> pd.DataFrame:
    """The mice table indexed by mouse_id, with `sex` as f/m, `group` control/mutant (or '' and the
    reason in `left_out`), manual reads as numbers."""
    missing = [c for c in ("mouse_id", "sex", "genotype") if c not in table.columns]
    if missing:
        raise EchodeployError(f"mice table: missing {', '.join(missing)} (needs mouse_id, sex, genotype; optional "
                              f"strain, type, bw, {', '.join(MANUAL_COLUMNS)})")
    table = table.assign(mouse_id=_text(table["mouse_id"]))
    for position in np.flatnonzero(table["mouse_id"] == ""):
        exclusions.add("mouse", f"row {position + 2} of the mice table has no mouse_id", mouse_id="")
    table = table[table["mouse_id"] != ""]
    repeated = table["mouse_id"].duplicated(keep=False)
    conflicting = set()
    for mouse, rows in table[repeated].groupby("mouse_id"):
        if len(rows.astype(str).drop_duplicates()) == 1:
            exclusions.add("mouse", f"listed {len(rows)} times with identical rows: counted once", mouse_id=mouse)
        else:
            conflicting.add(mouse)
            exclusions.add("mouse", f"listed {len(rows)} times with different values: left out", mouse_id=mouse)
    mice = table[~table["mouse_id"].isin(conflicting)].drop_duplicates("mouse_id").set_index("mouse_id")
    for column in MANUAL_COLUMNS:
        if column in mice:
            numbers = pd.to_numeric(mice[column], errors="coerce")
            bad = numbers.isna() & (_text(mice[column]) != "")
            for mouse in mice.index[bad]:
                exclusions.add("mouse", f"{column} {mice.at[mouse, column]!r} is not a number: left empty",
                               mouse_id=mouse)
            mice[column] = numbers
    sexes = _text(mice["sex"]).str.casefold().map(SEX_NAMES)
    labels = {_label(options.control): "control", _label(options.mutant): "mutant"}
    groups = _text(mice["genotype"]).str.casefold().map(labels)
    mice["left_out"] = ""
    for mouse in mice.index:
        reason = ""
        if not isinstance(sexes[mouse], str):
            reason = f"sex {mice.at[mouse, 'sex']!r} is not f or m"
        elif not isinstance(groups[mouse], str):
            reason = (f"genotype {mice.at[mouse, 'genotype']!r} is neither the control label {options.control!r} "
                      f"nor the mutant label {options.mutant!r}")
        if reason:
            mice.at[mouse, "left_out"] = reason
            exclusions.add("mouse", reason + ": left out", mouse_id=mouse)
    mice["sex"], mice["group"] = sexes.fillna(_text(mice["sex"])), groups.fillna("")
    return mice


def filter_beats(beats: pd.DataFrame, exclusions: Exclusions) -> pd.DataFrame:
    """The published beat filter; every beat left out goes to `exclusions` with its reason."""
    d_flag, s_flag = beats["LVIDd_auto_quality_flag"], beats["LVIDs_auto_quality_flag"]
    d, s = beats["LVIDd_auto"], beats["LVIDs_auto"]
    reasons = np.select(
        [s_flag == "", (d_flag != "high") & (s_flag != "high"), d_flag != "high", s_flag != "high",
         (d == 0) | (s == 0), d.isna() | s.isna(), ~(d > s)],
        ["no systole detected", "diastole and systole in low-quality regions", "diastole in a low-quality region",
         "systole in a low-quality region", "LVIDd or LVIDs is zero", "LVIDd or LVIDs missing", "LVIDd <= LVIDs"],
        "")
    for row, reason in zip(beats[reasons != ""].itertuples(), reasons[reasons != ""]):
        exclusions.add("beat", str(reason), table=row.table, file=row.file, beat=row.beat, mouse_id=row.mouse_id,
                       line=False)
    kept = beats[reasons == ""].copy()
    kept["LV_Vold_auto"] = teichholz_volume_ul(kept["LVIDd_auto"])
    kept["LV_Vols_auto"] = teichholz_volume_ul(kept["LVIDs_auto"])
    kept["EF_auto"] = 100 * (kept["LV_Vold_auto"] - kept["LV_Vols_auto"]) / kept["LV_Vold_auto"]
    kept["FS_auto"] = 100 * (kept["LVIDd_auto"] - kept["LVIDs_auto"]) / kept["LVIDd_auto"]
    return kept


def mouse_table(mice: pd.DataFrame, beats: pd.DataFrame, kept: pd.DataFrame, exclusions: Exclusions) -> pd.DataFrame:
    """mice.csv: each mouse with its group, files, kept/total beats and per-mouse means."""
    autos = [q.auto for q in QUANTITIES]
    table = mice.copy()
    table["files"] = beats.groupby("mouse_id")["file"].nunique().reindex(table.index).fillna(0).astype(int)
    table["beats"] = beats.groupby("mouse_id").size().reindex(table.index).fillna(0).astype(int)
    table["kept_beats"] = kept.groupby("mouse_id").size().reindex(table.index).fillna(0).astype(int)
    table = table.join(kept.groupby("mouse_id")[autos].mean())
    for mouse in table.index[(table["left_out"] == "") & (table["kept_beats"] == 0)]:
        reason = ("no beats left after the beat filter" if table.at[mouse, "beats"] else "no per-beat rows (no files)")
        exclusions.add("mouse", reason + ": no automatic values (manual reads still count)", mouse_id=mouse)
    lead = ["sex", "genotype", "group", "left_out", "files", "beats", "kept_beats", *autos]
    table = table[lead + [c for c in table.columns if c not in lead]]
    return table.reset_index()


def beat_summary(beats: pd.DataFrame, exclusions: Exclusions) -> list[str]:
    """One line per mouse with beats left out: how many of its beats were kept and why not the rest."""
    left = pd.DataFrame([r for r in exclusions.rows if r["level"] == "beat" and r["mouse_id"]])
    if left.empty:
        return []
    totals = beats.groupby("mouse_id").size()
    lines = []
    for mouse, rows in left.groupby("mouse_id"):
        why = ", ".join(f"{n} {reason}" for reason, n in rows["reason"].value_counts().items())
        lines.append(f"mouse {mouse}: {totals[mouse] - len(rows)} of {totals[mouse]} beats kept ({why})")
    return lines


def compare_groups(mice: pd.DataFrame, min_mice: int) -> pd.DataFrame:
    """tests.csv: one Mann-Whitney U test per quantity, sex (f, m, pooled) and source, or the reason why not."""
    usable = mice[mice["left_out"] == ""]
    rows = []
    for quantity in QUANTITIES:
        for sex in SEXES:
            subset = usable if sex == "all" else usable[usable["sex"] == sex]
            for source in SOURCES:
                column = quantity.manual if source == "manual" else quantity.auto
                row = {"quantity": quantity.label, "sex": sex, "source": source, "column": column or "",
                       "n_control": 0, "n_mutant": 0, "median_control": np.nan, "median_mutant": np.nan,
                       "U": np.nan, "p": np.nan, "reason": ""}
                rows.append(row)
                if column is None:
                    row["reason"] = "no manual read of this quantity"
                    continue
                if column not in subset:
                    row["reason"] = f"the mice table has no {column} column"
                    continue
                control = subset.loc[subset["group"] == "control", column].dropna().to_numpy(float)
                mutant = subset.loc[subset["group"] == "mutant", column].dropna().to_numpy(float)
                row.update(n_control=len(control), n_mutant=len(mutant),
                           median_control=np.median(control) if len(control) else np.nan,
                           median_mutant=np.median(mutant) if len(mutant) else np.nan)
                if min(len(control), len(mutant)) < min_mice:
                    row["reason"] = (f"too few mice with a value: {len(control)} control, {len(mutant)} mutant "
                                     f"(--min-mice {min_mice} per group)")
                    continue
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    result = mannwhitneyu(control, mutant, alternative="two-sided", use_continuity=True)
                row.update(U=float(result.statistic), p=float(result.pvalue))
                if not np.isfinite(row["p"]):
                    row["reason"] = "Mann-Whitney U gave no p-value"
    tests = pd.DataFrame(rows)
    tested = tests["p"].notna()
    tests["q"] = np.nan
    if tested.any():
        tests.loc[tested, "q"] = false_discovery_control(tests.loc[tested, "p"].to_numpy(), method="bh")
    return tests


def p_value_table(tests: pd.DataFrame) -> pd.DataFrame:
    """p_values.csv: rows and first four columns as published (f/m x manual/automatic), then pooled sexes, then q."""
    tests = tests.assign(where=tests["sex"] + " " + tests["source"])
    order = [f"{sex} {source}" for sex in SEXES for source in SOURCES]
    p = tests.pivot(index="quantity", columns="where", values="p")[order]
    q = tests.pivot(index="quantity", columns="where", values="q")[order].add_suffix(" q")
    table = p.join(q).reindex([quantity.label for quantity in QUANTITIES])
    table.index.name, table.columns.name = "", None
    return table


def number_of_mice(tests: pd.DataFrame) -> pd.DataFrame:
    """number_of_mice.csv in the published layout (man con, auto con, man mut, auto mut), plus pooled sexes:
    mice per group with a value of LVIDs."""
    first = tests[tests["quantity"] == QUANTITIES[0].label].set_index(["sex", "source"])
    columns = {"man con": ("manual", "n_control"), "auto con": ("automatic", "n_control"),
               "man mut": ("manual", "n_mutant"), "auto mut": ("automatic", "n_mutant")}
    table = pd.DataFrame({name: [int(first.at[(sex, source), n]) for sex in SEXES]
                          for name, (source, n) in columns.items()}, index=list(SEXES))
    table.index.name = ""
    return table


def agreement_table(mice: pd.DataFrame) -> pd.DataFrame:
    """Automatic (per-mouse mean) vs manual per quantity: Pearson r, Bland-Altman bias and 95% limits."""
    usable = mice[mice["left_out"] == ""]
    rows = []
    for quantity in QUANTITIES:
        if quantity.manual not in usable:
            continue
        pair = usable[[quantity.auto, quantity.manual]].dropna().to_numpy(float)
        auto, manual = pair[:, 0], pair[:, 1]
        difference = auto - manual
        row = {"quantity": quantity.label, "n": len(pair), "pearson_r": np.nan, "pearson_p": np.nan,
               "bias": difference.mean() if len(pair) else np.nan, "sd": np.nan, "loa_low": np.nan,
               "loa_high": np.nan}
        if len(pair) >= 3 and auto.std() > 0 and manual.std() > 0:
            r = pearsonr(auto, manual)
            row.update(pearson_r=float(r.statistic), pearson_p=float(r.pvalue))
        if len(pair) >= 2:
            sd = difference.std(ddof=1)
            row.update(sd=sd, loa_low=row["bias"] - 1.96 * sd, loa_high=row["bias"] + 1.96 * sd)
        rows.append(row)
    return pd.DataFrame(rows, columns=["quantity", "n", "pearson_r", "pearson_p", "bias", "sd", "loa_low",
                                       "loa_high"])


def untested_lines(tests: pd.DataFrame) -> list[str]:
    """One line per column and reason for the p-values left empty (the extra rows' missing manual reads aside)."""
    empty = tests[tests["p"].isna() & (tests["reason"] != "no manual read of this quantity")]
    return [f"no p-value for {sex} {source} ({', '.join(rows['quantity'])}): {reason}"
            for (sex, source, reason), rows in empty.groupby(["sex", "source", "reason"], sort=False)]


def run_pheno(beat_tables: list[Path], mice_table: Path, out_dir: Path, options: PhenoOptions,
              files_table: Path | None = None) -> PhenoResult:
    """Read, filter, test and write p_values.csv, tests.csv, number_of_mice.csv, mice.csv, excluded.csv,
    agreement.csv and figures/ into `out_dir`."""
    exclusions = Exclusions()
    mice = read_mice(read_table(mice_table, dtype={"mouse_id": str}), options, exclusions)
    files = read_table(files_table, dtype={"mouse_id": str, "file": str}) if files_table else None
    beats = assign_mice(read_beats(beat_tables, exclusions), files, exclusions)
    unknown = ~beats["mouse_id"].isin(mice.index)
    for mouse in beats.loc[unknown, "mouse_id"].unique():
        exclusions.add("mouse", "not in the mice table: its beats are left out", mouse_id=mouse)
    left_out = beats["mouse_id"].isin(mice.index[mice["left_out"] != ""])
    beats = beats[~unknown & ~left_out]
    kept = filter_beats(beats, exclusions)
    table = mouse_table(mice, beats, kept, exclusions)
    tests = compare_groups(table, options.min_mice)
    result = PhenoResult(p_values=p_value_table(tests), tests=tests, number_of_mice=number_of_mice(tests),
                         mice=table, excluded=exclusions.frame(), agreement=agreement_table(table),
                         lines=exclusions.lines + beat_summary(beats, exclusions) + untested_lines(tests))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(result.p_values.reset_index(), out_dir / "p_values.csv")
    write_csv_atomic(result.number_of_mice.reset_index(), out_dir / "number_of_mice.csv")
    for name in ("tests", "mice", "excluded", "agreement"):
        write_csv_atomic(getattr(result, name), out_dir / f"{name}.csv")
    if options.figures:
        from echodeploy.analysis.pheno_figures import draw_pheno_figures

        result.figures = draw_pheno_figures(out_dir / "figures", table, tests, result.agreement)
    return result
