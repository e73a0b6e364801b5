"""report.html: one self-contained page per finished output, to open offline, print or mail.

`build_report(path)` (re)builds it from the files an output already holds: a `cmr` or `mmode` run
folder (also interrupted, resumed or merged from shards), a `pheno` folder, or a study model JSON
(`study-model fit`; its page goes beside it as `<stem>.html`). Every number on the page is read or
computed from those files (the ROC AUC shown is metrics.json's); nothing is fetched: figures are
inline SVG or embedded images, the few lines of script only sort and filter tables, and the page
prints to PDF. For large runs the page stays small: tables show their first TABLE_ROWS rows (the
CSV next to the page has them all), figures of the first FIGURE_FILES M-mode files are embedded as
thumbnails and the others linked, failure reasons list a few example rows each.
"""

from __future__ import annotations

import html
import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from echodeploy.client.results import report_figures as charts
from echodeploy.client.results.metrics import reliability_bins
from echodeploy.client.results.mmode_features import good_events
from echodeploy.client.results.mmode_figures import FIGURE_KINDS, figure_stem
from echodeploy.client.runs.cmr import evaluation_sets
from echodeploy.client.runs.inputs import STUDY, TARGET, VIDEO, read_table, target_values
from echodeploy.client.runs.journal import Journal, write_atomic
from echodeploy.client.runs.record import read_record
from echodeploy.client.runs.runner import JOURNAL
from echodeploy.errors import EchodeployError
from echodeploy.specs import TASKS, VIEWS

REPORT = "report.html"
TABLE_ROWS = 1000  # rows shown per table; the CSV beside the page has every row
FIGURE_FILES = 6  # M-mode files whose figures are embedded (as thumbnails); the others are linked
EXAMPLES = 5  # rows named per failure reason
REASONS = 50  # failure reasons listed; the rest are counted
NAME_COLUMNS = ("file", "filename", "FileName", VIDEO, "path")  # a row's name: the first of these it has
MODEL_FIELDS = ("view", "task", "kind", "checkpoint_sha256", "precision", "untrained", "random_seed")
DONE = ("ok", "pending")
SHOWN_FIELDS = ("format", "pipeline", "version", "engine", "backend", "rows", "counted", "options", "models", "machine",
                "command", "sessions", "seconds", "rows_processed", "rows_per_s", "merged", "settings")  # statuses that are not failures


class Html(str):
    """Markup, inserted as it is (every other value is escaped)."""


def esc(value) -> str:
    return value if isinstance(value, Html) else html.escape(str(value))


