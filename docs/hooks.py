"""mkdocs hook: the tutorials and the exercises' README become pages of the site.

Every ``tutorials/[0-9]*.py`` (jupytext percent format) is added to the site as a page at
``tutorials/<name>/``, without a copy of the source under ``docs/``: the file is registered with
mkdocs under the virtual path ``tutorials/<name>.py`` (so a page links to it as
``../tutorials/01_bilinear_sampling.py#anchor``, and mkdocs checks that link), mkdocs-jupyter
executes and renders it, and this hook then

* puts it into the nav section "Tutorials" (sorted by file name, titled by its first
  heading; a new tutorial needs no edit),
* turns the links of its markdown cells, written relative to the repository
  (``../docs/derivations/bilinear.md#anchor``, ``02_deformable_convolution.py#anchor``), into
  links between pages of the site, and has mkdocs check them and their anchors like the links
  of any page (``validation`` in mkdocs.yml),
* rebuilds the page's table of contents and anchors from the rendered headings (mkdocs-jupyter
  drops inline code from the heading ids of its table of contents, so its links would miss),
* removes the notebook's own MathJax 2 loader: the site's vendored MathJax 3 (mkdocs.yml's
  extra_javascript) typesets the notebook's maths too, with no network.

``tutorials/exercises/README.md`` becomes the page ``exercises/``.
"""

from __future__ import annotations

import html
import posixpath
import re
from html.parser import HTMLParser
from pathlib import Path

from mkdocs.plugins import event_priority, get_plugin_logger
from mkdocs.structure.files import File
from mkdocs.structure.toc import get_toc

log = get_plugin_logger("tutorials")

ROOT = Path(__file__).resolve().parents[1]  # the repository
TUTORIALS = ROOT / "tutorials"
EXERCISES_README = TUTORIALS / "exercises" / "README.md"
NAV_SECTION = "Tutorials"


def _tutorials() -> list[Path]:
    return sorted(TUTORIALS.glob("[0-9]*.py"))


def on_config(config):
    """Fill the nav section "Tutorials" with every tutorial it does not list yet."""
    nav = config.nav
    if nav is None:
        return config
    for entry in nav:
        if isinstance(entry, dict) and NAV_SECTION in entry:
            section = entry[NAV_SECTION] or []
            listed = {value for item in section if isinstance(item, dict)
                      for value in item.values()} | {item for item in section
                                                     if isinstance(item, str)}
            for path in _tutorials():
                uri = f"tutorials/{path.name}"
                if uri not in listed:
                    section.append(uri)  # titled by the notebook's first heading
            entry[NAV_SECTION] = section
            break
    else:
        log.warning(f"mkdocs.yml's nav has no section '{NAV_SECTION}' for the tutorials")
    return config


@event_priority(100)  # before mkdocs-jupyter's on_files, which must see the tutorials
def on_files(files, config):
    for path in _tutorials():
        # src_dir is the repository, so abs_src_path = <repo>/tutorials/<name>.py: a plain
        # File, which mkdocs-jupyter can wrap (it recomputes abs_src_path from src_dir)
        files.append(File(f"tutorials/{path.name}", src_dir=str(ROOT),
                          dest_dir=config.site_dir,
                          use_directory_urls=config.use_directory_urls))
    if EXERCISES_README.exists():
        files.append(File.generated(config, "exercises/index.md",
                                    abs_src_path=str(EXERCISES_README)))
    return files


def on_serve(server, config, builder):
    server.watch(str(TUTORIALS))
    return server


# --- tutorial pages, after mkdocs-jupyter rendered them ------------------------------------

_MATHJAX2 = re.compile(
    r'<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->', re.DOTALL)
# nbconvert's loader of mermaid.js (from a CDN), which runs only if a cell draws a diagram
_MERMAID = re.compile(r'<script type="module">(?:(?!</script>).)*?jp-Mermaid.*?</script>',
                      re.DOTALL)
