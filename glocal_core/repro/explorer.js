// The static τ/σ/m explorer of glocal_core.widgets (static_explorer_html): vanilla JS with
// no dependency, which redraws three SVG panels from the page's embedded JSON on every
// slider input. It computes nothing the library does not give it: eigenvalues, kept modes,
// each mode's size at the end of the window and at T (mode_magnitudes, Eq. 13) and the
// hypergradients all come from Python. __UID__ is replaced by the explorer's id. Kept free of
// dollar signs and backslashes so that neither MathJax nor Python string handling touches it.
(function () {
  var root = document.getElementById("__UID__");
  // A failure is shown on the page and recorded in data-error, never left in the console only.
  function fail(error) {
    root.setAttribute("data-error", String(error));
    var box = root.querySelector(".gx-invalid");
    box.style.display = "";
    box.textContent = "The explorer could not draw this setting: " + error;
  }
  try {
  var data = JSON.parse(document.getElementById("__UID__-data").textContent);
  var svg = root.querySelector("svg"), invalid = root.querySelector(".gx-invalid");
  var text = root.querySelector(".gx-text"), inputs = root.querySelectorAll("input");
  var NS = "http://www.w3.org/2000/svg", C = data.colors;
  var axes = [data.taus, data.sigmas, data.ms];

  function el(tag, attrs, content) {
    var node = document.createElementNS(NS, tag);
    for (var k in attrs) node.setAttribute(k, attrs[k]);
    if (content !== undefined) node.textContent = content;
    svg.appendChild(node);
    return node;
  }
  function fmt(v) { return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3)
    ? v.toExponential(0) : String(+v.toPrecision(3)); }
  // A panel: origin (x0, y0), size (w, h), data ranges; returns coordinate maps.
  function panel(x0, y0, w, h, xr, yr, title, xlabel, ylabel) {
    el("rect", {x: x0, y: y0, width: w, height: h, fill: "none", stroke: "#444"});
    el("text", {x: x0 + w / 2, y: y0 - 8, "text-anchor": "middle", "font-size": 12}, title);
    el("text", {x: x0 + w / 2, y: y0 + h + 32, "text-anchor": "middle", "font-size": 11}, xlabel);
    el("text", {x: x0 - 40, y: y0 + h / 2, "text-anchor": "middle", "font-size": 11,
                transform: "rotate(-90 " + (x0 - 40) + " " + (y0 + h / 2) + ")"}, ylabel);
    return {
      x: function (v) { return x0 + (v - xr[0]) / (xr[1] - xr[0]) * w; },
      y: function (v) { return y0 + h - (v - yr[0]) / (yr[1] - yr[0]) * h; },
      xtick: function (v, label) {
        var X = this.x(v);
        el("line", {x1: X, x2: X, y1: y0 + h, y2: y0 + h + 4, stroke: "#444"});
        el("text", {x: X, y: y0 + h + 16, "text-anchor": "middle", "font-size": 10}, label);
      },
      ytick: function (v, label) {
        var Y = this.y(v);
        el("line", {x1: x0 - 4, x2: x0, y1: Y, y2: Y, stroke: "#444"});
        el("text", {x: x0 - 6, y: Y + 3, "text-anchor": "end", "font-size": 10}, label);
      }
    };
  }

  function eigenvalues(p) {
    var R = 1.1, i;
    for (i = 0; i < p.re.length; i++) R = Math.max(R, 1.1 * Math.hypot(p.re[i], p.im[i]));
    var P = panel(60, 40, 240, 240, [-R, R], [-R, R], "eigenvalues λ (rank " + p.re.length + ")",
                  "Re λ", "Im λ");
    [-1, 0, 1].forEach(function (v) { P.xtick(v, String(v)); P.ytick(v, String(v)); });
    var s = P.x(1) - P.x(0);
    el("line", {x1: P.x(-R), x2: P.x(R), y1: P.y(0), y2: P.y(0), stroke: "#ccc"});
    el("line", {x1: P.x(0), x2: P.x(0), y1: P.y(-R), y2: P.y(R), stroke: "#ccc"});
    el("circle", {cx: P.x(0), cy: P.y(0), r: s, fill: "none", stroke: "#999"});
    el("circle", {cx: P.x(1), cy: P.y(0), r: Math.max(s * data.delta, 1.5), fill: C.glocal,
                  "fill-opacity": 0.2});
    for (i = 0; i < p.re.length; i++) {
      var kept = p.kept[i] === 1;
      el("circle", {cx: P.x(p.re[i]), cy: P.y(p.im[i]), r: kept ? 4.5 : 3.5,
                    fill: kept ? C.glocal : "none", stroke: kept ? C.glocal : C.other,
                    "class": kept ? "gx-kept" : "gx-other"});
    }
  }

  // Each mode's size at the end of the window and at T (Python's mode_magnitudes, Eq. 13):
  // a straight line on the log scale, cut where it falls below the panel.
  function modes(p, tau) {
    var steps = Math.max(data.horizon - tau, 1), lines = [], lo = Infinity, hi = 0, i, k;
    for (i = 0; i < p.mag.length; i++) {
      var a = p.mag[i], b = p.magEnd[i];
      if (!(a > 0 && b > 0 && isFinite(a) && isFinite(b))) { lines.push(null); continue; }
      lines.push([Math.log10(a), Math.log10(b)]);
      hi = Math.max(hi, a, b); lo = Math.min(lo, a, b);
    }
    if (!(hi > 0)) { hi = 1; lo = 0.1; }
    var top = Math.ceil(Math.log10(hi)), bottom = Math.max(Math.floor(Math.log10(lo)), top - 8);
    if (bottom === top) bottom = top - 1;
    var name = data.names[data.component];
    var P = panel(370, 40, 250, 240, [0, steps], [bottom, top],
                  "modes of " + name + " until T = " + data.horizon,
                  "steps t after the window", "|b λ^t u|");
    [0, Math.round(steps / 2), steps].forEach(function (v) { P.xtick(v, String(v)); });
    var every = Math.ceil((top - bottom) / 6);
    for (k = bottom; k <= top; k += every) P.ytick(k, "1e" + k);
    var order = p.kept.map(function (kept, j) { return [kept, j]; })
      .sort(function (a, b) { return a[0] - b[0]; });
    order.forEach(function (o) {
      var line = lines[o[1]];
      if (line === null || Math.max(line[0], line[1]) < bottom) return;
      var ends = [[0, line[0]], [steps, line[1]]];
      ends.forEach(function (e, n) {  // move an end below the panel up to where it enters
        var other = ends[1 - n];
        if (e[1] < bottom) {
          e[0] = other[0] + (e[0] - other[0]) * (other[1] - bottom) / (other[1] - e[1]);
          e[1] = bottom;
        }
      });
      var points = ends.map(function (q) { return P.x(q[0]) + "," + P.y(q[1]); }).join(" ");
      el("polyline", {points: points, fill: "none", stroke: o[0] ? C.glocal : C.other,
                      "class": "gx-mode", "stroke-width": o[0] ? 2 : 1,
                      "stroke-opacity": o[0] ? 1 : 0.6});
    });
  }

  function bars(p) {
    var series = [["local", p.local], ["glocal", p.est], ["global", data.target]];
    var q = data.names.length, M = 1.2, i, j;
    var scale = data.target.map(function (v) { return Math.abs(v) > 0 ? Math.abs(v) : 1; });
    series.forEach(function (s) {
      s[1].forEach(function (v, i) { M = Math.max(M, 1.1 * Math.abs(v / scale[i])); });
    });
    var P = panel(700, 40, 240, 240, [0, q], [-M, M],
                  "error vs global: glocal " + fmt(p.errGlocal) + ", local " + fmt(p.errLocal),
                  "hyperparameter", "hypergradient / |global|");
    el("line", {x1: P.x(0), x2: P.x(q), y1: P.y(0), y2: P.y(0), stroke: "#000"});
    [-M, 0, M].forEach(function (v) { P.ytick(v, fmt(v)); });
    for (i = 0; i < q; i++) {
      P.xtick(i + 0.5, data.names[i]);
      for (j = 0; j < 3; j++) {
        var v = series[j][1][i] / scale[i], x = P.x(i + 0.1 + 0.8 * j / 3);
        el("rect", {x: x, y: Math.min(P.y(v), P.y(0)), width: P.x(0.8 / 3) - P.x(0),
                    height: Math.abs(P.y(v) - P.y(0)), fill: C[series[j][0]]});
      }
    }
    series.forEach(function (s, j) {
      el("rect", {x: 712, y: 50 + 14 * j, width: 10, height: 10, fill: C[s[0]]});
      el("text", {x: 726, y: 59 + 14 * j, "font-size": 10},
         s[0] + (s[0] === "glocal" && p.fallback ? " (fell back: local)" : ""));
    });
  }

  function render() {
    var idx = [], i;
    for (i = 0; i < 3; i++) {
      idx.push(+inputs[i].value);
      inputs[i].nextElementSibling.textContent = axes[i][idx[i]];
    }
    var p = data.points[(idx[0] * data.sigmas.length + idx[1]) * data.ms.length + idx[2]];
    root.setAttribute("data-setting",
                      axes[0][idx[0]] + "," + axes[1][idx[1]] + "," + axes[2][idx[2]]);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    if (p.invalid) {
      svg.style.display = "none"; text.textContent = "";
      invalid.style.display = ""; invalid.textContent = p.invalid;
      return;
    }
    svg.style.display = ""; invalid.style.display = "none";
    eigenvalues(p); modes(p, axes[0][idx[0]]); bars(p);
    text.textContent = p.text;
  }
  function update() {
    try { render(); } catch (error) { fail(error); }
  }
  for (var i = 0; i < inputs.length; i++) inputs[i].addEventListener("input", update);
  update();
  } catch (error) { fail(error); }
})();