def fmt(value, digits: int = 3) -> str:
    """A value as the page shows it: floats to `digits` decimals (small ones in e-notation), NaN as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}" if value == 0 or abs(value) >= 10 ** -digits else f"{value:.1e}"
    return str(value)


def number(key: str, value, digits: int = 3) -> Html:
    """A figure the page states, tagged with its name and exact value (what tests compare with the files)."""
    exact = "" if value is None else repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)
    return Html(f'<span class="v" data-key="{esc(key)}" data-value="{esc(exact)}">{esc(fmt(value, digits))}</span>')


def cell(value) -> str:
    if isinstance(value, Html):
        return f"<td>{value}</td>"
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        shown = "" if isinstance(value, (float, np.floating)) and math.isnan(value) else repr(float(value))
        return f'<td class="n" data-v="{shown}">{esc(fmt(value))}</td>'
    return f"<td>{esc(fmt(value))}</td>"


def table(columns, rows, table_id: str | None = None, total: int | None = None, where: str = "") -> Html:
    """A table; with `table_id` it sorts (click a heading) and filters (the box above it). `total`:
    rows there are, when only the first are given; `where`: the file that has them all."""
    rows = list(rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    attributes = f' id="{table_id}" class="sortable"' if table_id else ""
    before = (f'<input type="search" placeholder="filter rows" data-filter="{table_id}" aria-label="filter">'
              if table_id else "")
    after = ""
    if total is not None and total > len(rows):
        after = (f'<p class="note" data-key="{table_id or "table"}-shown">first {len(rows):,} of {total:,} rows '
                 f'shown{f"; all in {esc(where)}" if where else ""}</p>')
    return Html(f"{before}<table{attributes}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{after}")


def section(section_id: str, title: str, *parts: str) -> Html:
    return Html(f'<section id="{section_id}"><h2>{esc(title)}</h2>{"".join(parts)}</section>')


def paragraph(*parts) -> Html:
    return Html("<p>" + "".join(esc(p) for p in parts) + "</p>")


def figures(*items: str) -> Html:
    return Html('<div class="figures">' + "".join(f"<figure>{item}</figure>" for item in items if item) + "</div>")


# --- reading an output ---------------------------------------------------------------------------

def output_kind(folder: Path) -> str:
    """'cmr', 'mmode' or 'pheno', from the run record or the files the folder holds."""
    pipeline = read_record(folder).get("pipeline")
    if pipeline in ("cmr", "mmode", "pheno"):
        return pipeline
    if (folder / "predictions.csv").is_file():
        return "cmr"
    if any((folder / f"features_{w}.csv").is_file() for w in ("stats", "all")):
        return "mmode"
    if (folder / "p_values.csv").is_file() and (folder / "tests.csv").is_file():
        return "pheno"
    raise EchodeployError(f"{folder}: not a finished echodeploy output (no predictions.csv, features_*.csv or "
                          "p_values.csv; give a cmr, mmode, merge or pheno --out folder, or a study model JSON)")


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EchodeployError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from exc
    return data if isinstance(data, dict) else {}


def _row_names(frame: pd.DataFrame) -> pd.Series:
    names = pd.Series([""] * len(frame), index=frame.index, dtype=object)
    for column in reversed([c for c in NAME_COLUMNS if c in frame.columns]):
        values = frame[column].astype(str).str.strip()
        names = names.where(frame[column].isna() | (values == ""), values)
    return names.where(names != "", pd.Series([f"row {i + 1}" for i in range(len(frame))], index=frame.index))


def _flags(values: pd.Series) -> pd.Series:
    return values.astype(str).str.strip().str.lower().isin(("true", "1", "yes"))


# --- header: what ran, when, how long ------------------------------------------------------------

def _when(text) -> str:
    if not text:
        return "-"
    try:
        return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except ValueError:
        return str(text)


def _seconds(value) -> str:
    if value is None:
        return "-"
    value = float(value)
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


def untrained_banner(models: list[str]) -> str:
    if not models:
        return ""
    return (f'<div class="banner" id="untrained"><strong>UNTRAINED MODELS</strong>: {esc(", ".join(models))} '
            "ran on seeded random weights. Every number on this page comes from them: they are not predictions "
            "or measurements. Export real weights with <code>echodeploy export --weights-dir DIR</code>.</div>")


def models_table(models: dict[str, dict]) -> Html:
    """One row per model: the usual identity fields first, then any other field a model has."""
    models = {name: {k: v for k, v in entry.items() if not (k == "model" and v == name)}
              for name, entry in models.items()}
    extra = sorted({k for entry in models.values() for k in entry} - set(MODEL_FIELDS))
    columns = [c for c in MODEL_FIELDS if any(c in e for e in models.values())] + extra
    rows = [[name, *(_model_value(entry.get(c, "")) for c in columns)] for name, entry in models.items()]
    return table(["model", *columns], rows)


def _model_value(value):
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    text = str(value)
    if value is True or text == "true":
        return Html('<strong class="bad">yes</strong>')
    if len(text) > 72:
        return Html(f'<span title="{esc(text)}">{esc(text[:64])}...</span>')
    return value


def header(title: str, record: dict, folder: Path, extra_untrained: list[str] = ()) -> Html:
    """Title, the red banner for untrained weights, what ran, and each session of the run."""
    models = record.get("models", {})
    untrained = sorted({n for n, e in models.items() if e.get("untrained") in (True, "true")} | set(extra_untrained))
    parts = [f"<h1>{esc(title)}</h1>", untrained_banner(untrained)]
    if not record:
        parts.append(paragraph(f"{folder}: no run record (run.json): the run was made before runs recorded one, "
                               "so what ran, when and how fast are not known."))
        return Html(f'<header id="header">{"".join(parts)}</header>')
    command = record.get("command")
    facts = [("command", Html(f"<code>{esc(' '.join(command))}</code>") if command else "not recorded"),
             ("echodeploy", record.get("version", "-")), ("pipeline", record.get("pipeline", "-")),
             ("engine", record.get("engine", "-")), ("backend", record.get("backend", "-"))]
    facts += [(key.replace("_", " "), value if isinstance(value, (str, int, float)) else
               Html(f"<code>{esc(json.dumps(value))}</code>")) for key, value in record.items()
              if key not in SHOWN_FIELDS]  # what the caller added (run_context), shown as it is
    if "merged" in record:
        facts.append(("merged from", f"{len(record['merged']['shards'])} shards: "
                                     + ", ".join(record["merged"]["shards"])))
    facts += [("rows", f"{record.get('rows', '-'):,}" if isinstance(record.get("rows"), int) else "-"),
              ("time (s)", number("seconds", record.get("seconds"), 1)),
              ("rows/s", number("rows_per_s", record.get("rows_per_s"))),
              ("options", Html(f"<code>{esc(json.dumps(record.get('options', {})))}</code>"))]
    if record.get("settings"):
        facts.append(("settings", Html(f"<code>{esc(json.dumps(record['settings']))}</code>")))
    if record.get("machine"):
        machine = record["machine"]
        facts.append(("machine", f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
                                 f"Python {machine.get('python', '?')}"))
    parts.append(Html('<table class="facts">' + "".join(f"<tr><th>{esc(k)}</th>{cell(v)}</tr>" for k, v in facts)
                      + "</table>"))
    if models:
        parts += ["<h3>Models</h3>", models_table(models)]
    sessions = record.get("sessions", [])
    rows = [[i + 1, s.get("shard", ""), _when(s.get("start")), _when(s.get("end")),
             Html(f'<span data-key="outcome-{i + 1}">{esc(_outcome(s))}</span>'), s.get("rows_done_before", 0),
             s.get("rows_processed", "-"), s.get("rows_done", "-"), _seconds(s.get("seconds")), s.get("rows_per_s")]
            for i, s in enumerate(sessions)]
    parts += [f'<h3>Sessions (<span data-key="sessions">{len(sessions)}</span>)</h3>',
              table(["#", "shard", "start", "end", "outcome", "done before", "processed", "done after",
                     "time", "rows/s"], rows)]
    return Html(f'<header id="header">{"".join(parts)}</header>')


def _outcome(session: dict) -> str:
    if session.get("outcome") == "running":
        return "no end recorded (killed, or still running)"
    return session.get("outcome", "-")


# --- accounting: how every row ended -------------------------------------------------------------

def accounting(rows: pd.DataFrame, counted: str, where: str) -> Html:
    """Status counts with bars, failed rows grouped by reason with examples, rows still pending.
    `rows`: one per input row with columns name, status, error."""
    counts = rows["status"].fillna("").value_counts()
    total = len(rows)
    lines = []
    for status, n in counts.items():
        share = 100 * n / total if total else 0
        kind = "ok" if status == "ok" else "pending" if status == "pending" else "bad"
        lines.append([Html(f'<span class="status {kind}">{esc(status)}</span>'),
                      Html(f'<span data-status="{esc(status)}">{n:,}</span>'),
                      Html(f'<div class="bar {kind}" style="width:{share:.2f}%"></div>'), f"{share:.1f}%"])
    parts = [paragraph(Html(f'<span data-key="rows">{total:,}</span>'), f" {counted} in {where}"),
             table(["status", counted, "", "share"], lines)]
    failed = rows[~rows["status"].isin(DONE)]
    if len(failed):
        groups = failed.groupby(["status", failed["error"].fillna("")], sort=False)
        grouped = sorted(((len(g), status, reason, g["name"].head(EXAMPLES).tolist()) for (status, reason), g in groups),
                         key=lambda item: -item[0])
        listed = [[status, reason or "-", n, ", ".join(names) + (" ..." if n > len(names) else "")]
                  for n, status, reason, names in grouped[:REASONS]]
        parts += [f'<h3>Failed {counted} by reason (<span data-key="failed">{len(failed):,}</span>)</h3>',
                  table(["status", "reason", counted, "examples"], listed)]
        if len(grouped) > REASONS:
            parts.append(paragraph(f"{len(grouped) - REASONS} more reasons ({sum(g[0] for g in grouped[REASONS:]):,} "
                                   f"{counted}) are in {where}'s error column."))
    pending = rows[rows["status"] == "pending"]
    if len(pending):
        names = pending["name"].head(TABLE_ROWS // 10).tolist()
        parts += [f'<h3>Pending (<span data-key="pending">{len(pending):,}</span>)</h3>',
                  paragraph(f"Not processed yet: the run was interrupted. Rerun the same command with the same "
                            f"--out to finish them. {', '.join(names)}" + (" ..." if len(pending) > len(names) else ""))]
    return section("accounting", "Accounting", *parts)


# --- CMR -----------------------------------------------------------------------------------------

def cmr_sections(folder: Path) -> tuple[list[str], list[str], pd.DataFrame]:
    """(sections, untrained models named by the outputs, the rows for accounting) of a cmr run."""
    predictions = read_table(folder / "predictions.csv", {STUDY: str, VIDEO: str})
    studies = (read_table(folder / "studies.csv", {STUDY: str}) if _has_rows(folder / "studies.csv")
               else pd.DataFrame(columns=[STUDY, "task", "all_views"]))
    metrics = _json(folder / "metrics.json") if (folder / "metrics.json").is_file() else {}
    for frame in (predictions, studies):
        if STUDY in frame:
            frame[STUDY] = frame[STUDY].fillna("")
    tasks = [t for t, spec in TASKS.items() if spec.output in predictions.columns]
    untrained = ["models of rows marked untrained"] if "untrained" in predictions and _flags(
        predictions["untrained"]).any() else []
    sections = [_distributions(predictions, tasks, metrics.get("task"))]
    if metrics.get("task") in tasks and "videos" in metrics:
        sections.append(_evaluation(predictions, studies, metrics))
    if "study_model" in metrics:
        sections.append(section("study-model", "Study model", *_study_model_parts(metrics["study_model"],
                                                                                  metrics["kind"])))
    sections.append(_studies_table(predictions, studies))
    rows = pd.DataFrame({"name": _row_names(predictions), "status": predictions["status"],
                         "error": predictions.get("error", pd.Series(dtype=object))})
    return sections, untrained, rows


def _has_rows(path: Path) -> bool:
    return path.is_file() and len(path.read_text().strip().splitlines()) > 1


def _distributions(predictions: pd.DataFrame, tasks: list[str], target_task: str | None) -> Html:
    ok = predictions[predictions["status"] == "ok"]
    parts = []
    for task in tasks:
        spec = TASKS[task]
        panels = []
        for view in [v for v in VIEWS if (ok["view"] == v).any()]:
            values = ok.loc[ok["view"] == view, spec.output].astype(float)
            if task == target_task and TARGET in ok:
                target = target_values(ok.loc[values.index, TARGET])
                groups = {f"TARGET {t:g}": values[target == t] for t in sorted(target.dropna().unique())}
                if target.isna().any():
                    groups["no TARGET"] = values[target.isna()]
            else:
                groups = {"videos": values}
            panels.append((f"{view} (n={len(values)})", groups))
        if panels:
            value_range = (0, 1) if spec.kind == "binary" else None
            parts += [f"<h3>{esc(spec.output)}</h3>", figures(charts.histograms(panels, spec.output, value_range))]
    if not parts:
        parts.append(paragraph("No ok rows: nothing to show."))
    return section("distributions", "Predictions per view", *parts)


def _evaluation(predictions: pd.DataFrame, studies: pd.DataFrame, metrics: dict) -> Html:
    """Per scope (all videos, each view, studies): metrics.json's figures, with ROC, confusion matrix and
    reliability plot drawn from the rows metrics.json was computed on."""
    task, kind = metrics["task"], metrics["kind"]
    sets = evaluation_sets(predictions, studies, task)
    views = [name for name in sets if name not in ("all", "studies")]
    parts = [paragraph(f"TARGET is for {task}. Figures below are from metrics.json; curves and matrices are "
                       "drawn from predictions.csv and studies.csv, the rows they were computed on.")]
    for name, pairs in sets.items():
        if name in views and len(views) == 1:
            continue  # the pooled videos are this view's
        scope = metrics["studies"] if name == "studies" else metrics["videos"].get(name, {})
        label = {"all": "videos, all views" + (f" ({views[0]})" if len(views) == 1 else ""),
                 "studies": "studies (mean of view means)"}.get(name, f"videos, {name}")
        key = f"{task}-{name}"
        y, score = pairs.iloc[:, 0].to_numpy(float), pairs.iloc[:, 1].to_numpy(float)
        parts.append(f'<h3 id="scope-{esc(name)}">{esc(label)}</h3>')
        parts.append(_binary_scope(key, scope, y, score) if kind == "binary" else _regression_scope(key, scope))
    return section("evaluation", f"Evaluation against TARGET ({task})", *parts)


def _binary_scope(key: str, m: dict, y: np.ndarray, score: np.ndarray) -> Html:
    facts = [("n", number(f"{key}-n", m.get("n"))), ("positive", number(f"{key}-n_positive", m.get("n_positive")))]
    if m.get("auc") is None or math.isnan(m["auc"]):
        return Html(_facts(facts) + paragraph("Only one class present: no ROC curve or AUC."))
    low, high = m.get("auc_ci95", [math.nan, math.nan])
    threshold = m.get("youden_threshold", math.nan)
    facts += [("ROC AUC", number(f"{key}-auc", m["auc"])), ("95% CI (bootstrap)",
                                                             Html(f"{number(f'{key}-auc_ci_low', low)} to "
                                                                  f"{number(f'{key}-auc_ci_high', high)}")),
              ("Youden cut-off", number(f"{key}-threshold", threshold, 4)),
              ("sensitivity", number(f"{key}-sensitivity", m.get("sensitivity"))),
              ("specificity", number(f"{key}-specificity", m.get("specificity")))]
    predicted = score >= threshold
    truth = y.astype(bool)
    matrix = table(["", "predicted positive", "predicted negative"], [
        ["TARGET 1", number(f"{key}-tp", int((predicted & truth).sum())), number(f"{key}-fn", int((~predicted & truth).sum()))],
        ["TARGET 0", number(f"{key}-fp", int((predicted & ~truth).sum())), number(f"{key}-tn", int((~predicted & ~truth).sum()))]])
    youden = (1 - m["specificity"], m["sensitivity"]) if "sensitivity" in m else None
    roc = charts.roc(y, score, f"AUC {m['auc']:.3f} ({low:.3f}-{high:.3f})", youden)
    calibration = charts.reliability([("equal-count bins", reliability_bins(y, score))])
    return Html(_facts(facts) + figures(roc, Html(f"<h4>At the cut-off (score >= {esc(fmt(threshold, 4))})</h4>{matrix}"),
                                        calibration))


def _regression_scope(key: str, m: dict) -> Html:
    return Html(_facts([(name, number(f"{key}-{field}", m.get(field))) for name, field in
                        (("n", "n"), ("MAE", "mae"), ("RMSE", "rmse"), ("Pearson r", "pearson_r"))]))


def _facts(facts: list[tuple[str, object]]) -> str:
    return '<dl class="facts">' + "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in facts) + "</dl>"


def _study_model_parts(block: dict, kind: str) -> list[str]:
    """A study model's evaluation beside the mean of views on the same studies (metrics.json's
    study_model, or a fit's cross-validation)."""
    parts = [paragraph(f"Study model {block.get('model', '')} ({block.get('column', '')}): ",
                       number("study_model-scored", block.get("scored")), " of ",
                       number("study_model-studies", block.get("studies")), " studies scored (",
                       ", ".join(f"{views} {n}" for views, n in block.get("by_views", {}).items()), ").")]
    rows = []
    for name, label in (("study_model", "study model"), ("mean_of_views", "mean of views")):
        m = block.get(name, {})
        if kind == "binary":
            low, high = m.get("auc_ci95", [math.nan, math.nan])
            rows.append([label, m.get("n"), m.get("n_positive"), number(f"{name}-auc", m.get("auc")), low, high,
                         number(f"{name}-brier", m.get("brier"))])
        else:
            rows.append([label, m.get("n"), m.get("mae"), m.get("rmse"), m.get("pearson_r")])
    columns = (["", "studies", "positive", "AUC", "CI low", "CI high", "Brier"] if kind == "binary"
               else ["", "studies", "MAE", "RMSE", "Pearson r"])
    parts.append(table(columns, rows))
    difference = block.get("auc_difference", {})
    if "ci95" in difference:
        parts.append(paragraph("AUC difference (study model - mean of views): ",
                               number("study_model-auc_difference", difference["estimate"]),
                               f" (paired bootstrap 95% CI {difference['ci95'][0]:+.3f} to {difference['ci95'][1]:+.3f})"))
    curves = [(label, block[name]["reliability"]) for name, label in (("study_model", "study model"),
                                                                     ("mean_of_views", "mean of views"))
              if block.get(name, {}).get("reliability")]
    if curves:
        parts.append(figures(charts.reliability(curves)))
    return parts


