"""`dolmino report BUILD_DIR`: the build report as people look at it.

Writes, beside report.json (local directory or s3:// prefix):

- `report-mix.png`: Mix % per source, planned (the manifest) and achieved (the output);
- `report-removals.png`: documents removed per source, by reason, as a share of what the
  source read (pool stage: filters, dedup, quarantine) and of what it tokenized (filters
  that need tokens, the document length limit);
- `report-doc-tokens.png`: tokens per document per source, from the parts' sidecars
  (`dolmino.doc_lengths`: a few evenly spaced parts, each a seeded random sample of the
  mix, or every part);
- `report-decontamination.png`: documents that hit each evaluation set, per source (it and the
  removals chart only where there is something to show);
- `report.md`: the build's tables (`dolmino.report.render_markdown`) with those PNGs;
- `report.html`: one self-contained page (inline CSS, the same PNGs as data: URIs, no
  script, no external URL) that opens offline and can be mailed or attached to a ticket.

Charts are drawn with matplotlib's Agg canvas (no pyplot, no display), default style plus
this module's settings (the user's matplotlibrc does not apply), DejaVu Sans (bundled with
matplotlib) and PNG metadata without software name or date, so the same report gives the
same bytes with the same matplotlib and Pillow versions.

Every build draws them, so they are drawn cheaply (about 0.4 s of CPU for four sources, a
third of what matplotlib's constrained layout cost): the margins come from the charts' texts
measured once (`_Fit`), legends sit outside the bars (a taller chart when a legend needs it);
the log axis of tokens per document has fixed ticks (decades labelled 10, 100, 1K, ...) and
its minor ticks are one line of markers; text is drawn without FreeType hinting (no visible
difference at 144 dpi); the PNGs are RGB at zlib level 3.

The build calls `write_views(out, report, strict=False)` when it writes its report: a chart
that cannot be drawn then costs a warning, not the build (`dolmino report OUT` redraws).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import math
import re
import sys
from typing import NamedTuple

from dolmino.argtypes import is_count, positive_int
from dolmino.manifest import format_count

CHART_DPI = 144  # PNG pixels per inch (sharp on high-density screens); shown at 96 px per inch
SCREEN_DPI = 96
PNG_COMPRESS_LEVEL = 3  # zlib: 1-9; 6 takes twice the time for at most ~4% fewer bytes
CHART_FILES = {"mix": "report-mix.png", "removals": "report-removals.png", "doc_tokens": "report-doc-tokens.png",
               "decontamination": "report-decontamination.png"}
STYLE = {
    "font.family": "DejaVu Sans", "font.size": 9.0, "axes.titlesize": 10.5, "axes.titleweight": "bold",
    "axes.titlelocation": "left", "axes.labelsize": 9.0, "axes.spines.top": False, "axes.spines.right": False,
    "axes.edgecolor": "#888888", "axes.grid": True, "axes.axisbelow": True, "grid.color": "#e6e6e6",
    "grid.linewidth": 0.8, "xtick.color": "#444444", "ytick.color": "#222222", "legend.frameon": False,
    "legend.fontsize": 8.5, "figure.facecolor": "white", "savefig.facecolor": "white",
    "svg.hashsalt": "dolmino", "path.simplify": True,
    "axes.titley": 1.0,  # titles at a fixed place above their axes: no search for top ticks at every draw
    "text.hinting": "no_hinting",  # the hinter costs ~15% of a chart's CPU; at 144 dpi it changes nothing visible
}
KEPT_COLOR = "#d9d9d9"
QUARANTINE_COLORS = ("#b2182b", "#e0604d", "#f4a582", "#67001f")  # reds: quarantined lines, by reason
# The build's warning when it could not draw its views; `dolmino report` redraws them and leaves it out of them.
CHARTS_NOT_WRITTEN = "report.html and the charts were not written"
# Reasons beyond this many (by documents removed) are drawn as one "other reasons" segment.
MAX_REASONS = 9


class Chart(NamedTuple):
    key: str  # "mix", "removals", ...
    title: str
    caption: str
    png: bytes
    width_in: float  # figure width in inches (the page shows it at SCREEN_DPI)

    @property
    def file(self) -> str:
        return CHART_FILES[self.key]


# ---------------------------------------------------------------------------- drawing helpers


def _figure(width: float, height: float):
    """A Figure on an Agg canvas (no pyplot state, no display needed), at the PNG's resolution so
    that `_Fit` measures texts with the renderer the PNG is drawn with."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=CHART_DPI)
    FigureCanvasAgg(fig)
    return fig


