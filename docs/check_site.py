"""Look at the built site in a real browser, offline, as a learner on a plane would.

    python docs/check_site.py SCREENSHOT_FOLDER            # builds the site first (mkdocs)
    python docs/check_site.py SCREENSHOT_FOLDER --site site # checks an already built site

It serves the site with ``python -m http.server`` on a free port of 127.0.0.1, opens pages in
Debian's headless Chromium with every host name but localhost unresolvable (no network), lets
their scripts run, and saves screenshots. For every page it checks that

* every ``<img>`` loaded (complete, with a non-zero natural width), and a tutorial page shows
  at least as many figures as its source has ``show(fig, ...)`` lines;
* MathJax ran and typeset every equation of the page (each ``.arithmatex`` element holds an
  ``mjx-container``) with no TeX error (``mjx-merror``), every typeset glyph has the CSS that
  draws it, the MathJax fonts loaded, and no raw TeX is left in the visible text (``\\frac``,
  ``$$``, ``\\(``, ...);
* nothing the page asked the server for was missing (a 404 of a vendored font, say).

It exits 1 if any check fails, naming the page and what failed, and 0 otherwise. The checks run
in a small probe script that is added to a *copy* of each checked page; the site itself is not
changed. A developer script: CI builds the site with ``mkdocs build --strict`` but does not
start a browser. Chromium: ``apt-get install -y chromium``.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# page (relative to the site), anchors to take a screenshot at (None: the top of the page)
DEFAULT_PAGES = {
    "tutorials/01_bilinear_sampling/": [None, "2-the-four-taps-and-their-weights",
                                        "4-the-gradient-with-respect-to-a-point"],
    "derivations/bilinear/": [None, "with-respect-to-the-point-derivatives-of-the-weights"],
}

PROBE = r"""
(function () {
  function skip(el) {  // text a reader does not see as prose: code, outputs, typeset maths
    return el.closest("pre, code, script, style, mjx-container, .jp-OutputArea, .md-search, "
                      + ".md-nav, .md-header, .md-footer, .highlight, .clipboard-copy-txt");
  }
  function report(extra) {
    var result = {mathjax: !!(window.MathJax && MathJax.startup && MathJax.startup.document),
                  equations: document.querySelectorAll("mjx-container").length,
                  // maths written in markdown (pymdownx.arithmatex) that MathJax left alone
                  untypeset: Array.prototype.filter.call(
                    document.querySelectorAll(".arithmatex"),
                    function (el) { return !el.querySelector("mjx-container"); }).length,
                  tex_errors: document.querySelectorAll("mjx-merror").length,
                  images: [], broken_images: [], raw_tex: [], error: extra || null};
    document.querySelectorAll("article img").forEach(function (img) {
      var name = (img.getAttribute("src") || "").slice(0, 60);
      result.images.push(name);
      if (!img.complete || img.naturalWidth === 0) result.broken_images.push(name);
    });
    result.output_images = document.querySelectorAll("article .jp-OutputArea img").length;
    // a typeset glyph is drawn by CSS (mjx-c::before { content: "x" }); without that rule the
    // equation keeps its size but shows nothing
    var glyphs = document.querySelectorAll("mjx-container mjx-c"), blank = 0;
    for (var i = 0; i < glyphs.length; i += Math.max(1, Math.floor(glyphs.length / 400))) {
      var content = getComputedStyle(glyphs[i], "::before").content;
      if (!content || content === "none" || content === "normal") blank++;
    }
    result.blank_glyphs = blank;
    result.font_errors = [];
    document.fonts.forEach(function (face) {
      if (face.status === "error") result.font_errors.push(face.family);
    });
    var walker = document.createTreeWalker(document.querySelector("article") || document.body,
                                           NodeFilter.SHOW_TEXT);
    var pattern = /\\(frac|partial|sum|begin\{|mathrm|operatorname|left|right)|\$\$|\\\(|\\\[|\$[^$\s][^$]*\$/;
    for (var node = walker.nextNode(); node; node = walker.nextNode()) {
      var el = node.parentElement;
      if (!el || skip(el)) continue;
      var match = pattern.exec(node.nodeValue);
      if (match && el.offsetParent !== null) {
        var at = Math.max(0, match.index - 30);
        result.raw_tex.push(node.nodeValue.slice(at, at + 90).replace(/\s+/g, " "));
      }
    }
    result.anchors = {};  // where the anchors to photograph are, in page pixels
    (window.__siteCheckAnchors || []).forEach(function (id) {
      var el = document.getElementById(id);
      result.anchors[id] = el ? el.getBoundingClientRect().top + window.scrollY : null;
    });
    document.documentElement.setAttribute("data-site-check", JSON.stringify(result));
  }
  function whenTypeset() {
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
      MathJax.startup.promise.then(function () { return document.fonts.ready; })
                             .then(function () { report(); },
                                   function (e) { report("MathJax failed: " + e); });
    } else {
      report("MathJax did not load");
    }
  }
  if (document.readyState === "complete") setTimeout(whenTypeset, 0);
  else window.addEventListener("load", function () { setTimeout(whenTypeset, 0); });
})();
"""


VIEW = (1280, 1600)  # the window a screenshot shows, in pixels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_command(profile: Path) -> list[str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("check_site: no chromium on PATH (Debian: apt-get install -y chromium)")
    return [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            "--hide-scrollbars", f"--user-data-dir={profile}",
            # no network: every host name but localhost fails to resolve
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
            "--virtual-time-budget=30000"]


def build_site(into: Path) -> None:
    print(f"check_site: mkdocs build --strict -> {into}", flush=True)
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                    str(into)], cwd=ROOT, check=True)
    print(f"check_site: built in {time.monotonic() - start:.0f} s", flush=True)


def expected_figures(page: str) -> int:
    """The number of show(fig, ...) lines of a tutorial's source; 0 for other pages."""
    match = re.fullmatch(r"tutorials/([0-9][^/]*)/", page)
    if not match:
        return 0
    source = ROOT / "tutorials" / f"{match.group(1)}.py"
    return len(re.findall(r"^\s*show\(", source.read_text(encoding="utf-8"), re.MULTILINE))


def check_page(page: str, anchors, base: str, chromium: list[str], out: Path) -> list[str]:
    problems = []
    dump = subprocess.run(chromium + ["--dump-dom", base + page], capture_output=True,
                          text=True, timeout=180)
    found = re.search(r'data-site-check="([^"]*)"', dump.stdout)
    if not found:
        return [f"{page}: the probe did not report (chromium exit {dump.returncode}: "
                f"{dump.stderr.strip()[-300:]})"]
    result = json.loads(html.unescape(found.group(1)))
    figures = expected_figures(page)
    print(f"  {page}: {result['equations']} typeset equations, {len(result['images'])} images "
          f"({result['output_images']} in cell outputs, {figures} figures in the source)")
    if result["error"]:
        problems.append(f"{page}: {result['error']}")
    if not result["mathjax"]:
        problems.append(f"{page}: MathJax did not start")
    if result["blank_glyphs"]:
        problems.append(f"{page}: {result['blank_glyphs']} sampled glyphs of typeset equations "
                        f"have no CSS to draw them (the equations show blank)")
    for family in result["font_errors"]:
        problems.append(f"{page}: the font {family} failed to load")
    if result["tex_errors"]:
        problems.append(f"{page}: {result['tex_errors']} equations failed to typeset "
                        f"(mjx-merror)")
    for text in result["raw_tex"]:
        problems.append(f"{page}: raw TeX left in the text: ...{text}...")
    for name in result["broken_images"]:
        problems.append(f"{page}: an image did not load: {name}...")
    if result["output_images"] < figures:
        problems.append(f"{page}: {result['output_images']} figures shown, but the tutorial "
                        f"makes {figures}")
    if result["untypeset"]:
        problems.append(f"{page}: {result['untypeset']} equations of the page were not typeset")
    # One tall screenshot from the top (chromium's --screenshot does not paint a page
    # scrolled to a #fragment), then a window's worth cut out at the top and at each anchor.
    tops = {}
    for anchor in anchors:
        if anchor is None:
            tops[anchor] = 0
        elif result["anchors"].get(anchor) is None:
            problems.append(f"{page}: no element with id '{anchor}' to take a screenshot at")
        else:
            tops[anchor] = max(0, int(result["anchors"][anchor]) - 90)
    height = min(16000, max(tops.values(), default=0) + VIEW[1])
    tall = out / "_tall.png"
    subprocess.run(chromium + [f"--window-size={VIEW[0]},{height}", f"--screenshot={tall}",
                               base + page], capture_output=True, timeout=180)
    if not (tall.exists() and tall.stat().st_size):
        return problems + [f"{page}: chromium wrote no screenshot"]
    from PIL import Image  # Pillow: a dependency of scratchvision

    with Image.open(tall) as picture:
        for anchor, top in tops.items():
            name = (page.strip("/").replace("/", "_") or "index") + (f"_{anchor}" if anchor
                                                                      else "_top")
            shot = out / f"{name}.png"
            picture.crop((0, top, VIEW[0], min(picture.height, top + VIEW[1]))).save(shot)
            print(f"    screenshot {shot}")
    tall.unlink()
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("screenshots", type=Path, help="folder for the screenshots (created)")
    parser.add_argument("--site", type=Path, help="a built site (default: build one now)")
    parser.add_argument("--page", action="append", default=[],
                        help="a page to check instead of the defaults, e.g. derivations/conv2d/ "
                             "(repeatable; add #anchor for a second screenshot there)")
    args = parser.parse_args(argv)
    pages = DEFAULT_PAGES
    if args.page:
        pages = {}
        for spec in args.page:
            page, _, anchor = spec.partition("#")
            page = page.strip("/") + "/" if page.strip("/") else ""  # "" is the home page
            pages.setdefault(page, [None]).extend([anchor] if anchor else [])
    args.screenshots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="scratchvision_site_") as tmp:
        tmp = Path(tmp)
        site = tmp / "site"
        if args.site:
            shutil.copytree(args.site, site)
        else:
            build_site(site)
        # the probe goes into copies of the checked pages only
        (site / "__site_check_probe.js").write_text(PROBE, encoding="utf-8")
        for page in pages:
            index = site / page / "index.html"
            if not index.exists():
                print(f"check_site: no page {page} in the site", file=sys.stderr)
                return 1
            text = index.read_text(encoding="utf-8")
            wanted = json.dumps([a for a in pages[page] if a])
            index.write_text(text.replace(
                "</body>", f'<script>window.__siteCheckAnchors = {wanted};</script>'
                           '<script src="/__site_check_probe.js"></script></body>'),
                encoding="utf-8")
        port = free_port()
        log_path = tmp / "server.log"
        with open(log_path, "w") as log:
            server = subprocess.Popen([sys.executable, "-m", "http.server", str(port),
                                       "--bind", "127.0.0.1", "--directory", str(site)],
                                      stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}/"
            for _ in range(100):  # wait until it answers
                try:
                    urllib.request.urlopen(base, timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            chromium = chromium_command(tmp / "profile")
            print(f"check_site: serving {site} at {base}; chromium offline")
            problems = []
            for page, anchors in pages.items():
                problems += check_page(page, anchors, base, chromium, args.screenshots)
        finally:
            server.terminate()
            server.wait(timeout=10)
        missing = sorted({m.group(1) for m in re.finditer(r'"GET (\S+) HTTP/[\d.]+" 404',
                                                          log_path.read_text())})
        problems += [f"the server had no {path} (requested by a page)" for path in missing]
    if problems:
        print("check_site: FAILED", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print("check_site: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