def _studies_table(predictions: pd.DataFrame, studies: pd.DataFrame) -> Html:
    if studies.empty:
        return section("studies", "Studies", paragraph("No study has an ok video yet."))
    views = [v for v in VIEWS if v in studies and studies[v].notna().any()]
    extra = [c for c in studies.columns if c.endswith(("_study_prob", "_study_value", "_study_views"))]
    columns = [STUDY, "task", "n_videos", *views, "all_views", *extra]
    shown = studies[columns].head(TABLE_ROWS)
    if TARGET in predictions:
        targets = predictions.assign(t=target_values(predictions[TARGET])).groupby(STUDY)["t"].first()
        shown = shown.assign(TARGET=shown[STUDY].map(targets))
    rows = [[v.item() if isinstance(v, np.generic) else v for v in row] for row in shown.itertuples(index=False)]
    return section("studies", "Studies", table(list(shown.columns), rows, "studies-table", len(studies), "studies.csv"))


# --- M-mode --------------------------------------------------------------------------------------

STAT_COLUMNS = (("windows", "windows"), ("good windows", "good_windows"), ("duration (s)", "duration_s"),
                ("good beats", "good_beats"), ("LVID;d median (mm)", "lvid_d_median_mm"),
                ("LVID;s median (mm)", "lvid_s_median_mm"), ("HR median (bpm)", "heart_rate_median_bpm"))
