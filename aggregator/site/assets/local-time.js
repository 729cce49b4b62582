// Shows every <time datetime="..."> of the page in the reader's own time zone and
// language (the server wrote UTC). Whatever fails, the server's text stays: no error
// reaches the console. Loaded with `defer` by _layouts/default.html (no inline script,
// so a Content-Security-Policy of script-src 'self' allows it).
(function () {
  "use strict";
  var ZONED = /^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:?\d\d)$/i;
  try {
    if (typeof Intl !== "object" || typeof Intl.DateTimeFormat !== "function") return;
    var format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
    // A browser that ignores dateStyle/timeStyle would show the date alone: keep UTC.
    var options = format.resolvedOptions();
    if (!options.dateStyle || !options.timeStyle) return;
    var times = document.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      try {
        var element = times[i];
        var value = element.getAttribute("datetime") || "";
        // Only a moment: date, time and zone (a date alone, or a time without a zone,
        // has nothing to convert).
        if (!ZONED.test(value)) continue;
        var moment = new Date(value.replace(" ", "T").replace(/([+-]\d\d)(\d\d)$/, "$1:$2"));
        if (isNaN(moment.getTime())) continue;
        var text = format.format(moment);
        if (!text) continue;
        if (!element.hasAttribute("title")) element.setAttribute("title", element.textContent);
        element.textContent = text;
      } catch (ignored) {
        // this one keeps the server's text
      }
    }
  } catch (ignored) {
    // every one keeps the server's text
  }
})();
