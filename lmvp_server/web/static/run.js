// Draws a run's metric charts with the vendored uPlot: one chart per metric key, fed by the
// run's downsampled metrics (a same-origin fetch with the session cookie), with a dashed
// vertical marker labelled "vN" at the step of every version taken during the run.
// The controls above the charts smooth the curves (exponential moving average, as the desktop
// does), put the y axis on a log scale, and draw other runs of the model over the same charts.
(function () {
  "use strict";
  var root = document.getElementById("charts");
  if (!root || typeof uPlot === "undefined") return;
  var checkpoints = JSON.parse(document.getElementById("checkpoints").textContent);
  var MARKER = "rgb(217, 72, 15)";
  var LINE = "rgb(28, 126, 214)";
  // Other runs, in turn: distinct from the line and the markers.
  var OVERLAY = ["rgb(47, 158, 68)", "rgb(132, 94, 247)", "rgb(230, 73, 128)",
                 "rgb(16, 152, 173)", "rgb(240, 140, 0)", "rgb(92, 124, 250)"];
  var plots = [];
  var style = getComputedStyle(document.documentElement);
  var FG = style.getPropertyValue("--fg").trim() || "#1d2330";
  var GRID = style.getPropertyValue("--line").trim() || "#e3e6eb";
  var CARD = style.getPropertyValue("--card").trim() || "#fff";
  var state = { smoothing: 0, logY: false, main: null, overlays: {} };
  var controls = document.getElementById("chart-controls");

  function toNumber(v) {
    return typeof v === "number" ? v : null; // "NaN", "Infinity": gaps in the line
  }

  // Exponential moving average, debiased like TensorBoard's, skipping gaps.
  function smooth(values, weight) {
    if (!weight) return values;
    var last = 0, n = 0;
    return values.map(function (v) {
      if (v === null) return null;
      last = last * weight + (1 - weight) * v;
      n++;
      return last / (1 - Math.pow(weight, n));
    });
  }

  // Tick labels precise enough that neighbours differ: 0.0005, 0.001, 0.0015 (not
  // 0.001, 0.001, 0), and 1e-5 style once the values are tiny or huge.
  function tickLabels(u, splits, axis, space, incr) {
    var labels = formatTicks(splits, axis, incr);
    // Read by the tests (the labels themselves are drawn on the canvas).
    if (axis === 1) u.root.closest(".chart").dataset.yTicks = labels.join("|");
    return labels;
  }

  function formatTicks(splits, axis, incr) {
    var biggest = 0;
    splits.forEach(function (v) { if (v !== null) biggest = Math.max(biggest, Math.abs(v)); });
    if (state.logY && axis === 1) {
      return splits.map(function (v) { return v === null ? "" : compact(v); });
    }
    var step = Math.abs(incr) || biggest || 1;
    if (biggest >= 1e6 || (biggest > 0 && biggest < 1e-4)) {
      var digits = Math.max(0, Math.min(6, Math.ceil(Math.log10(biggest / step)) + 1));
      return splits.map(function (v) { return v === null ? "" : v.toExponential(digits); });
    }
    var decimals = Math.max(0, Math.min(10, -Math.floor(Math.log10(step) + 1e-9)));
    return splits.map(function (v) {
      return v === null ? "" : v.toFixed(decimals).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "");
    });
  }

  function compact(v) {
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(0);
    return String(+v.toPrecision(4));
  }

  function markers() {
    return {
      hooks: {
        draw: [function (u) {
          var ctx = u.ctx, box = u.bbox, drawn = 0, px = window.devicePixelRatio || 1, rects = [];
          ctx.save();
          ctx.lineWidth = 2 * px;
          ctx.font = (11 * px) + "px sans-serif";
          ctx.textBaseline = "top";
          ctx.textAlign = "left"; // uPlot leaves it centred from its axes
          checkpoints.forEach(function (c) {
            var x = Math.round(u.valToPos(c.step, "x", true));
            if (!isFinite(x) || x < box.left || x > box.left + box.width) return;
            ctx.strokeStyle = MARKER;
            ctx.setLineDash([5 * px, 4 * px]);
            ctx.beginPath();
            ctx.moveTo(x, box.top);
            ctx.lineTo(x, box.top + box.height);
            ctx.stroke();
            // The label sits on its own background, so no gridline runs through it.
            var text = "v" + c.number, w = ctx.measureText(text).width;
            var lx = x + 3 * px, ly = box.top + 2 * px;
            if (lx + w + 4 * px > box.left + box.width) lx = x - 3 * px - w - 4 * px;
            ctx.setLineDash([]);
            ctx.fillStyle = CARD;
            ctx.fillRect(lx, ly, w + 4 * px, 14 * px);
            rects.push([Math.round(lx), Math.round(ly), Math.round(w + 4 * px), Math.round(14 * px)]);
            ctx.fillStyle = MARKER;
            ctx.fillText(text, lx + 2 * px, ly + 1 * px);
            drawn++;
          });
          ctx.restore();
          var fig = u.root.closest(".chart");
          fig.dataset.markers = String(drawn);
          fig.dataset.labels = JSON.stringify(rects); // where the labels are, for the tests
        }]
      }
    };
  }

  function width(el) {
    return Math.max(240, Math.floor(el.getBoundingClientRect().width));
  }

  // One x array for several series of differing steps: the union, with gaps where a run
  // has no point at a step.
  function aligned(list) {
    var steps = {};
    list.forEach(function (s) { s.steps.forEach(function (x) { steps[x] = true; }); });
    var xs = Object.keys(steps).map(Number).sort(function (a, b) { return a - b; });
    var index = {};
    xs.forEach(function (x, i) { index[x] = i; });
    var data = [xs];
    list.forEach(function (s) {
      var ys = new Array(xs.length).fill(null);
      var vs = smooth(s.values.map(toNumber), state.smoothing);
      s.steps.forEach(function (x, i) {
        var v = vs[i];
        ys[index[x]] = state.logY && v !== null && v <= 0 ? null : v;
      });
      data.push(ys);
    });
    return data;
  }

  function draw() {
    plots.forEach(function (p) { p.plot.destroy(); });
    plots = [];
    var byKey = {};
    state.main.forEach(function (s) { byKey[s.key] = s; });
    var overlayRuns = Object.keys(state.overlays).map(function (url) { return state.overlays[url]; });
    root.querySelectorAll(".chart").forEach(function (fig) {
      var s = byKey[fig.dataset.key];
      var plotEl = fig.querySelector(".plot");
      var caption = fig.querySelector("figcaption");
      plotEl.textContent = "";
      if (!s || !s.steps.length) {
        plotEl.textContent = "no points";
        return;
      }
      var list = [s], series = [{ label: "step" },
        { label: root.dataset.runName || s.key, stroke: LINE, width: 1.5, spanGaps: false }];
      overlayRuns.forEach(function (run, i) {
        var other = run.byKey[s.key];
        if (!other || !other.steps.length) return;
        list.push(other);
        series.push({ label: run.name, stroke: OVERLAY[i % OVERLAY.length], width: 1.25, spanGaps: true });
      });
      var opts = {
        width: width(plotEl),
        height: 220,
        legend: { show: true },
        cursor: { drag: { x: true, y: false } },
        scales: { x: { time: false }, y: state.logY ? { distr: 3 } : {} },
        axes: [
          { label: "step", stroke: FG, grid: { stroke: GRID }, ticks: { stroke: GRID } },
          { stroke: FG, grid: { stroke: GRID }, ticks: { stroke: GRID }, values: tickLabels, size: 70 }
        ],
        series: series,
        plugins: [markers()]
      };
      plots.push({ fig: plotEl, plot: new uPlot(opts, aligned(list), plotEl) });
      // Honest about what is drawn: every point, or how many of how many.
      var shown = s.steps.length;
      fig.dataset.drawn = String(shown);
      var title = s.key + " (" + s.count + " point" + (s.count === 1 ? "" : "s");
      if (shown < s.count) title += ", " + shown + " drawn";
      if (state.smoothing) title += ", smoothed";
      caption.textContent = title + ")";
    });
    root.dataset.state = "drawn";
    root.dataset.overlays = String(overlayRuns.length);
  }

  function fetchSeries(url, maxPoints) {
    return fetch(url + "?max_points=" + maxPoints, { credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("the server answered " + r.status);
        return r.json();
      })
      .then(function (body) { return body.series; });
  }

  function fail(err) {
    root.dataset.state = "failed";
    var p = document.createElement("p");
    p.className = "error";
    p.textContent = "Could not load the metrics: " + err.message + ". Reload the page.";
    root.prepend(p);
  }

  var figures = root.querySelectorAll(".chart");
  if (!figures.length) return;
  // About two points per horizontal pixel; the server keeps each bucket's minimum and maximum.
  var maxPoints = Math.min(100000, Math.max(400, 2 * width(figures[0].querySelector(".plot"))));
  fetchSeries(root.dataset.metricsUrl, maxPoints)
    .then(function (series) {
      state.main = series;
      draw();
      if (controls) controls.hidden = false;
    })
    .catch(fail);

  if (controls) {
    var slider = document.getElementById("smoothing");
    var shown = document.getElementById("smoothing-value");
    slider.addEventListener("input", function () {
      state.smoothing = Math.min(0.99, Math.max(0, parseFloat(slider.value) || 0));
      shown.textContent = state.smoothing ? state.smoothing.toFixed(2) : "off";
      if (state.main) draw();
    });
    document.getElementById("log-y").addEventListener("change", function (e) {
      state.logY = e.target.checked;
      if (state.main) draw();
    });
    controls.querySelectorAll("input.overlay").forEach(function (box) {
      box.addEventListener("change", function () {
        if (!box.checked) {
          delete state.overlays[box.value];
          draw();
          return;
        }
        fetchSeries(box.value, maxPoints).then(function (series) {
          var byKey = {};
          series.forEach(function (s) { byKey[s.key] = s; });
          if (box.checked) state.overlays[box.value] = { name: box.dataset.name, byKey: byKey };
          draw();
        }).catch(fail);
      });
    });
  }

  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () {
      plots.forEach(function (p) { p.plot.setSize({ width: width(p.fig), height: 220 }); });
    }, 100);
  });
})();