BEAT_VALUES = (("LVID;d", "lvid_d_mm", "mm"), ("LVID;s", "lvid_s_mm", "mm"), ("heart rate", "heart_rate_bpm", "bpm"))


def mmode_sections(folder: Path) -> tuple[list[str], list[str], pd.DataFrame]:
    """(sections, untrained models named by the outputs, the rows for accounting) of an mmode run."""
    written = next(folder / f"features_{w}.csv" for w in ("stats", "all") if (folder / f"features_{w}.csv").is_file())
    files = read_table(written, {"file": str}).drop_duplicates("file").reset_index(drop=True)
    records: dict[int, dict] = {}
    if (folder / JOURNAL).is_file():
        with Journal(folder / JOURNAL) as journal:
            records = {int(key.split("|", 1)[0]): r for key, r in journal.records.items() if key.split("|")[0].isdigit()}
    stats = pd.DataFrame([records.get(i, {}).get("stats", {}) if status == "ok" else {}
                          for i, status in enumerate(files["status"])], index=files.index)
    every = [beat for i, status in enumerate(files["status"]) if status == "ok"
             for beat in records.get(i, {}).get("beats", [])]
    beats = good_events(pd.DataFrame(every, columns=list(every[0]) if every else [c for _, c, _ in BEAT_VALUES]))
    untrained = ["M-mode models of files marked untrained"] if _flags(files.get("untrained", pd.Series())).any() else []
    sections = [_beat_distributions(beats), _mmode_figures(folder, files), _files_table(folder, files, stats, written)]
    rows = pd.DataFrame({"name": files["file"], "status": files["status"], "error": files.get("error")})
    return sections, untrained, rows.assign(where=written.name)


