"""Draw each Grafana dashboard of k8s/monitoring/dashboards as a PNG, from a local Prometheus.

    python scripts/dashboard_figures.py --home data/mesh           # a mesh started with --monitoring
    python scripts/dashboard_figures.py --prometheus http://127.0.0.1:9090 --minutes 30
    python scripts/dashboard_figures.py --drive 12   # a throwaway mesh, 12 min of traffic (the docs' figures)

Why: Grafana cannot run on this project's machines, but the dashboards' queries can. This runs every
panel's queries (``query_range``, Grafana's ``$__rate_interval``/``$__range`` replaced) against the
Prometheus of a local mesh and lays the panels out as the dashboard's grid does, so docs can show what
an operator would see and a query that returns nothing shows as "no data". Drawn with Pillow (a
dependency of the package already): no plotting library is needed.

Output: docs/figures/dashboards/<uid>.png (``--out`` to change).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from cxrmesh.local.mesh import MeshError, MeshState
from cxrmesh.local.prometheus import PrometheusAPI

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "k8s" / "monitoring" / "dashboards"
OUT = ROOT / "docs" / "figures" / "dashboards"
WIDTH, UNIT_H, PAD = 1800, 34, 10  # image width; pixels per grid row; panel spacing
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
PALETTE += ("#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#843c39")
BG, PANEL_BG, GRID, TEXT, MUTED = "#f4f5f5", "#ffffff", "#e3e5e8", "#1f2328", "#6e7781"


def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(name, size)
    except OSError:
        return ImageFont.load_default(size)


def fmt(value: float, unit: str) -> str:
    """A value as Grafana would label it for the panel's unit (the few units the dashboards use)."""
    if math.isnan(value):
        return "NaN"
    if unit == "percentunit":
        return f"{value * 100:.3g} %"
    if unit == "s":
        return f"{value * 1000:.3g} ms" if abs(value) < 1 and value else f"{value:.3g} s"
    if unit == "ms":
        return f"{value / 1000:.3g} s" if abs(value) >= 1000 else f"{value:.3g} ms"
    suffix = {"reqps": " req/s", "ops": " /s"}.get(unit, "")
    for scale, letter in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{letter}{suffix}"
    return f"{value:.3g}{suffix}"


def legend(template: str, labels: dict[str, str]) -> str:
    """The series' name as Grafana writes it: ``{{label}}`` replaced, missing labels by nothing."""
    out = template
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value)
    out = re.sub(r"{{\s*\w+\s*}}", "", out).strip()
    return out or ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"


def expand(expr: str, minutes: int) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$__range", f"{minutes}m")


def series(api: PrometheusAPI, panel: dict, start: float, end: float, minutes: int) -> list[tuple]:
    """(label, [(t, v)]) for every series of every query of the panel."""
    step = max(5.0, (end - start) / 240)
    out = []
    for target in panel.get("targets", []):
        for s in api.query_range(expand(target["expr"], minutes), start, end, step):
            points = [(float(t), float(v)) for t, v in s["values"]]
            out.append((legend(target.get("legendFormat", ""), s["metric"]), points))
    return out


def nice_ticks(low: float, high: float, n: int = 4) -> list[float]:
    if high <= low:
        high = low + 1
    raw = (high - low) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    ticks = [math.floor(low / step) * step]
    while ticks[-1] < high - step * 1e-6:
        ticks.append(ticks[-1] + step)
    return ticks


