// Render the math that pymdownx.arithmatex (generic mode) wraps in .arithmatex spans,
// on every page load, including Material's instant navigation (document$).
function blRenderMath() {
  if (typeof renderMathInElement !== "function") return;
  document.querySelectorAll(".arithmatex").forEach(function (el) {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  });
}
if (typeof document$ !== "undefined") {
  document$.subscribe(blRenderMath);
} else {
  document.addEventListener("DOMContentLoaded", blRenderMath);
}