def _beat_distributions(beats: pd.DataFrame) -> Html:
    facts, panels = [], []
    for label, column, unit in BEAT_VALUES:
        values = beats[column].dropna().astype(float)
        facts += [(f"{label} beats", number(f"{column}-n", len(values))),
                  (f"{label} median ({unit})", number(f"{column}-median", values.median() if len(values) else None))]
        panels.append((f"{label} ({unit})", {"good beats": values.to_numpy()}))
    parts = [paragraph("Good-quality events of every ok file (as features_stats.csv counts them)."), _facts(facts)]
    if len(beats):
        parts.append(figures(Html(charts.histograms(panels, "value"))))
    return section("beats", "Beat-level distributions", *parts)


def _figure_links(folder: Path, name: str) -> Html:
    stem = figure_stem(name)
    links = [f'<a href="figures/{esc(stem)}_{kind}.png">{kind}</a>' for kind in FIGURE_KINDS
             if (folder / "figures" / f"{stem}_{kind}.png").is_file()]
    return Html(" ".join(links))


def _mmode_figures(folder: Path, files: pd.DataFrame) -> Html:
    ok = [name for name, status in zip(files["file"], files["status"]) if status == "ok"
          and (folder / "figures" / f"{figure_stem(name)}_lvid.png").is_file()]
    parts = []
    for name in ok[:FIGURE_FILES]:
        stem = figure_stem(name)
        images = []
        for kind in ("quality", "lvid"):
            source = charts.thumbnail(folder / "figures" / f"{stem}_{kind}.png")
            if source:
                images.append(f'<a href="figures/{esc(stem)}_{kind}.png"><img class="trace" alt="{esc(name)} {kind}" '
                              f'src="{source}"></a>')
        parts.append(f"<h3>{esc(name)}</h3>{''.join(images)}<p>full size: {_figure_links(folder, name)}</p>")
    if not ok:
        parts.append(paragraph("No per-file figures (run with figures, or no ok file)."))
    elif len(ok) > FIGURE_FILES:
        parts.append(paragraph(Html(f'<span data-key="figures-linked">{len(ok) - FIGURE_FILES:,}</span>'),
                               " more files' figures are linked from the table below (figures/)."))
    return section("figures", "Traces: quality, LVID and good/bad windows", *parts)