class _Fit:
    """A chart's margins in inches, from its texts measured once.

    Matplotlib's constrained layout finds margins by computing every axis's ticks and labels
    several times (most of a chart's CPU); these charts know where their texts are, so they
    measure them (the same fonts and renderer the PNG is drawn with), set the margins with
    `Figure.subplots_adjust` and place axis labels themselves (no per-draw search)."""

    PAD = 4 / 72  # inches of white around the figure's edge and between panels

    def __init__(self, fig):
        import matplotlib

        self.fig = fig
        self.renderer = fig.canvas.get_renderer()
        self.rc = matplotlib.rcParams  # _styled's settings while the chart is drawn
        self._sizes: dict[tuple, tuple[float, float]] = {}  # this chart's texts measured so far

    def text(self, texts, **font) -> tuple[float, float]:
        """(widest, tallest) of `texts` drawn with `font` (Text properties), in inches."""
        from matplotlib.text import Text

        w = h = 0.0
        for s in texts:
            key = (s, *sorted(font.items()))
            if key not in self._sizes:
                box = Text(0, 0, s, figure=self.fig, **font).get_window_extent(self.renderer)
                self._sizes[key] = box.width / self.fig.dpi, box.height / self.fig.dpi
            w, h = max(w, self._sizes[key][0]), max(h, self._sizes[key][1])
        return w, h

    def tick_labels(self, axis) -> list[str]:
        """The major tick labels the axis will draw in its view."""
        lo, hi = sorted(axis.get_view_interval())
        span = (hi - lo) * 1e-9
        locs = [x for x in axis.get_major_locator()() if lo - span <= x <= hi + span]
        return [t for t in axis.get_major_formatter().format_ticks(locs) if t]

    def ticks(self, axis) -> float:
        """Depth of the axis's tick marks and labels (x: height, y: width), in inches."""
        name = axis.axis_name
        w, h = self.text(self.tick_labels(axis) or ["0"], fontsize=self.rc[f"{name}tick.labelsize"])
        depth = (self.rc[f"{name}tick.major.size"] + self.rc[f"{name}tick.major.pad"]) / 72
        return depth + (h if name == "x" else w)

    def overhang(self, axis) -> float:
        """How far the x tick labels can reach past the axes' ends (half the widest), in inches."""
        return self.text(self.tick_labels(axis) or ["0"], fontsize=self.rc["xtick.labelsize"])[0] / 2

    def label(self, axis) -> float:
        """Depth of the axis label and its pad, in inches (0 without a label)."""
        if not axis.label.get_text():
            return 0.0
        return self.rc["axes.labelpad"] / 72 + self.text([axis.label.get_text()], fontsize=axis.label.get_fontsize())[1]

    def title(self, t) -> float:
        """Height of a title (the Text `Axes.set_title` returns) and its pad, in inches (0 without one)."""
        if t is None or not t.get_text():
            return 0.0
        h = self.text([t.get_text()], fontsize=t.get_fontsize(), fontweight=t.get_fontweight())[1]
        return self.rc["axes.titlepad"] / 72 + h

    def legend(self, legend) -> tuple[float, float]:
        """(width, height) of a legend placed outside its axes, with its pad to the axes, in inches."""
        box = legend.get_window_extent(self.renderer)
        pad = legend.borderaxespad * legend.prop.get_size_in_points() / 72
        return box.width / self.fig.dpi + pad, box.height / self.fig.dpi + pad

    def panel_height(self, *, top: float, bottom: float, nrows: int = 1, hspace: float = 0.0, **_) -> float:
        """Height of each panel (inches) that `place` with these margins leaves."""
        H = self.fig.get_size_inches()[1]
        return (H - top - bottom - 2 * self.PAD - (hspace + self.PAD) * (nrows - 1)) / nrows

    def place(self, *, left: float, right: float, top: float, bottom: float, nrows: int = 1, ncols: int = 1,
              hspace: float = 0.0, wspace: float = 0.0) -> None:
        """Margins (and gaps between panels) in inches, PAD added to each."""
        W, H = self.fig.get_size_inches()
        ah = self.panel_height(top=top, bottom=bottom, nrows=nrows, hspace=hspace)
        left, right, top, bottom = left + self.PAD, right + self.PAD, top + self.PAD, bottom + self.PAD
        hspace, wspace = hspace + self.PAD, wspace + self.PAD
        aw = (W - left - right - wspace * (ncols - 1)) / ncols
        if aw <= 0.2 or ah <= 0.2:
            raise ValueError(f"chart of {W:.1f}x{H:.1f} in: no room for its {nrows}x{ncols} panels")
        self.fig.subplots_adjust(left=left / W, right=1 - right / W, top=1 - top / H, bottom=bottom / H,
                                 hspace=hspace / ah, wspace=wspace / aw)

    def fit_title(self, ax, title, reserve: float = 0.0) -> None:
        """A title that does not fit right of its axes' left edge (up to `reserve` inches left of
        the axes' right edge, else to the figure's edge) starts at the figure's left edge."""
        width = self.text([title.get_text()], fontsize=title.get_fontsize(), fontweight=title.get_fontweight())[0]
        W = self.fig.get_size_inches()[0]
        x0, _, aw, _ = ax.get_position().bounds
        end = (x0 + aw) * W - reserve - self.PAD if reserve else W - self.PAD
        if x0 * W + width > end:
            title.set_x((self.PAD / W - x0) / aw)

    def layout(self, margins, axes: list) -> None:
        """`place` with `margins()`, twice: how many ticks (so which labels) an auto-located axis
        draws depends on its length, only known once placed; then the axis labels."""
        for _ in range(2):
            self.place(**margins())
        for ax in axes:
            self.place_labels(ax)

    def place_labels(self, ax) -> None:
        """Put the axis labels beyond the tick labels, as matplotlib would, without its per-draw search."""
        from matplotlib.transforms import ScaledTranslation

        dpi = self.fig.dpi_scale_trans
        pad = self.rc["axes.labelpad"] / 72
        if ax.xaxis.label.get_text():
            ax.xaxis.set_label_coords(0.5, 0, ax.transAxes + ScaledTranslation(0, -self.ticks(ax.xaxis) - pad, dpi))
        if ax.yaxis.label.get_text():
            ax.yaxis.set_label_coords(0, 0.5, ax.transAxes + ScaledTranslation(-self.ticks(ax.yaxis) - pad, 0, dpi))


def _png(fig) -> bytes:
    """The figure as an RGB PNG without text chunks (no software name, no date). The figure is
    opaque white, so matplotlib's RGBA PNG would only add a constant alpha channel; zlib level 3
    instead of 6 halves the encoding time for sizes within 4% of level 6's (below RGBA's)."""
    from PIL import Image

    fig.canvas.draw()
    image = Image.frombuffer("RGBA", fig.canvas.get_width_height(physical=True), fig.canvas.buffer_rgba(), "raw",
                             "RGBA", 0, 1).convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="png", compress_level=PNG_COMPRESS_LEVEL, dpi=(CHART_DPI, CHART_DPI))
    return buf.getvalue()


def _styled(draw):
    """Run a drawing function under matplotlib's defaults plus STYLE, whatever the user's rc."""
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(STYLE)
        return draw()


