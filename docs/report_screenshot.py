"""Regenerate docs/report.png, the README's picture of a report: the demo's CMR run, its report
rebuilt and photographed by Debian's headless Chromium.

    make demo && .venv/bin/python docs/report_screenshot.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from echodeploy.benchmarks.browser import chromium, open_page
from echodeploy.client.results.report import build_report

DOCS = Path(__file__).resolve().parent


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, nargs="?", default=Path("echodeploy_demo/cmr"),
                        help="A finished run folder (default: the demo's CMR run; `make demo` makes it).")
    parser.add_argument("--out", type=Path, default=DOCS / "report.png")
    parser.add_argument("--height", type=int, default=1500, help="Page height shown, in CSS pixels.")
    parser.add_argument("--scale", type=float, default=0.6, help="Size of the picture relative to the page.")
    args = parser.parse_args(argv)
    page_path = build_report(args.run)
    with chromium() as browser:
        page, problems = open_page(browser, page_path, width=1100, height=args.height)
        if problems:
            raise SystemExit(f"{page_path}: {problems}")
        shot = page.screenshot(clip={"x": 0, "y": 0, "width": 1100, "height": args.height})
    image = cv2.imdecode(np.frombuffer(shot, np.uint8), cv2.IMREAD_COLOR)
    image = cv2.resize(image, None, fx=args.scale, fy=args.scale, interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(args.out), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB) from {page_path}")
    return args.out


if __name__ == "__main__":
    main()
