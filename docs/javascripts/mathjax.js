// MathJax 3 configuration for pymdownx.arithmatex in "generic" mode: the extension wraps
// inline maths in \( ... \) and display maths in \[ ... \] inside elements of class
// "arithmatex", and MathJax is told to typeset only those elements.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    tags: "none"
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};

// mkdocs-material swaps pages without a full reload ("instant" navigation); re-typeset then.
if (typeof document$ !== "undefined") {
  document$.subscribe(() => {
    if (window.MathJax && MathJax.typesetPromise) {
      MathJax.startup.output.clearCache();
      MathJax.typesetClear();
      MathJax.texReset();
      MathJax.typesetPromise();
    }
  });
}