def source_colors(names: list[str]) -> dict[str, str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if len(names) <= 10:
        colors = list(colormaps["tab10"].colors)
    else:  # tab20's strong colors first, then their light pairs: neighbours stay distinct
        tab20 = colormaps["tab20"].colors
        colors = list(tab20[0::2]) + list(tab20[1::2])
    return {n: to_hex(colors[i % len(colors)]) for i, n in enumerate(names)}


def _share_label(value: float) -> str:
    if value == 0:
        return "0"
    if value < 0.01:
        return f"{value:.2g}%"
    return f"{value:#.3g}%" if value < 10 else f"{value:.1f}%"


def _place_beside_legends(fig, axes: list, titles: list, legends: list) -> None:
    """Margins of a column of bar panels, each with its legend right of it (taller panels when a
    legend is taller than its panel)."""
    fit = _Fit(fig)
    legend_w, legend_h = (max(size) for size in zip(*(fit.legend(g) for g in legends)))

    def margins():
        below = [fit.ticks(ax.xaxis) + fit.label(ax.xaxis) for ax in axes]
        return dict(left=max(fit.ticks(ax.yaxis) for ax in axes),
                    right=max([legend_w] + [fit.overhang(ax.xaxis) for ax in axes]), top=fit.title(titles[0]),
                    bottom=below[-1], nrows=len(axes), hspace=max(below[:-1] + [0.0]) + fit.title(titles[-1]))

    short = legend_h - fit.panel_height(**margins())
    if short > 0:
        width, height = fig.get_size_inches()
        fig.set_size_inches(width, height + short * len(axes))
    fit.layout(margins, axes)
    for ax, title in zip(axes, titles):
        fit.fit_title(ax, title)


def _minor_marks(ax, xs: list[float]) -> None:
    """Minor tick marks at xs below the axes, drawn as one line of markers: as the axis's own
    minor ticks (a Tick artist each: two lines, a grid line, two labels) they cost a third of the
    tokens-per-document chart's CPU."""
    import matplotlib
    from matplotlib.lines import Line2D
    from matplotlib.markers import TICKDOWN
    from matplotlib.ticker import NullLocator

    rc = matplotlib.rcParams
    ax.xaxis.set_minor_locator(NullLocator())
    ax.add_artist(Line2D(xs, [0.0] * len(xs), transform=ax.get_xaxis_transform(), linestyle="none", marker=TICKDOWN,
                         markersize=rc["xtick.minor.size"], markeredgewidth=rc["xtick.minor.width"],
                         color=rc["xtick.color"], clip_on=False, zorder=2.5))


def _count_label(x: float) -> str:
    return format_count(x) if x >= 1000 else f"{x:.3g}"


def _log_ticks(lo: float, hi: float) -> tuple[list[float], list[float]]:
    """(major, minor) ticks of a log axis from lo to hi: decades (every 2nd or 3rd beyond six
    of them, the others minor), else 1-2-5 steps, else a few linear steps (a range narrower than
    a decade); minor ticks at the other integer multiples of each decade."""
    from matplotlib.ticker import MaxNLocator

    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    tens = [10.0 ** d for d in decades if lo <= 10.0 ** d <= hi]
    if len(tens) > 6:
        stride = -(-len(tens) // 6)
        return tens[::stride], [x for i, x in enumerate(tens) if i % stride]
    for steps in ((1,), (1, 2, 5), tuple(range(1, 10))):
        major = [m * 10.0 ** d for d in decades for m in steps if lo <= m * 10.0 ** d <= hi]
        if len(major) >= 2:
            minor = [m * 10.0 ** d for d in decades for m in range(2, 10)
                     if lo <= m * 10.0 ** d <= hi and m not in steps]
            return major, minor
    return [float(x) for x in MaxNLocator(nbins=4).tick_values(lo, hi) if lo <= x <= hi], []


# ---------------------------------------------------------------------------- the charts


def chart_mix(report: dict) -> Chart:
    sources = report["sources"]
    names = [s["name"] for s in sources]
    colors = source_colors(names)

    def draw():
        n = len(sources)
        fig = _figure(8.6, 0.95 + 0.5 * n)
        ax = fig.add_subplot()
        ys = list(range(n))
        planned = [s.get("mix_percent_manifest") or 0.0 for s in sources]
        achieved = [s["mix_percent"] for s in sources]
        h = 0.38
        ax.barh([y - h / 2 for y in ys], planned, height=h, color="white", edgecolor=[colors[x] for x in names],
                hatch="////", linewidth=1.0, label="planned (manifest)")
        ax.barh([y + h / 2 for y in ys], achieved, height=h, color=[colors[x] for x in names], label="achieved (output)")
        top = max(planned + achieved + [1e-9])
        for y, s, p, a in zip(ys, sources, planned, achieved):
            ax.text(a + top * 0.01, y + h / 2, f"{_share_label(a)}  ({format_count(s['output_tokens'])} tokens)",
                    va="center", fontsize=8, color="#222222")
            ax.text(p + top * 0.01, y - h / 2, _share_label(p), va="center", fontsize=8, color="#777777")
        ax.set_yticks(ys, names)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.32)
        ax.set_xlabel("share of the mix's tokens (%)")
        ax.grid(axis="y", visible=False)
        title = ax.set_title("Mix % per source: planned vs achieved")
        # above the bars, right of the title: inside, it would cover the labels of the widest bars
        legend = ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2)
        fit = _Fit(fig)
        fit.layout(lambda: dict(left=fit.ticks(ax.yaxis), right=fit.overhang(ax.xaxis),
                                top=max(fit.title(title), fit.legend(legend)[1]),
                                bottom=fit.ticks(ax.xaxis) + fit.label(ax.xaxis)), [ax])
        fit.fit_title(ax, title, reserve=fit.legend(legend)[0])
        return _png(fig)

    worst = max(sources, key=lambda s: abs(s["mix_percent"] - (s.get("mix_percent_manifest") or 0.0)))
    gap = abs(worst["mix_percent"] - (worst.get("mix_percent_manifest") or 0.0))
    caption = (f"Planned: the manifest's share of each source at budget {format_count(report['budget'])}; achieved: "
               f"its share of the {report['output']['tokens']:,} tokens written. Largest gap: {worst['name']}, "
               f"{gap:.2f} percentage points.")
    return Chart("mix", "Mix composition", caption, _styled(draw), 8.6)


