"""Helpers of the viewer tests: a 127.0.0.1 HTTP server for the npm viewers (tools/web-viewers,
installed by scripts/install_splat_tools.sh), the test pages (tests/web/) and a dataset, and
headless Chromium (selenium) screenshots of a viewer's canvas."""

from __future__ import annotations

import base64
import http.server
import io
import os
import shutil
import threading
import urllib.parse
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
NODE_MODULES = REPO / "tools" / "web-viewers" / "node_modules"
PAGES = Path(__file__).resolve().parent / "web"
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader")


def viewers_installed() -> bool:
    return all((NODE_MODULES / p).is_file() for p in (
        "three/build/three.module.js", "@sparkjsdev/spark/dist/spark.module.js",
        "@mkkellogg/gaussian-splats-3d/build/gaussian-splats-3d.module.js"))


class _Handler(http.server.SimpleHTTPRequestHandler):
    roots: dict[str, Path] = {}

    def translate_path(self, path: str) -> str:
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
        for prefix, root in self.roots.items():
            if path.startswith(prefix + "/"):
                rel = path[len(prefix) + 1:]
                full = (root / rel).resolve()
                if root.resolve() in full.parents or full == root.resolve():
                    return str(full)
        return "/nonexistent"

    def guess_type(self, path):
        if str(path).endswith((".js", ".mjs")):
            return "text/javascript"
        return super().guess_type(path)

    def log_message(self, *args):  # quiet
        pass


def serve(data_dir: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """(server, base URL) serving /node_modules, /web (test pages) and /data (data_dir)."""
    handler = type("H", (_Handler,), {"roots": {"/node_modules": NODE_MODULES, "/web": PAGES,
                                                  "/data": data_dir}})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def chrome(profile_dir: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for f in CHROME_FLAGS:
        opts.add_argument(f)
    opts.add_argument(f"--user-data-dir={profile_dir}")
    drv = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")),
                           options=opts)
    drv.set_page_load_timeout(60)
    return drv


def canvas_rgb(drv, url: str, timeout_s: float = 90.0) -> np.ndarray:
    """Open a test page; when its title says "ready", the canvas pixels (H, W, 3) uint8."""
    from selenium.webdriver.support.ui import WebDriverWait

    drv.get(url)
    WebDriverWait(drv, timeout_s).until(lambda d: d.title in ("ready",) or
                                        d.title.startswith("error"))
    if drv.title != "ready":
        raise AssertionError(f"{url}: {drv.title}")
    data = drv.execute_script("return document.querySelector('canvas').toDataURL('image/png')")
    png = base64.b64decode(data.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def over_black(rgba_png_path: os.PathLike) -> np.ndarray:
    """An exported straight-alpha RGBA view composited over black, (H, W, 3) float in [0, 1]."""
    a = np.asarray(Image.open(rgba_png_path).convert("RGBA")).astype(np.float64) / 255.0
    return a[..., :3] * a[..., 3:4]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10.0 * np.log10(1.0 / max(mse, 1e-12))


def query(**kw) -> str:
    return urllib.parse.urlencode(kw, safe=",/")