def _files_table(folder: Path, files: pd.DataFrame, stats: pd.DataFrame, written: Path) -> Html:
    rows = []
    for i, row in files.head(TABLE_ROWS).iterrows():
        values = [stats.at[i, c] if c in stats else math.nan for _, c in STAT_COLUMNS]
        quality = values[1] / values[0] if values[0] and not math.isnan(values[0]) else math.nan
        rows.append([row["file"], row["status"], row.get("mass_g", math.nan), *values[:2], quality, *values[2:],
                     _figure_links(folder, row["file"])])
    columns = ["file", "status", "mass (g)", "windows", "good windows", "good fraction",
               *(label for label, _ in STAT_COLUMNS[2:]), "figures"]
    return section("files", "Files", table(columns, rows, "files-table", len(files), written.name))


# --- pheno ---------------------------------------------------------------------------------------

def pheno_sections(folder: Path) -> tuple[list[str], list[str], pd.DataFrame | None]:
    p_values = read_table(folder / "p_values.csv").rename(columns={"Unnamed: 0": ""}).set_index("")
    tests = read_table(folder / "tests.csv")
    mice = read_table(folder / "number_of_mice.csv").rename(columns={"Unnamed: 0": "sex"})
    excluded = (read_table(folder / "excluded.csv", {"mouse_id": str}) if _has_rows(folder / "excluded.csv")
                else pd.DataFrame(columns=["level", "mouse_id", "file", "reason"]))
    sources = [c for c in p_values.columns if not c.endswith(" q")]
    rows = [[quantity, *(Html(f"{number(f'p|{quantity}|{s}', p_values.at[quantity, s], 4)}"
                              f"<br><small>q {number(f'q|{quantity}|{s}', p_values.at[quantity, f'{s} q'], 4)}</small>")
                         for s in sources)] for quantity in p_values.index]
    parts = [section("p-values", "Mutant vs control: p-values (Mann-Whitney U) with q-values (Benjamini-Hochberg)",
                     table(["quantity", *sources], rows))]
    parts.append(section("mice", "Mice per group", table(list(mice.columns), mice.itertuples(index=False))))
    shown = tests[["quantity", "sex", "source", "n_control", "n_mutant", "median_control", "median_mutant", "U",
                   "p", "q", "reason"]].fillna({"reason": ""})
    parts.append(section("tests", "Tests", table(list(shown.columns), shown.itertuples(index=False), "tests-table")))
    if _has_rows(folder / "agreement.csv"):
        agreement = read_table(folder / "agreement.csv")
        parts.append(section("agreement", "Automatic vs manual", table(list(agreement.columns),
                                                                       agreement.itertuples(index=False))))
    box = sorted((folder / "figures").glob("box_*.png")) if (folder / "figures").is_dir() else []
    extra = [folder / "figures" / n for n in ("agreement_scatter.png", "bland_altman.png")
             if (folder / "figures" / n).is_file()]
    images = [f'<img class="plot" alt="{esc(p.stem)}" src="{charts.thumbnail(p, 700, 85)}">' for p in [*box, *extra]]
    parts.append(section("comparison", "Per-quantity comparison plots", figures(*images) if images
                         else paragraph("No figures (pheno ran with --no-figures).")))
    left = excluded.rename(columns={"mouse_id": "name"}).assign(
        name=lambda f: f["name"].fillna("").where(f["name"].fillna("") != "", f["file"]),
        status=lambda f: "excluded " + f["level"], error=excluded["reason"])
    return parts, [], left[["name", "status", "error"]]