def _reason_segments(sources: list[dict], stage: str) -> tuple[list[str], list[dict[str, int]], list[int]]:
    """(reasons drawn, per source {reason: docs}, per source denominator) for one stage."""
    per_source, denominators = [], []
    for s in sources:
        if stage == "pool":
            counts = {r: v["docs"] for r, v in s["removed"].items()}
            counts.update({f"quarantined: {r}": n for r, n in s["quarantined"].items()})
            denominators.append(s["docs_in"])
        else:
            counts = {r: v["docs"] for r, v in s["tokenized"]["removed"].items()}
            denominators.append(s["tokenized"]["docs"])
        per_source.append({r: n for r, n in counts.items() if n})
    totals: dict[str, int] = {}
    for counts in per_source:
        for r, n in counts.items():
            totals[r] = totals.get(r, 0) + n
    ranked = sorted(totals, key=lambda r: (-totals[r], r))
    if len(ranked) > MAX_REASONS:
        keep = set(ranked[:MAX_REASONS - 1])
        per_source = [{**{r: n for r, n in c.items() if r in keep},
                       **({"other reasons": sum(n for r, n in c.items() if r not in keep)}
                          if any(r not in keep for r in c) else {})} for c in per_source]
        ranked = ranked[:MAX_REASONS - 1] + ["other reasons"]
    return ranked, per_source, denominators


def chart_removals(report: dict) -> Chart | None:
    sources = report["sources"]
    stages = [st for st in ("pool", "tokenized")
              if any(_reason_segments(sources, st)[1][i] for i in range(len(sources)))]
    if not stages:
        return None
    names = [s["name"] for s in sources]

    def draw():
        from matplotlib import colormaps
        from matplotlib.colors import to_hex

        n = len(sources)
        fig = _figure(8.6, (1.0 + 0.42 * n) * len(stages))
        axes = [fig.add_subplot(len(stages), 1, i + 1) for i in range(len(stages))]
        palette = colormaps["Set2"].colors + colormaps["Pastel1"].colors
        segments = {stage: _reason_segments(sources, stage) for stage in stages}
        colors: dict[str, str] = {}  # one color per reason across both panels
        k = q = 0
        for stage in stages:
            for r in segments[stage][0]:
                if r in colors:
                    continue
                if r.startswith("quarantined"):
                    colors[r] = QUARANTINE_COLORS[q % len(QUARANTINE_COLORS)]
                    q += 1
                else:
                    colors[r] = to_hex(palette[k % len(palette)])
                    k += 1
        titles, legends = [], []
        for ax, stage in zip(axes, stages):
            reasons, per_source, denominators = segments[stage]
            left = [0.0] * n
            for r in reasons:
                widths = [100.0 * c.get(r, 0) / d if d else 0.0 for c, d in zip(per_source, denominators)]
                ax.barh(range(n), widths, left=left, height=0.62, color=colors[r], label=r, edgecolor="white",
                        linewidth=0.5)
                left = [a + b for a, b in zip(left, widths)]
            top = max(left + [1e-9])
            for y, (c, d) in enumerate(zip(per_source, denominators)):
                removed = sum(c.values())
                ax.text(left[y] + top * 0.01, y, f"{removed:,} of {d:,} docs" if d else
                        ("nothing read" if stage == "pool" else "nothing tokenized"),
                        va="center", fontsize=8, color="#222222")
            ax.set_yticks(range(n), names)
            ax.invert_yaxis()
            ax.set_xlim(0, top * 1.35)
            ax.grid(axis="y", visible=False)
            if stage == "pool":
                title = "Removed while building the pools (share of the documents each source read)"
                titles.append(ax.set_title(title))
                ax.set_xlabel("documents removed or quarantined (%)")
            else:
                titles.append(ax.set_title("Removed after tokenizing (share of the documents each source tokenized)"))
                ax.set_xlabel("documents removed (%)")
            legends.append(ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, handlelength=1.2,
                                     borderaxespad=1.0))
        _place_beside_legends(fig, axes, titles, legends)
        return _png(fig)

    removed = sum(v["docs"] for s in sources for v in s["removed"].values())
    quarantined = sum(sum(s["quarantined"].values()) for s in sources)
    read = sum(s["docs_in"] for s in sources)
    caption = (f"Of {read:,} documents read, {removed:,} were removed (filters, dedup, blank texts) and "
               f"{quarantined:,} lines were "
               "quarantined before tokenizing. Filters that need token ids (and the document length limit) decide "
               "on the documents a mix tokenizes, a sample of each large pool, so their share is of what was "
               "tokenized.")
    return Chart("removals", "Removals by reason", caption, _styled(draw), 8.6)


