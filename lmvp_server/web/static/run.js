// Draws a run's metric charts with the vendored uPlot: one chart per metric key, fed by the
// run's downsampled metrics (a same-origin fetch with the session cookie), with a dashed
// vertical marker labelled "vN" at the step of every version taken during the run.
(function () {
  "use strict";
  var root = document.getElementById("charts");
  if (!root || typeof uPlot === "undefined") return;
  var checkpoints = JSON.parse(document.getElementById("checkpoints").textContent);
  var MARKER = "rgb(217, 72, 15)";
  var LINE = "rgb(28, 126, 214)";
  var plots = [];
  // Axis text and grid in the page's own colours (light or dark scheme).
  var style = getComputedStyle(document.documentElement);
  var FG = style.getPropertyValue("--fg").trim() || "#1d2330";
  var GRID = style.getPropertyValue("--line").trim() || "#e3e6eb";

  function toNumber(v) {
    return typeof v === "number" ? v : null; // "NaN", "Infinity": gaps in the line
  }

  function markers() {
    return {
      hooks: {
        draw: [function (u) {
          var ctx = u.ctx, box = u.bbox, drawn = 0, px = window.devicePixelRatio || 1;
          ctx.save();
          ctx.strokeStyle = MARKER;
          ctx.fillStyle = MARKER;
          ctx.lineWidth = 2 * px;
          ctx.setLineDash([5 * px, 4 * px]);
          ctx.font = (11 * px) + "px sans-serif";
          checkpoints.forEach(function (c) {
            var x = Math.round(u.valToPos(c.step, "x", true));
            if (!isFinite(x) || x < box.left || x > box.left + box.width) return;
            ctx.beginPath();
            ctx.moveTo(x, box.top);
            ctx.lineTo(x, box.top + box.height);
            ctx.stroke();
            ctx.fillText("v" + c.number, x + 3 * px, box.top + 12 * px);
            drawn++;
          });
          ctx.restore();
          u.root.closest(".chart").dataset.markers = String(drawn);
        }]
      }
    };
  }

  function width(el) {
    return Math.max(240, Math.floor(el.getBoundingClientRect().width));
  }

  function draw(series) {
    var byKey = {};
    series.forEach(function (s) { byKey[s.key] = s; });
    root.querySelectorAll(".chart").forEach(function (fig) {
      var s = byKey[fig.dataset.key];
      var plotEl = fig.querySelector(".plot");
      if (!s || !s.steps.length) {
        plotEl.textContent = "no points";
        return;
      }
      var opts = {
        width: width(plotEl),
        height: 220,
        legend: { show: true },
        cursor: { drag: { x: true, y: false } },
        scales: { x: { time: false } },
        axes: [
          { label: "step", stroke: FG, grid: { stroke: GRID }, ticks: { stroke: GRID } },
          { stroke: FG, grid: { stroke: GRID }, ticks: { stroke: GRID } }
        ],
        series: [{ label: "step" }, { label: s.key, stroke: LINE, width: 1.5, spanGaps: false }],
        plugins: [markers()]
      };
      plots.push({ fig: plotEl, plot: new uPlot(opts, [s.steps, s.values.map(toNumber)], plotEl) });
      if (s.downsampled) fig.querySelector("figcaption").textContent += " (" + s.count + " points, downsampled)";
    });
    root.dataset.state = "drawn";
  }

  var figures = root.querySelectorAll(".chart");
  if (!figures.length) return;
  // About two points per horizontal pixel; the server keeps each bucket's minimum and maximum.
  var maxPoints = Math.min(100000, Math.max(400, 2 * width(figures[0].querySelector(".plot"))));
  fetch(root.dataset.metricsUrl + "?max_points=" + maxPoints, { credentials: "same-origin" })
    .then(function (r) {
      if (!r.ok) throw new Error("the server answered " + r.status);
      return r.json();
    })
    .then(function (body) { draw(body.series); })
    .catch(function (err) {
      root.dataset.state = "failed";
      var p = document.createElement("p");
      p.className = "error";
      p.textContent = "Could not load the metrics: " + err.message + ". Reload the page.";
      root.prepend(p);
    });

  var pending = null;
  window.addEventListener("resize", function () {
    clearTimeout(pending);
    pending = setTimeout(function () {
      plots.forEach(function (p) { p.plot.setSize({ width: width(p.fig), height: 220 }); });
    }, 100);
  });
})();