# --- study model (fit) ---------------------------------------------------------------------------

def study_model_page(model: dict, path: Path) -> tuple[str, list[str]]:
    """(header, sections) of a fitted study model's page."""
    view_models = model.get("view_models", {})
    untrained = [n for n, e in view_models.items() if e.get("untrained") == "true"]
    training = model.get("training", {})
    facts = [("task", model.get("task")), ("model", model.get("model")), ("predictors", model.get("predictors")),
             ("views", ", ".join(model.get("views", []))), ("fitted", _when(model.get("created"))),
             ("runs", ", ".join(model.get("runs", []))),
             ("training studies", number("training-studies", training.get("studies")))]
    if "positive" in training:
        facts.append(("positive / negative", f"{training['positive']} / {training['negative']}"))
    head = Html(f'<header id="header"><h1>{esc(f"Study model {path.name}")}</h1>{untrained_banner(untrained)}'
                f"{_facts(facts)}<h3>View models</h3>{models_table(view_models)}</header>")
    parts = []
    for submodel in model.get("submodels", []):
        views = "+".join(submodel["views"])
        title = f"views {views}: {submodel['n']} studies"
        if "skipped" in submodel:
            parts.append(f"<h3>{esc(title)}</h3>" + paragraph(f"Not fitted: {submodel['skipped']}."))
            continue
        rows = [[term, number(f"{views}-{term}-estimate", c["estimate"]), c["se"], c["ci95"][0], c["ci95"][1],
                 number(f"{views}-{term}-p", c["p"], 4)] for term, c in submodel["coefficients"].items()]
        parts.append(f"<h3>{esc(title)}</h3>" + table(["term", "estimate", "SE", "CI low", "CI high", "p"], rows))
    sections = [section("coefficients", "Coefficients per sub-model", *parts)]
    cv = model.get("cross_validation", {})
    if cv:
        block = {**cv, "model": path.name, "column": "out-of-fold predictions",
                 "studies": cv.get("scored", 0) + cv.get("unscored", 0)}
        sections.append(section("cross-validation", f"{cv.get('folds')}-fold cross-validation (seed {cv.get('seed')})",
                                *_study_model_parts(block, model.get("kind"))))
    return head, sections


