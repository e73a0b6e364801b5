"""Figures of `echodeploy pheno` (PNG): per-mouse means by sex and genotype, automatic vs manual agreement."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from echodeploy.analysis.pheno import QUANTITIES  # noqa: E402

GROUPS = [("f", "control"), ("f", "mutant"), ("m", "control"), ("m", "mutant")]
COLOURS = {"control": "tab:blue", "mutant": "tab:orange"}


def _p_text(tests: pd.DataFrame, label: str, sex: str) -> str:
    row = tests[(tests["quantity"] == label) & (tests["sex"] == sex) & (tests["source"] == "automatic")].iloc[0]
    return f"{sex} p={row['p']:.3g}" if np.isfinite(row["p"]) else f"{sex} p: none"


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def draw_pheno_figures(out_dir: Path, mice: pd.DataFrame, tests: pd.DataFrame, agreement: pd.DataFrame) -> list[Path]:
    """box_<quantity>.png for every quantity; agreement_scatter.png and bland_altman.png with manual reads."""
    out_dir.mkdir(parents=True, exist_ok=True)
    usable = mice[mice["left_out"] == ""]
    rng = np.random.default_rng(0)  # point jitter only
    paths = []
    for quantity in QUANTITIES:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        values = [usable.loc[(usable["sex"] == s) & (usable["group"] == g), quantity.auto].dropna() for s, g in GROUPS]
        ax.boxplot([v.to_numpy() for v in values], positions=range(len(GROUPS)), widths=0.5, showfliers=False)
        for x, ((_, group), v) in enumerate(zip(GROUPS, values)):
            ax.plot(x + rng.uniform(-0.12, 0.12, len(v)), v, "o", color=COLOURS[group], alpha=0.8)
        ax.set_xticks(range(len(GROUPS)), [f"{s} {g}\n(n={len(v)})" for (s, g), v in zip(GROUPS, values)])
        ax.set_ylabel(f"{quantity.label} (per-mouse mean)")
        ax.set_title(f"{quantity.label}: {_p_text(tests, quantity.label, 'f')}, {_p_text(tests, quantity.label, 'm')}"
                     " (Mann-Whitney U)")
        paths.append(out_dir / f"box_{_slug(quantity.label)}.png")
        fig.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    if agreement.empty:
        return paths
    pairs = [(q, agreement.set_index("quantity").loc[q.label]) for q in QUANTITIES if q.label in set(agreement["quantity"])]
    scatter, scatter_axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 4.2), squeeze=False)
    bland, bland_axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 4.2), squeeze=False)
    for (quantity, stats), ax, ba in zip(pairs, scatter_axes[0], bland_axes[0]):
        pair = usable[[quantity.auto, quantity.manual, "group"]].dropna(subset=[quantity.auto, quantity.manual])
        auto, manual = pair[quantity.auto].to_numpy(float), pair[quantity.manual].to_numpy(float)
        colours = [COLOURS[g] for g in pair["group"]]
        ax.scatter(manual, auto, c=colours)
        if len(pair):
            low, high = min(auto.min(), manual.min()), max(auto.max(), manual.max())
            ax.plot([low, high], [low, high], "--", color="0.5", lw=1)
        ax.set(xlabel=f"{quantity.label} manual", ylabel=f"{quantity.label} automatic",
               title=f"{quantity.label}: Pearson r={stats['pearson_r']:.2f} (n={int(stats['n'])})")
        ba.scatter((auto + manual) / 2, auto - manual, c=colours)
        ba.axhline(stats["bias"], color="k", label=f"bias {stats['bias']:.3g}")
        for limit in ("loa_low", "loa_high"):
            ba.axhline(stats[limit], color="k", ls="--")
        ba.set(xlabel="mean of automatic and manual", ylabel="automatic - manual",
               title=f"{quantity.label}: limits {stats['loa_low']:.3g} to {stats['loa_high']:.3g}")
        ba.legend(loc="upper right")
    for fig, name in ((scatter, "agreement_scatter.png"), (bland, "bland_altman.png")):
        paths.append(out_dir / name)
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
    return paths
