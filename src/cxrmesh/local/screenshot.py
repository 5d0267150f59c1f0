"""Development tooling: a PNG of an HTML page (the demo report) taken with headless Chromium.

Used to refresh the README's picture of the report (``docs/demo-report.png``) and by a test that
renders the report when a browser is installed; nothing in the services needs a browser.

Usage: python -m cxrmesh.local.screenshot REPORT.html OUT.png [WIDTH HEIGHT]
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = (
    "chromium",
    "chromium-browser",
    "chromium-headless-shell",
    "google-chrome",
    "headless_shell",
)
TIMEOUT_S = 180


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: Path, png: Path, width: int = 1400, height: int = 2000) -> None:
    """Render ``html`` with headless Chromium into ``png`` (``width`` x ``height`` CSS pixels)."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError(
            "headless Chromium not found (looked for " + ", ".join(CHROMIUM_NAMES) + "): "
            "install it, e.g. `apt-get install -y chromium-headless-shell` or `apt-get install -y chromium`"
        )
    html, png = Path(html).resolve(), Path(png).resolve()
    if not html.is_file():
        raise FileNotFoundError(html)
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="cxrmesh-chromium-") as profile:
        cmd = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            html.as_uri(),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{binary} did not finish the screenshot in {TIMEOUT_S} s") from exc
    if proc.returncode != 0 or not png.is_file():
        tail = (proc.stderr or proc.stdout).strip()[-800:]
        raise RuntimeError(f"{binary} failed to write {png} (exit {proc.returncode}): {tail}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) not in (2, 4):
        sys.exit((__doc__ or "").strip().splitlines()[-1])
    screenshot(Path(args[0]), Path(args[1]), *(int(a) for a in args[2:]))
