// gen3deval report: sortable tables, the case filter and the image viewer. No network, no data in here:
// everything comes from the page (data-v sort keys, data-tags filter tags, data-full embedded images).
(function () {
  "use strict";
  var each = function (list, fn) { Array.prototype.forEach.call(list, fn); };

  function key(cell) {
    if (!cell) return "";
    var v = cell.getAttribute("data-v");
    return v === null ? cell.textContent.trim() : v;
  }
  // Numbers numerically, text alphabetically; empty keys (no value, failures) always last.
  function compare(a, b, dir) {
    if (a === "" || b === "") return a === b ? 0 : (a === "" ? 1 : -1);
    var x = Number(a), y = Number(b);
    var c = (!isNaN(x) && !isNaN(y)) ? x - y : a.localeCompare(b, undefined, { numeric: true });
    return dir * c;
  }
  each(document.querySelectorAll("table.sortable"), function (table) {
    var head = table.tHead.rows[table.tHead.rows.length - 1].cells;
    each(head, function (th, i) {
      if (th.hasAttribute("data-nosort")) return;
      th.classList.add("sort");
      th.tabIndex = 0;
      var sort = function () {
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        each(head, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows).map(function (r, j) { return [r, j]; });
        rows.sort(function (p, q) { return compare(key(p[0].cells[i]), key(q[0].cells[i]), dir) || p[1] - q[1]; });
        each(rows, function (p) { body.appendChild(p[0]); });
      };
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") sort(); });
    });
  });

  each(document.querySelectorAll("form.filter"), function (form) {
    var table = document.getElementById(form.getAttribute("data-table"));
    var text = form.querySelector("input"), tag = form.querySelector("select"), count = form.querySelector("output");
    var apply = function () {
      var q = text.value.trim().toLowerCase(), t = tag.value, shown = 0, rows = table.tBodies[0].rows;
      each(rows, function (r) {
        var ok = (r.getAttribute("data-text") || "").toLowerCase().indexOf(q) >= 0 &&
          (!t || (" " + (r.getAttribute("data-tags") || "") + " ").indexOf(" " + t + " ") >= 0);
        r.hidden = !ok;
        shown += ok ? 1 : 0;
      });
      count.textContent = shown + " of " + rows.length + " cases";
    };
    form.addEventListener("input", apply);
    form.addEventListener("change", apply);
    form.addEventListener("submit", function (ev) { ev.preventDefault(); });
    form.hidden = false;
    apply();
  });

  var box = document.getElementById("viewer");
  if (!box) return;
  var big = box.querySelector("img"), caption = box.querySelector(".vcap"), file = box.querySelector("a");
  var close = function () { box.hidden = true; big.removeAttribute("src"); };
  document.addEventListener("click", function (ev) {
    var a = ev.target.closest ? ev.target.closest("a.zoom") : null;
    if (!a) return;
    ev.preventDefault();
    var thumb = a.querySelector("img");
    big.src = a.getAttribute("data-full") || (thumb ? thumb.src : "");
    big.alt = thumb ? thumb.alt : "";
    caption.textContent = a.getAttribute("title") || big.alt;
    file.href = a.getAttribute("href");
    box.hidden = false;
  });
  box.addEventListener("click", function (ev) { if (ev.target !== file) close(); });
  document.addEventListener("keydown", function (ev) { if (ev.key === "Escape" && !box.hidden) close(); });
})();