def chart_doc_tokens(report: dict, counts: dict[str, list[int]], note: str, sampled: str = "") -> Chart | None:
    """`sampled`: what a sample of the parts read ("8 of 300 parts"), said on the chart; "" when every
    document instance was counted."""
    from dolmino.doc_lengths import BIN_EDGES, quantile

    names = [s["name"] for s in report["sources"] if sum(counts.get(s["name"], [])) > 0]
    names += sorted(n for n in counts if n not in names and sum(counts[n]) > 0)
    if not names:
        return None
    colors = source_colors([s["name"] for s in report["sources"]] + [n for n in names if n not in
                                                                     {s["name"] for s in report["sources"]}])
    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)

    def draw():
        import numpy as np
        from matplotlib.patches import StepPatch

        fig = _figure(8.6, 0.6 + 2.0 * nrows)
        grid = fig.add_gridspec(nrows, ncols)
        axes = [fig.add_subplot(grid[i // ncols, i % ncols]) for i in range(len(names))]
        nonzero = [i for n in names for i, c in enumerate(counts[n]) if c]
        lo, hi = BIN_EDGES[max(0, min(nonzero) - 1)], BIN_EDGES[min(len(BIN_EDGES) - 1, max(nonzero) + 2)]
        major, minor = _log_ticks(lo, hi)
        titles = []
        for i, (ax, name) in enumerate(zip(axes, names)):
            c = np.asarray(counts[name], dtype=np.float64)
            share = 100.0 * c / c.sum()
            # what Axes.stairs draws, added as plain artists with the limits set here: stairs walks
            # each ~200-vertex outline in Python to update the data limits (a fifth of this chart's CPU)
            ax.add_artist(StepPatch(share, BIN_EDGES, fill=True, facecolor=colors[name], linewidth=0, alpha=0.85))
            ax.add_artist(StepPatch(share, BIN_EDGES, fill=False, edgecolor=colors[name], linewidth=0.8))
            ax.set_ylim(0.0, 1.05 * share.max())  # what autoscaling gives (5% margin, the bars' baseline at 0)
            med, p90 = quantile(counts[name], 0.5), quantile(counts[name], 0.9)
            ax.axvline(med, color="#222222", linewidth=0.9, linestyle="--")
            ax.set_xscale("log")
            ax.set_xlim(lo, hi)
            # fixed ticks, the same on every panel, labelled like the medians (100, 1K, 10K): a log
            # axis's own locators and mathtext labels (10^2) cost most of this chart's CPU
            ax.set_xticks(major, [_count_label(x) for x in major])
            _minor_marks(ax, minor)
            titles.append(ax.set_title(name, fontsize=9.5))
            docs = f"{int(c.sum()):,} docs" + (" sampled" if sampled else "")
            ax.text(0.98, 0.95, f"{docs}\nmedian ~{format_count(med)}\np90 ~{format_count(p90)}",
                    transform=ax.transAxes, ha="right", va="top", fontsize=7.5, color="#333333",
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none", "pad": 1.5})
            ax.grid(axis="x", visible=False)
            if i // ncols == nrows - 1:
                ax.set_xlabel("tokens per document (log scale)")
            if i % ncols == 0:
                ax.set_ylabel("% of documents")
        fit = _Fit(fig)
        W, H = fig.get_size_inches()
        heading = "Tokens per document instance, per source" + (f" (sample: sidecars of {sampled})" if sampled else "")
        title = fig.suptitle(heading, x=fit.PAD / W, y=1 - fit.PAD / H, ha="left",
                             va="top", fontsize=10.5, fontweight="bold")
        rows = [axes[r * ncols:(r + 1) * ncols] for r in range(nrows)]
        cols = [axes[k::ncols] for k in range(ncols)]
        above = [max(fit.title(t) for t in titles[r * ncols:(r + 1) * ncols]) for r in range(nrows)]
        overhang = fit.overhang(axes[0].xaxis)
        suptitle = fit.text([title.get_text()], fontsize=10.5, fontweight="bold")[1] + fit.PAD

        def margins():
            below = [max(fit.ticks(ax.xaxis) + fit.label(ax.xaxis) for ax in row) for row in rows]
            beside = [max(fit.label(ax.yaxis) + fit.ticks(ax.yaxis) for ax in col) for col in cols]
            return dict(left=beside[0], right=overhang, top=suptitle + above[0], bottom=below[-1], nrows=nrows,
                        ncols=ncols, hspace=max([b + a for b, a in zip(below[:-1], above[1:])] + [0.0]),
                        wspace=max([overhang + b for b in beside[1:]] + [0.0]))

        fit.layout(margins, axes)
        return _png(fig)

    caption = ("Tokens per document instance in the output, EOS included (a document repeated by the passes counts "
               "each time); dashed line: the median. The median and p90 are read from the histogram (quarter-octave "
               f"bins, interpolated within one), hence the ~. {note}")
    return Chart("doc_tokens", "Tokens per document", caption, _styled(draw), 8.6)


def decontamination_hits(report: dict) -> dict[str, dict[str, int]]:
    """eval set -> source -> documents hit (a document may hit several sets)."""
    hits: dict[str, dict[str, int]] = {}
    for s in report["sources"]:
        for key, rep in s.get("filter_reports", {}).items():
            if not key.endswith(".decontaminate"):
                continue
            for task, v in rep.get("per_task", {}).items():
                if v.get("docs_hit"):
                    hits.setdefault(task, {})
                    hits[task][s["name"]] = hits[task].get(s["name"], 0) + v["docs_hit"]
    return hits


def chart_decontamination(report: dict) -> Chart | None:
    hits = decontamination_hits(report)
    if not hits:
        return None
    names = [s["name"] for s in report["sources"]]
    colors = source_colors(names)
    tasks = sorted(hits, key=lambda t: (-sum(hits[t].values()), t))

    def draw():
        fig = _figure(8.6, 1.2 + 0.34 * len(tasks))
        ax = fig.add_subplot()
        left = [0] * len(tasks)
        for name in names:
            widths = [hits[t].get(name, 0) for t in tasks]
            if any(widths):
                ax.barh(range(len(tasks)), widths, left=left, height=0.64, color=colors[name], label=name,
                        edgecolor="white", linewidth=0.5)
                left = [a + b for a, b in zip(left, widths)]
        top = max(left)
        for y, total in enumerate(left):
            ax.text(total + top * 0.01, y, f"{total:,}", va="center", fontsize=8)
        ax.set_yticks(range(len(tasks)), tasks)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.12)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("removed documents with n-grams of the set")
        title = ax.set_title("Removed documents overlapping each evaluation set, by source")
        # beside the bars: inside, a legend of many sources covers them
        legend = ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), title="source", title_fontsize=8.5,
                           borderaxespad=1.0)
        _place_beside_legends(fig, [ax], [title], [legend])
        return _png(fig)

    removed = sum(v["docs"] for s in report["sources"] for r, v in s["removed"].items()
                  if re.match(r"decontaminate(#\d+)?:", r))  # "#k": one of several decontaminate filters
    # the bars count removed documents only (`docs_hit`): the caption said all overlapping ones (a tester)
    kept = sum(rep.get("docs_partial_overlap", 0) for s in report["sources"]
               for key, rep in s.get("filter_reports", {}).items() if key.endswith(".decontaminate"))
    caption = (f"Removed documents holding n-grams of each evaluation set, per source (a document can overlap "
               f"several sets); {removed:,} documents overlapped enough to be removed, {kept:,} more overlapped "
               f"less than the threshold and were kept (not in the bars).")
    return Chart("decontamination", "Decontamination hits by evaluation set", caption, _styled(draw), 8.6)


# ---------------------------------------------------------------------------- lengths


def length_counts(report: dict, out: str | None,
                  max_parts: int | None) -> tuple[dict[str, list[int]], str, str]:
    """Histograms of tokens per document: the report's own (`doc_tokens_hist`, exact, when the
    build records it), else from the sidecars of `max_parts` evenly spaced parts. Returns the
    histograms, the caption's note and, for a sample, what it read ("8 of 300 parts"; "" when
    every document was counted), which the chart itself states: its "5 docs" per source read as
    the mix's count in a PNG seen without its caption (a tester)."""
    exact = report.get("doc_tokens_hist")
    if exact:
        return exact, "Every part counted.", ""
    parts = [p["name"] for p in report.get("output", {}).get("parts", [])]
    if not out or not parts:
        return {}, "", ""
    from dolmino.doc_lengths import sidecar_histograms

    sample = sidecar_histograms(out, parts, max_parts)
    if sample.complete:
        return sample.counts, f"Every part's sidecar read ({sample.docs:,} document instances).", ""
    return sample.counts, (f"Sidecars of {sample.parts_read} of {sample.parts_total} parts, evenly spaced "
                           f"({sample.docs:,} document instances); each part is a seeded random sample of the mix."), \
        f"{sample.parts_read} of {sample.parts_total} parts"


def make_charts(report: dict, out: str | None = None, max_parts: int | None = 8) -> list[Chart]:
    counts, note, sampled = length_counts(report, out, max_parts)
    charts = [chart_mix(report), chart_removals(report), chart_doc_tokens(report, counts, note, sampled),
              chart_decontamination(report)]
    return [c for c in charts if c is not None]


# ---------------------------------------------------------------------------- markdown and HTML


def render_markdown_with_charts(report: dict, charts: list[Chart]) -> str:
    """report.md: the build's tables, with the charts (PNG files beside it) after the summary."""
    from dolmino.report import render_markdown

    md = render_markdown(report)
    block = "\n".join(["## Charts", ""] + [f"![{c.title}]({c.file})\n\n{c.caption}\n" for c in charts])
    at = md.find("\n## ")
    return (md[:at + 1] + block + "\n" + md[at + 1:]) if at >= 0 else md.rstrip("\n") + "\n\n" + block


_NUMERIC = re.compile(r"^[~<>+-]?[0-9][0-9,.]*\s*(?:[KMBTkG]?B?|%|s)?$")


_MD_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")


def _md_unescaped(text: str) -> str:
    """Markdown's backslash escapes (`dolmino.report.md_text`'s) as the characters they stand for: the page
    showed `\\<script>` where report.md, rendered, shows `<script>`."""
    return _MD_ESCAPED.sub(r"\1", text)


def _cells(row: str) -> list[str]:
    """A markdown table row's cells: a cell's `\\|` (a coverage note's) is its text's "|", where split at every
    "|" it made the page's row one cell longer than its header, the note cut in two (a tester)."""
    return [_md_unescaped(c.strip()) for c in re.split(r"(?<!\\)\|", row.strip()[1:].removesuffix("|"))]


def markdown_to_html(md: str) -> str:
    """The subset of markdown render_markdown writes: headings, tables, lists, paragraphs."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            tag = f"h{min(level + 1, 6)}"
            out.append(f"<{tag}>{html.escape(_md_unescaped(line[level:].strip()))}</{tag}>")
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(_cells(lines[i]))
                i += 1
            header, rows = block[0], [r for r in block[1:] if not all(set(c) <= set("-: ") for c in r)]
            numeric = [bool(rows) and all(_NUMERIC.match(r[k]) or r[k] in ("-", "") for r in rows if k < len(r))
                       for k in range(len(header))]
            cls = [' class="num"' if num else "" for num in numeric]
            out.append('<div class="table"><table><thead><tr>'
                       + "".join(f"<th{cls[k]}>{html.escape(c)}</th>" for k, c in enumerate(header))
                       + "</tr></thead><tbody>")
            for r in rows:
                out.append("<tr>" + "".join(f"<td{cls[k] if k < len(cls) else ''}>{html.escape(c)}</td>"
                                            for k, c in enumerate(r)) + "</tr>")
            out.append("</tbody></table></div>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{html.escape(_md_unescaped(lines[i][2:]))}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif line.strip():
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "- ")):
                para.append(lines[i])
                i += 1
            out.append(f"<p>{html.escape(_md_unescaped(' '.join(para)))}</p>")
        else:
            i += 1
    return "\n".join(out)


CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; --warn: #9a6700; --warnbg: #fff8c5; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
       font: 14px/1.5 -apple-system, "Segoe UI", "Noto Sans", Helvetica, Arial, sans-serif; }
main { max-width: 980px; margin: 0 auto; padding: 28px 24px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 24px 0 8px; }
.sub { color: var(--muted); margin: 0 0 18px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(135px, 1fr)); gap: 10px; margin: 18px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 14px; background: var(--soft); }
.card .v { font-size: 20px; font-weight: 600; }
.card .k { color: var(--muted); font-size: 12px; }
.warnings { border: 1px solid #d4a72c; background: var(--warnbg); border-radius: 8px; padding: 8px 16px; margin: 16px 0; }
.warnings h2 { border: 0; margin: 6px 0; font-size: 15px; color: var(--warn); padding: 0; }
.warnings ul { margin: 4px 0 8px; padding-left: 20px; }
figure { margin: 8px 0 22px; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
nav { font-size: 13px; color: var(--muted); }
nav a { color: #0969da; text-decoration: none; margin-right: 12px; }
.table { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; white-space: nowrap; }
th { background: var(--soft); font-weight: 600; white-space: normal; vertical-align: bottom; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def _card(value: str, key: str) -> str:
    return f'<div class="card"><div class="v">{html.escape(value)}</div><div class="k">{html.escape(key)}</div></div>'


def render_html(report: dict, charts: list[Chart]) -> str:
    from dolmino.report import budget_text, printable, render_markdown, was_resumed

    out = report["output"]
    run = report.get("run", {})
    title = f"Mix {report['manifest']}"
    removed = sum(v["docs"] for s in report["sources"] for v in s["removed"].values()) + sum(
        v["docs"] for s in report["sources"] for v in s["tokenized"]["removed"].values())
    master = run.get("spark_master", "?")
    # a resumed build's elapsed time is its last run's, not the build's (a tester)
    timed = f"this run's time (resumed; {master})" if was_resumed(run) else f"build time ({master})"
    cards = [_card(format_count(out["tokens"]), f"tokens written ({budget_text(report)})"),
             _card(f"{out['docs']:,}", "document instances"),
             _card(f"{len(report['sources'])}", "sources"),
             _card(f"{out['files']}", "parts"),
             _card(f"{removed:,}", "documents removed"),
             _card(f"{run.get('elapsed_s', 0):,.0f} s", timed)]
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="sub">seed {report["seed"]} &middot; tokenizer {html.escape(str(report.get("tokenizer")))} '
            f'&middot; output {html.escape(str(out.get("location", "")))}</p>',
            '<nav>' + "".join(f'<a href="#{c.key}">{html.escape(c.title)}</a>' for c in charts)
            + '<a href="#tables">Tables</a></nav>',
            '<div class="cards">' + "".join(cards) + "</div>"]
    if report.get("warnings"):
        body.append('<div class="warnings"><h2>Warnings</h2><ul>'
                    + "".join(f"<li>{html.escape(printable(str(w)))}</li>" for w in report["warnings"]) + "</ul></div>")
    for c in charts:
        data = base64.b64encode(c.png).decode("ascii")
        body.append(f'<h2 id="{c.key}">{html.escape(c.title)}</h2><figure>'
                    f'<img alt="{html.escape(c.title)}" width="{round(c.width_in * SCREEN_DPI)}" '
                    f'src="data:image/png;base64,{data}"><figcaption>{html.escape(c.caption)}</figcaption></figure>')
    md = render_markdown(report)
    tables = markdown_to_html(md[md.find("\n") + 1:])  # the title is the page's h1
    body.append('<h2 id="tables">Tables</h2>' + tables)
    body.append(f"<footer>Generated by dolmino report from report.json "
                f"({html.escape(str(report.get('manifest_path') or report['manifest']))}).</footer>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
            + "\n".join(body) + "\n</main></body></html>\n")


# ---------------------------------------------------------------------------- writing


def write_views(out: str, report: dict, *, max_parts: int | None = 8, strict: bool = True) -> list[str]:
    """Write report-*.png, report.md (tables and charts) and report.html beside report.json;
    returns the names written.

    With `strict=False` (the build, before it writes report.json) a chart that cannot be
    drawn does not fail the build: report.md is written without charts, no report.html, and
    a warning naming the cause is appended to `report["warnings"]` before report.md is
    written (report.md said nothing of it while report.json and the console did; a tester).
    An earlier build's report.html and charts in `out` are removed: they described another build."""
    from dolmino.storage import delete, write_bytes

    base = out.rstrip("/")
    try:
        charts = make_charts(report, out, max_parts)
    except Exception as exc:  # noqa: BLE001 - the build must not fail on a chart
        if strict:
            raise
        from dolmino.report import render_markdown
        from dolmino.s3 import redact

        report.setdefault("warnings", []).append(
            f"{CHARTS_NOT_WRITTEN} ({type(exc).__name__}: {redact(str(exc))}); run `dolmino report {out}`")
        delete(out, ["report.html", *CHART_FILES.values()])
        write_bytes(f"{base}/report.md", (render_markdown(report) + "\n").encode("utf-8"))
        return ["report.md"]

    names = []
    for c in charts:
        write_bytes(f"{base}/{c.file}", c.png)
        names.append(c.file)
    delete(out, [f for f in CHART_FILES.values() if f not in names])  # charts of an earlier build of this output
    write_bytes(f"{base}/report.md", (render_markdown_with_charts(report, charts) + "\n").encode("utf-8"))
    write_bytes(f"{base}/report.html", render_html(report, charts).encode("utf-8"))
    return names + ["report.md", "report.html"]


_NUMBER = (int, float)
_OPTIONAL_NUMBER = (int, float, type(None))  # present, null where the manifest states none
# What the views read unguarded, and its type: a report.json missing one (or holding another
# type) was a traceback from deep in a chart (found by a tester); and so, after the charts were
# written beside the earlier report.md, from the tables (totals, run, a source's target_tokens;
# another tester).
_REPORT_FIELDS = {"manifest": str, "seed": int, "budget": int, "output": dict, "sources": list, "totals": dict,
                  "run": dict}
_OUTPUT_FIELDS = {"tokens": int, "docs": int, "files": int}
_TOTALS_FIELDS = {"tokens_tokenized": int, "tokens_written": int, "tokenized_per_written": _NUMBER}
_SOURCE_FIELDS = {"name": str, "docs_in": int, "output_tokens": int, "mix_percent": _NUMBER, "removed": dict,
                  "quarantined": dict, "tokenized": dict, "kept_docs": int, "pool_tokens": int,
                  "pool_tokens_exact": bool, "target_tokens": int, "passes": _NUMBER,
                  "mix_percent_manifest": _NUMBER, "source_percent_manifest": _OPTIONAL_NUMBER}
_TOKENIZED_FIELDS = {"docs": int, "removed": dict}


def _field_problem(record, fields: dict, where: str) -> str | None:
    if not isinstance(record, dict):
        return f"{where.rstrip('.') or 'the file'} is not an object"
    for name, kind in fields.items():
        value = record.get(name)
        if value is None and (kind is not _OPTIONAL_NUMBER or name not in record):
            return f"{where}{name} is missing"
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            return f"{where}{name} is {type(value).__name__} {str(value)[:40]!r}, not {_kind_name(kind)}"
    return None


def _kind_name(kind) -> str:
    names = {int: "an integer", float: "a number", str: "a string", dict: "an object", list: "a list",
             bool: "true or false"}
    return "a number" if kind in (_NUMBER, _OPTIONAL_NUMBER) else names[kind]


def report_problem(report) -> str | None:
    """The first field the views need that report.json lacks or holds as another type, or None."""
    problem = _field_problem(report, _REPORT_FIELDS, "")
    if problem is None:
        problem = (_field_problem(report["output"], _OUTPUT_FIELDS, "output.")
                   or _field_problem(report["totals"], _TOTALS_FIELDS, "totals."))
    if problem is None and not report["sources"]:  # a build has one at least; the charts' max() of none failed
        problem = "sources is empty"
    for i, source in enumerate(report["sources"] if problem is None else ()):
        problem = problem or _field_problem(source, _SOURCE_FIELDS, f"sources[{i}].")
        problem = problem or _field_problem(source["tokenized"], _TOKENIZED_FIELDS, f"sources[{i}].tokenized.")
    if problem is None and not isinstance(report.get("warnings") or [], list):
        problem = "warnings is not a list"
    return problem or _hist_problem(report.get("doc_tokens_hist"))


def _hist_problem(hist) -> str | None:
    """doc_tokens_hist as the tokens-per-document chart draws it: one count per bin of
    `dolmino.doc_lengths`. A list of another length was matplotlib's traceback ("Size mismatch between
    values and edges"; found by a tester); none at all is an older build's (the sidecars are read)."""
    from dolmino.doc_lengths import BIN_EDGES

    if hist is None:
        return None
    if not isinstance(hist, dict):
        return f"doc_tokens_hist is {type(hist).__name__}, not an object"
    for name, counts in hist.items():
        if not isinstance(counts, list) or not all(is_count(c) for c in counts):
            return f"doc_tokens_hist[{name!r}] is not a list of counts"
        if len(counts) != len(BIN_EDGES) - 1:
            return f"doc_tokens_hist[{name!r}] holds {len(counts)} bins, not {len(BIN_EDGES) - 1}"
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from dolmino.plan import HelpFormatter

    parser = argparse.ArgumentParser(
        prog="dolmino report", formatter_class=HelpFormatter,
        description="Draw a finished build's report: report.html (self-contained, opens offline) and report.md "
                    "with charts (report-*.png): mix composition, removals by reason, tokens per document, "
                    "decontamination hits.")
    parser.add_argument("build_dir", help="a finished build (holds report.json): local directory or s3:// prefix")
    parser.add_argument("--sample-parts", type=positive_int, default=8,
                        help="builds whose report.json has no tokens-per-document histogram (older builds): read "
                             "the sidecars of this many evenly spaced parts for it; current builds record it whole")
    parser.add_argument("--all-parts", action="store_true",
                        help="older builds: read every part's sidecar (exact, slower); current builds need neither")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from dolmino.build.output import read_json
    from dolmino.s3 import cli_errors, redact
    from dolmino.storage import join, read_if_exists, why_unwritable

    from dolmino.errors import BuildError

    args = parse_args(argv)
    errors = cli_errors("dolmino report", expected=(BuildError,))
    out = args.build_dir
    # as the errors below name it: `https://user:hf_...@host/...` went whole into them (found by a tester)
    shown = redact(out)
    if "://" in out and not out.startswith("s3://"):
        # `https://host/mix` was read as the local directory `https:/host/mix`: "no readable report.json (not a
        # finished build)" of a build that may be finished (found by a tester)
        print(f"dolmino report: error: {shown}: draws a build in a local directory or under an s3:// prefix, not at "
              f"a {out.split('://', 1)[0]}:// URL; download the build first", file=sys.stderr)
        return 2
    try:
        try:
            data = read_if_exists(join(out, "report.json"))
        except IsADirectoryError:
            data = None
        except NotADirectoryError:  # `dolmino report OUT/report.json` was a traceback (a tester)
            print(f"dolmino report: error: {shown}: not a directory; give the build directory that holds report.json",
                  file=sys.stderr)
            return 2
        try:
            report = None if data is None else json.loads(data)
        except ValueError as exc:  # "not a finished build" of a report.json that is there, edited by hand (a tester)
            print(f"dolmino report: error: {shown}: report.json is not JSON ({exc}); a damaged report?",
                  file=sys.stderr)
            return 2
        released = read_json(out, "RELEASE.json") is not None
        if report is None and released:
            # a release keeps its files under data/<publish id>/: "not a finished build" misled (a tester)
            print(f"dolmino report: error: {shown}: a release (RELEASE.json), which is immutable; its report.html "
                  "and charts are in it: run `dolmino report` on the build's --out, or `dolmino release pull` it and "
                  "run it on a copy without RELEASE.json", file=sys.stderr)
            return 2
        if released:
            # A pulled release was checked file by file against RELEASE.json; views redrawn in place by another
            # dolmino or matplotlib would no longer match it, unsaid (a tester). A copy with RELEASE.json was refused
            # again: the remedy says to leave it out (another tester).
            print(f"dolmino report: error: {shown}: a pulled release (RELEASE.json): its report.html and charts are "
                  "part of it, checked against RELEASE.json's digests when pulled; copy the directory without its "
                  "RELEASE.json and run `dolmino report` on the copy to draw them again", file=sys.stderr)
            return 2
        if report is None:
            print(f"dolmino report: error: {shown}: no readable report.json (not a finished build)", file=sys.stderr)
            return 2
        if problem := report_problem(report):
            print(f"dolmino report: error: {shown}: report.json is not a build report this version draws: {problem} "
                  "(a damaged report?)", file=sys.stderr)
            return 2
        if not out.startswith("s3://") and (reason := why_unwritable(out)):
            # "report-mix.png.tmp7618479: Permission denied" (another user's build, a read-only mount) named
            # neither the build nor a way on (a tester); report.json alone is what a current build's views need
            print(f"dolmino report: error: {shown}: cannot be written ({reason}), and the report is drawn beside "
                  "its report.json: copy report.json to a directory you can write and run `dolmino report` there",
                  file=sys.stderr)
            return 2
        # The build's warning that it drew no views, in the views this draws, contradicted the page that held
        # it (a tester); report.json keeps it, as certified.
        report["warnings"] = [w for w in report.get("warnings") or []
                              if not (isinstance(w, str) and w.startswith(CHARTS_NOT_WRITTEN))]
        written = write_views(out, report, max_parts=None if args.all_parts else max(1, args.sample_parts))
    except Exception as exc:  # noqa: BLE001 - one redacted line
        return errors.report(exc)
    print(f"wrote {', '.join(written)} to {shown}")  # as the errors name it (redact)
    # The page shows the build's warnings; the console said only what was written, as if there were none (a tester).
    from dolmino.report import printable

    for warning in report["warnings"]:  # a report.json's text, as a terminal may show it (printable's why)
        print(f"dolmino report: warning: {printable(str(warning))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from dolmino.stdout_pipe import run_main

    sys.exit(run_main(main))