def draw_timeseries(
    d: ImageDraw.ImageDraw, box: tuple, data: list[tuple], unit: str, start: float, end: float
):
    x0, y0, x1, y1 = box
    values = [v for _, pts in data for _, v in pts if math.isfinite(v)]
    shown = data[:10]
    columns = max(1, min(3, int((x1 - x0) // 280)))  # legend entries per line, by panel width
    legend_rows = math.ceil(len(shown) / columns)
    plot = (x0 + 78, y0 + 4, x1 - 10, y1 - 20 - legend_rows * 17)
    px0, py0, px1, py1 = plot
    if not values:
        d.text(((x0 + x1) / 2, (y0 + y1) / 2), "no data", fill=MUTED, font=font(16), anchor="mm")
        return
    low, high = min(0.0, min(values)), max(values)
    ticks = nice_ticks(low, high if high > low else low + (abs(low) or 1))
    low, high = ticks[0], ticks[-1]
    small = font(12)
    for tick in ticks:
        y = py1 - (tick - low) / (high - low) * (py1 - py0)
        d.line((px0, y, px1, y), fill=GRID)
        d.text((px0 - 6, y), fmt(tick, unit), fill=MUTED, font=small, anchor="rm")
    for i in range(5):
        t = start + i * (end - start) / 4
        x = px0 + i * (px1 - px0) / 4
        anchor = "la" if i == 0 else "ra" if i == 4 else "ma"
        d.text((x, py1 + 8), time.strftime("%H:%M", time.gmtime(t)), fill=MUTED, font=small, anchor=anchor)
    for k, (_, pts) in enumerate(shown):
        line = [
            (px0 + (t - start) / (end - start) * (px1 - px0), py1 - (v - low) / (high - low) * (py1 - py0))
            for t, v in pts
            if math.isfinite(v)
        ]
        colour = PALETTE[k % len(PALETTE)]
        if len(line) > 1:
            d.line(line, fill=colour, width=2)
        elif line:
            d.ellipse((line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2), fill=colour)
    col_w = (x1 - x0 - 20) / columns
    chars = int((col_w - 24) // 7)  # what fits of a label at 12 px
    for k, (label, _) in enumerate(shown):
        lx, ly = x0 + 12 + (k % columns) * col_w, y1 - 4 - (legend_rows - k // columns) * 17 + 4
        d.rectangle((lx, ly + 4, lx + 10, ly + 8), fill=PALETTE[k % len(PALETTE)])
        text = label if len(label) <= chars else label[: chars - 1] + "…"
        d.text((lx + 15, ly), text, fill=TEXT, font=small)
    if len(data) > len(shown):
        d.text(
            (x1 - 10, y0 + 4), f"+{len(data) - len(shown)} more series", fill=MUTED, font=small, anchor="ra"
        )


def draw_stat(d: ImageDraw.ImageDraw, box: tuple, data: list[tuple], unit: str) -> None:
    x0, y0, x1, y1 = box
    last = [(label, next((v for _, v in reversed(pts) if math.isfinite(v)), math.nan)) for label, pts in data]
    if not last:
        d.text(((x0 + x1) / 2, (y0 + y1) / 2), "no data", fill=MUTED, font=font(16), anchor="mm")
        return
    cell = (x1 - x0) / len(last)
    for k, (label, value) in enumerate(last):
        cx = x0 + cell * (k + 0.5)
        d.text(
            (cx, (y0 + y1) / 2 - 10),
            fmt(value, unit),
            fill=PALETTE[k % len(PALETTE)],
            font=font(30, True),
            anchor="mm",
        )
        d.text((cx, (y0 + y1) / 2 + 24), label[:30], fill=MUTED, font=font(13), anchor="mm")


def render(board: dict, api: PrometheusAPI, minutes: int) -> Image.Image:
    end = time.time()
    start = end - minutes * 60
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
    header = 64
    image = Image.new("RGB", (WIDTH, header + bottom * UNIT_H + PAD), BG)
    d = ImageDraw.Draw(image)
    d.text((PAD + 4, 14), board["title"], fill=TEXT, font=font(24, True))
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(end))
    d.text(
        (PAD + 4, 44),
        f"last {minutes} min, to {stamp}; {board['description']}"[:190],
        fill=MUTED,
        font=font(13),
    )
    col = (WIDTH - PAD) / 24
    for panel in board["panels"]:
        g = panel["gridPos"]
        x0, y0 = PAD + g["x"] * col, header + g["y"] * UNIT_H
        x1, y1 = PAD + (g["x"] + g["w"]) * col - PAD, header + (g["y"] + g["h"]) * UNIT_H - PAD
        if panel["type"] == "row":
            d.text((x0 + 2, y0 + 6), panel["title"], fill=TEXT, font=font(17, True))
            continue
        d.rectangle((x0, y0, x1, y1), fill=PANEL_BG, outline=GRID)
        d.text((x0 + 10, y0 + 8), panel["title"], fill=TEXT, font=font(15, True))
        data = series(api, panel, start, end, minutes)
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        body = (x0 + 4, y0 + 32, x1 - 4, y1 - 4)
        if panel["type"] == "stat":
            draw_stat(d, body, data, unit)
        else:
            draw_timeseries(d, body, data, unit, start, end)
    return image


def mesh_prometheus(home: Path) -> PrometheusAPI:
    state = MeshState.load(home.resolve())
    if state is None:
        sys.exit(f"no mesh in {home}: start one with `cxrmesh up --monitoring`")
    try:
        return state.prometheus(timeout_s=30)
    except MeshError as exc:
        sys.exit(str(exc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--home", type=Path, default=Path("data/mesh"), help="mesh home (its Prometheus)")
    where.add_argument("--prometheus", default="", help="Prometheus URL instead of a mesh home")
    parser.add_argument("--password-file", type=Path, help="with --prometheus: its password (user ops)")
    where.add_argument("--drive", type=float, default=0, help="minutes of traffic on a throwaway mesh first")
    parser.add_argument("--minutes", type=int, default=15, help="time range drawn, ending now")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.drive:
        from mesh_traffic import mesh_with_traffic  # scripts/: only this mode starts a mesh

        with mesh_with_traffic(args.drive) as state:
            draw(state.prometheus(timeout_s=30), args.out, math.ceil(args.drive) + 1)
        return 0
    if args.prometheus:
        api = PrometheusAPI(args.prometheus, args.password_file, timeout_s=30)
    else:
        api = mesh_prometheus(args.home)
    draw(api, args.out, args.minutes)
    return 0


def draw(api: PrometheusAPI, out_dir: Path, minutes: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        out = out_dir / f"{board['uid']}.png"
        render(board, api, minutes).save(out, optimize=True)
        print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
