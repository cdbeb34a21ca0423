// Loaded before the vendored widget manager (see nb_ipywidgets_js in _config.yml).
// 1. The manager, loaded as the AMD module "@jupyter-widgets/html-manager/dist/...", fetches its icon fonts from
//    that module path, which require.js resolves against the page; map it to the vendored copy instead.
//    (A global `require` defined before require.js loads is its configuration.)
window.require = {
  paths: { "@jupyter-widgets/html-manager/dist": new URL("widgets", document.currentScript.src).href },
};
// 2. The manager typesets widget labels with the MathJax 2 API (MathJax.Hub.Queue); the book loads MathJax 3.
//    Give it a Hub that forwards to MathJax 3, before the manager renders the widgets on DOMContentLoaded.
document.addEventListener("DOMContentLoaded", function () {
  var mathjax = window.MathJax;
  if (mathjax && !mathjax.Hub) {
    mathjax.Hub = {
      Queue: function (command) {
        var element = Array.isArray(command) ? command[2] : undefined;
        if (element && mathjax.typesetPromise) { mathjax.typesetPromise([element]); }
      },
    };
  }
});
