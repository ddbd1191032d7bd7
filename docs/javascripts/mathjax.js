// MathJax 3 configuration. MathJax itself is served from the site's own files
// (javascripts/vendor/mathjax/tex-chtml.js, loaded after this file), so equations render with
// no network; its fonts and TeX extensions are fetched from beside it.
//
// Two kinds of page hold maths:
// - the markdown pages: pymdownx.arithmatex in "generic" mode wraps inline maths in \( ... \)
//   and display maths in \[ ... \] inside elements of class "arithmatex";
// - the tutorials (rendered by mkdocs-jupyter): their markdown cells keep $ ... $ and
//   $$ ... $$ as written, inside elements of class "jp-RenderedMarkdown".
// MathJax is told to typeset only those elements, so a dollar sign anywhere else (code,
// outputs) is left alone. How: an element whose class matches ignoreHtmlClass is skipped with
// everything inside it, unless its class matches processHtmlClass. ".+" matches every element
// that has a class (all of the theme's do), and no element without one, so the paragraphs
// inside a notebook's markdown cell (plain <p>, <li>, <em>) stay typeset.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"], ["$", "$"]],
    displayMath: [["\\[", "\\]"], ["$$", "$$"]],
    processEscapes: true,
    processEnvironments: true,
    tags: "none"
  },
  options: {
    ignoreHtmlClass: ".+",
    processHtmlClass: "arithmatex|jp-RenderedMarkdown"
  }
};

// mkdocs-material swaps pages without a full reload when its "instant" navigation is on;
// typeset the new page then. document$ also emits for the first page, while MathJax's own
// startup typesetting may still be running: clearing MathJax's caches then would drop the
// glyphs' CSS and leave every equation blank, so the first emission is skipped.
if (typeof document$ !== "undefined") {
  let firstPage = true;
  document$.subscribe(() => {
    if (firstPage) {
      firstPage = false;
      return;
    }
    if (window.MathJax && MathJax.typesetPromise) {
      MathJax.startup.output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      MathJax.typesetPromise();
    }
  });
}