# the value of a cell ending in show(fig, name): the path of the temporary PNG, which the figure
# just above it makes redundant on the site
_FIGURE_PATH_RESULT = re.compile(
    r'<div class="jp-OutputArea-child jp-OutputArea-executeResult">\s*'
    r'<div class="jp-OutputPrompt[^"]*">Out\[\d+\]:</div>\s*'
    r'<div class="jp-RenderedText[^"]*" data-mime-type="text/plain"[^>]*>\s*'
    r'<pre>(?:Posix|Windows)?Path\((?:\'|&#x27;|&#39;)[^<]*?\.png(?:\'|&#x27;|&#39;)\)</pre>'
    r'\s*</div>\s*</div>')
_REMOTE_SCRIPT = re.compile(r'<script[^>]*\ssrc="(?:https?:)?//', re.IGNORECASE)
_HREF = re.compile(r'(<a\s[^>]*?href=")([^"]*)(")')


class _Headings(HTMLParser):
    """The h1-h6 of a page: (level, id, text), and every id present."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.headings: list[dict] = []
        self.ids: set[str] = set()
        self._open: dict | None = None
        self._skip = 0  # inside the heading's own permalink

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if re.fullmatch(r"h[1-6]", tag) and attrs.get("id"):
            self._open = {"level": int(tag[1]), "id": attrs["id"], "name": ""}
        elif self._open is not None and tag == "a" and "anchor-link" in (attrs.get("class")
                                                                           or ""):
            self._skip += 1

    def handle_endtag(self, tag):
        if self._open is not None and tag == "a" and self._skip:
            self._skip -= 1
        elif self._open is not None and re.fullmatch(r"h[1-6]", tag):
            self._open["name"] = " ".join(self._open["name"].split())
            self.headings.append(self._open)
            self._open = None

    def handle_data(self, data):
        if self._open is not None and not self._skip:
            self._open["name"] += data


def _toc_tokens(headings: list[dict]) -> list[dict]:
    tokens: list[dict] = []
    stack: list[dict] = []
    for heading in headings:
        token = {"level": heading["level"], "id": heading["id"],
                 "name": html.escape(heading["name"]), "children": []}
        while stack and stack[-1]["level"] >= token["level"]:
            stack.pop()
        (stack[-1]["children"] if stack else tokens).append(token)
        stack.append(token)
    return tokens


def _site_uri(repo_path: str) -> str | None:
    """A path relative to the repository -> the src_uri of the page it is on the site."""
    if repo_path.startswith("docs/"):
        return repo_path[len("docs/"):]
    if repo_path == "tutorials/exercises/README.md":
        return "exercises/index.md"
    if repo_path.startswith("tutorials/") and "/" not in repo_path[len("tutorials/"):]:
        return repo_path
    return None


def on_page_content(content, page, config, files):
    src = page.file.src_uri
    if not (src.startswith("tutorials/") and src.endswith(".py")):
        return content
    content = _MERMAID.sub("", _MATHJAX2.sub("", content))
    content = _FIGURE_PATH_RESULT.sub("", content)
    if _REMOTE_SCRIPT.search(content) or "import(\"http" in content:
        log.warning(f"{src}: the rendered notebook loads a script from the network")
    if re.search(r'class="[^"]*\bjp-Mermaid\b', content):
        log.warning(f"{src}: a mermaid diagram needs mermaid.js, which the site does not ship")

    page.links_to_anchors = {}

    def rewrite(match):
        prefix, href, suffix = match.groups()
        if re.match(r"[a-z][a-z0-9+.-]*:|#|/", href, re.IGNORECASE):
            return match.group(0)  # external, same page, or absolute: left alone
        target, _, anchor = html.unescape(href).partition("#")
        repo_path = posixpath.normpath(posixpath.join("tutorials", target))
        uri = _site_uri(repo_path)
        target_file = files.get_file_from_path(uri) if uri else None
        if target_file is None or not target_file.is_documentation_page():
            log.warning(f"Tutorial '{src}' links to '{href}', which is not a page of the site "
                        f"(link to docs/*.md or to another tutorial)")
            return match.group(0)
        if anchor:
            page.links_to_anchors.setdefault(target_file, {})[anchor] = href
        url = target_file.url_relative_to(page.file)
        return prefix + html.escape(url + (f"#{anchor}" if anchor else "")) + suffix

    content = _HREF.sub(rewrite, content)
    headings = _Headings()
    headings.feed(content)
    page.present_anchor_ids = headings.ids
    page.toc = get_toc(_toc_tokens(headings.headings))
    return content
