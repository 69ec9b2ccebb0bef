// harness dashboard: keeps what the reader opened or closed across live updates.
// htmx swaps fragments in place; <details data-key> elements keep their open state, and the
// scroll position of the page stays where it was.
(function () {
  "use strict";
  var closed = new Set();
  document.addEventListener("toggle", function (event) {
    var el = event.target;
    if (el.tagName === "DETAILS" && el.dataset.key) {
      if (el.open) { closed.delete(el.dataset.key); } else { closed.add(el.dataset.key); }
    }
  }, true);
  document.addEventListener("htmx:afterSwap", function (event) {
    event.detail.target.ownerDocument.querySelectorAll("details[data-key]").forEach(function (el) {
      if (closed.has(el.dataset.key)) { el.open = false; }
    });
  });
  document.addEventListener("click", function (event) {
    var link = event.target.closest("a.open-transcript");
    if (!link) { return; }
    document.querySelectorAll("a.open-transcript.on").forEach(function (a) { a.classList.remove("on"); });
    link.classList.add("on");
  });
})();
