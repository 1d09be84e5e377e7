/* The top bar's navigation collapses behind a "Menu" button when its links do not fit on one line
 * (whatever the role's number of links and the window's width), instead of cutting links off.
 * Without this script the links scroll sideways. */
(function () {
  "use strict";

  var bar = document.querySelector(".topbar");
  var nav = document.getElementById("mainnav");
  var button = bar && bar.querySelector(".nav-toggle");
  if (!bar || !nav || !button) return;

  function setOpen(open) {
    bar.classList.toggle("nav-open", open);
    button.setAttribute("aria-expanded", open ? "true" : "false");
  }

  // Measure in the expanded layout: the links fit when the nav needs no more room than it has.
  function layout() {
    var wasCollapsed = bar.classList.contains("nav-collapsed");
    bar.classList.remove("nav-collapsed");
    var overflows = nav.scrollWidth > nav.clientWidth + 1;
    bar.classList.toggle("nav-collapsed", overflows);
    button.hidden = !overflows;
    if (!overflows || !wasCollapsed) setOpen(false);
  }

  button.addEventListener("click", function (event) {
    event.stopPropagation();
    setOpen(!bar.classList.contains("nav-open"));
  });
  document.addEventListener("click", function (event) {
    if (bar.classList.contains("nav-open") && !nav.contains(event.target)) setOpen(false);
  });
  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && bar.classList.contains("nav-open")) {
      setOpen(false);
      button.focus();
    }
  });

  if ("ResizeObserver" in window) {
    new ResizeObserver(layout).observe(bar);
  } else {
    window.addEventListener("resize", layout);
  }
  layout();
})();
