"""mkdocs hook: keep the code embedded in the derivation pages in step with the source.

The derivation pages embed the lines of ``loop.py`` that implement each equation with
``pymdownx.snippets``, by line range, under a caption that names the function and equations::

    Code: `loop.point_taps`, lines 32-39, eq. (1)

    ```python linenums="32"
    --8<-- "scratchvision/ops/bilinear/loop.py:32:39"
    ```

Line ranges go stale silently when someone edits the source. This hook checks every embedded
range before the page is rendered and logs a warning (which fails ``mkdocs build --strict``)
unless:

* the caption above the snippet names the same line range, and ``linenums`` starts there;
* the range lies inside the function the caption names (it starts after that ``def`` and no
  other top-level ``def`` begins inside it);
* every equation number in the caption appears in the range as ``eq. (k)``, ``eq. k`` or
  ``eqs. ... (k)`` (in a comment or docstring).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

log = logging.getLogger("mkdocs.hooks.loop_snippets")

SNIPPET = re.compile(r'^\s*--8<--\s+"(?P<path>[^":]+):(?P<start>\d+):(?P<end>\d+)"\s*$')
CAPTION = re.compile(r"^Code: `(?:[\w.]+\.)?(?P<func>\w+)`, lines (?P<start>\d+)-(?P<end>\d+)"
                     r"(?P<rest>.*)$")
LINENUMS = re.compile(r'linenums="(\d+)"')
TOP_LEVEL_DEF = re.compile(r"^(?:async\s+)?def\s+(\w+)")


def _mentions_equation(lines: list[str], k: str) -> bool:
    pattern = re.compile(rf"\beqs?\.\s*(?:\(?{k}\)?\b|.*\({k}\))")
    return any(pattern.search(line) for line in lines)


def _check_snippet(source: Path, start: int, end: int, caption, fence: str | None) -> list[str]:
    """Return the problems with one embedded range (empty when it is right)."""
    if caption is None:
        return ["no 'Code: `module.function`, lines A-B' caption above it"]
    problems = []
    if (int(caption["start"]), int(caption["end"])) != (start, end):
        problems.append(f"caption says lines {caption['start']}-{caption['end']}")
    numbered = LINENUMS.search(fence or "")
    if numbered is None or int(numbered.group(1)) != start:
        problems.append(f'the code fence should say linenums="{start}"')
    lines = source.read_text(encoding="utf-8").splitlines()
    if not 1 <= start <= end <= len(lines):
        return problems + [f"{source} has {len(lines)} lines"]
    enclosing = None
    for line in lines[:start]:
        found = TOP_LEVEL_DEF.match(line)
        if found:
            enclosing = found.group(1)
    if enclosing != caption["func"]:
        problems.append(f"line {start} is in {enclosing!r}, not {caption['func']!r}")
    inner = [TOP_LEVEL_DEF.match(line).group(1) for line in lines[start:end]
             if TOP_LEVEL_DEF.match(line)]
    if inner:
        problems.append(f"the range runs into the next function(s) {inner}")
    body = lines[start - 1:end]
    for k in re.findall(r"\((\d+)\)", caption["rest"]):
        if not _mentions_equation(body, k):
            problems.append(f"eq. ({k}) is not mentioned in lines {start}-{end}")
    return problems


def on_page_markdown(markdown: str, page, config, files):
    root = Path(config["config_file_path"]).parent
    caption = fence = None
    for number, line in enumerate(markdown.splitlines(), start=1):
        found = CAPTION.match(line)
        if found:
            caption = found
            continue
        if line.lstrip().startswith("```") and "linenums" in line:
            fence = line
            continue
        snippet = SNIPPET.match(line)
        if snippet is None:
            continue
        start, end = int(snippet["start"]), int(snippet["end"])
        problems = _check_snippet(root / snippet["path"], start, end, caption, fence)
        for problem in problems:
            log.warning("%s:%d: snippet %s:%d:%d is out of step with the source: %s",
                        page.file.src_uri, number, snippet["path"], start, end, problem)
        caption = fence = None
    return markdown