# --- the page ------------------------------------------------------------------------------------

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 40px;color:#222}
h1{font-size:22px;margin:18px 0 8px}h2{font-size:18px;border-bottom:2px solid #ddd;padding-bottom:3px;margin-top:28px}
h3{font-size:15px;margin:16px 0 6px}code{font-size:12px;word-break:break-all}
.banner{background:#c00;color:#fff;padding:10px 14px;border-radius:4px;margin:8px 0;font-size:15px}
.banner code{color:#fff}table{border-collapse:collapse;margin:4px 0 8px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}th{background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}table.facts th{width:130px}
table.sortable th{cursor:pointer}table.sortable th[data-sorted=up]::after{content:" \\25B2"}
table.sortable th[data-sorted=down]::after{content:" \\25BC"}input[type=search]{margin:4px 0;padding:3px 6px;width:260px}
.bar{height:12px;min-width:1px;background:#4a8}.bar.bad{background:#d44}.bar.pending{background:#e90}
td:has(.bar){width:320px}.status.bad{color:#b00;font-weight:600}.status.pending{color:#a60;font-weight:600}
.bad{color:#b00}dl.facts{display:flex;flex-wrap:wrap;gap:4px 22px;margin:6px 0}dl.facts dt{font-size:12px;color:#666}
dl.facts dd{margin:0;font-weight:600}.figures{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0}svg.chart{max-width:100%;height:auto}img.trace{max-width:100%;display:block;margin:4px 0}
img.plot{max-width:380px}.note,footer{color:#666;font-size:12px}
@media print{input{display:none}body{max-width:none}section,figure,tr,img{break-inside:avoid}
h2,h3{break-after:avoid}.banner,.bar{print-color-adjust:exact;-webkit-print-color-adjust:exact}a{color:inherit}}
"""

# Sort a table by a click on a heading (numbers as numbers), filter its rows by the box above it.
SCRIPT = """
const key = (row, i) => { const c = row.cells[i], v = c.dataset.v ?? c.textContent;
  return v.trim() !== "" && !isNaN(Number(v)) ? Number(v) : v.toLowerCase(); };
for (const table of document.querySelectorAll("table.sortable")) {
  const heads = [...table.tHead.rows[0].cells];
  heads.forEach((th, i) => th.addEventListener("click", () => {
    const up = th.dataset.sorted !== "up";
    heads.forEach(h => delete h.dataset.sorted); th.dataset.sorted = up ? "up" : "down";
    const rows = [...table.tBodies[0].rows].sort((a, b) => { const x = key(a, i), y = key(b, i);
      const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : typeof x === "number" ? -1 : 1;
      return up ? order : -order; });
    table.tBodies[0].append(...rows); }));
}
for (const box of document.querySelectorAll("input[data-filter]")) {
  const rows = document.getElementById(box.dataset.filter).tBodies[0].rows;
  box.addEventListener("input", () => { const text = box.value.toLowerCase();
    for (const row of rows) row.hidden = !row.textContent.toLowerCase().includes(text); });
}
"""


def page(title: str, head: str, sections: list[str], source: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f"<body>{head}{''.join(sections)}<footer>echodeploy report of {esc(source)}, built "
            f"{datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} from the files beside it; tables show "
            f"at most {TABLE_ROWS:,} rows.</footer><script>{SCRIPT}</script></body></html>")


def build_report(path: Path) -> Path:
    """(Re)build the page of a finished output: a cmr/mmode/merged run or pheno folder (its report.html),
    or a study model JSON (`<stem>.html` beside it). Returns the page's path."""
    path = Path(path)
    if path.is_file():
        model = _json(path)
        if not str(model.get("format", "")).startswith("echodeploy-study-model/"):
            raise EchodeployError(f"{path}: not a study model (make one with `echodeploy study-model fit`); "
                                  "for a run, give its output folder")
        head, sections = study_model_page(model, path)
        target = path.with_suffix(".html")
        text = page(f"study model {path.name}", head, sections, path.name)
    elif path.is_dir():
        kind = output_kind(path)
        build = {"cmr": cmr_sections, "mmode": mmode_sections, "pheno": pheno_sections}[kind]
        sections, untrained, rows = build(path)
        record = read_record(path)
        title = f"echodeploy {'merged ' if 'merged' in record else ''}{kind}: {path.resolve().name}"
        counted = record.get("counted", {"cmr": "rows", "mmode": "files", "pheno": "mice and files"}[kind])
        where = rows["where"].iloc[0] if "where" in rows and len(rows) else "predictions.csv"
        named = {n for n, e in record.get("models", {}).items() if e.get("untrained") in (True, "true")}
        head = header(title, record, path, [] if named else untrained)
        first = accounting(rows, counted, where) if kind != "pheno" else _excluded(rows)
        target = path / REPORT
        text = page(title, head, [first, *sections], path.resolve().name)
    else:
        raise EchodeployError(f"{path}: no such file or folder")
    write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return target


def _excluded(rows: pd.DataFrame) -> Html:
    """pheno's accounting: what was left out, grouped by level and reason."""
    if rows.empty:
        return section("accounting", "Left out", paragraph("Nothing was left out: every beat, file and mouse counted."))
    groups = rows.groupby(["status", rows["error"].fillna("")], sort=False)
    listed = sorted(([status, reason, len(g), ", ".join(g["name"].astype(str).head(EXAMPLES))]
                     for (status, reason), g in groups), key=lambda r: -r[2])
    return section("accounting", "Left out", paragraph(Html(f'<span data-key="excluded">{len(rows):,}</span>'),
                                                       " rows of excluded.csv (beats, files and mice left out)"),
                   table(["level", "reason", "rows", "examples"], listed[:REASONS]))
