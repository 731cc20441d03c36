// The latent explorer page: plain JS over the JSON API (its schema: /openapi.json). One View per model
// shown; the shared controls (drawing, interpolation, sampling) act on every view, so two models compare
// side by side.
"use strict";

const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"];
const SLIDERS = 16;          // sliders for the first 16 latent dimensions
const SVG = "http://www.w3.org/2000/svg";
const $ = (sel, root = document) => root.querySelector(sel);

const state = { models: [], views: [], selected: null, drawing: null, classifier: null };

// ------------------------------------------------------------------------------------------ helpers

function setStatus(msg, error = false) {
  const el = $("#status");
  el.textContent = msg;
  el.classList.toggle("error", error);
}

function showError(err) {
  console.error(err);
  setStatus(String(err.message || err), true);
}

function errorText(j) {
  if (typeof j.detail === "string") return j.detail;
  if (Array.isArray(j.detail)) return j.detail.map(d => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return "";
}

async function api(path, body) {
  const opts = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const r = await fetch(path, opts);
  let j = {};
  try { j = await r.json(); } catch (e) { /* not JSON: the status says enough */ }
  if (!r.ok) throw new Error(`${path}: ${errorText(j) || r.status}`);
  return j;
}

// Call fn(arg) with at most one call in flight; while busy, keep only the newest argument (live hover and
// drawing send many events; the server sees the latest one, never a queue).
function latestOnly(fn) {
  let busy = false, pending = null;
  const run = (arg) => {
    if (busy) { pending = [arg]; return; }
    busy = true;
    Promise.resolve().then(() => fn(arg)).catch(showError).finally(() => {
      busy = false;
      if (pending) { const [a] = pending; pending = null; run(a); }
    });
  };
  return run;
}

const dot = (a, b) => a.reduce((s, v, i) => s + v * b[i], 0);
const fmt = (v, d = 2) => (v === null || v === undefined) ? "-" : Number(v).toFixed(d);
const pct = p => `${+(100 * p).toFixed(2)}%`;   // 0.05 -> "5%", 0.025 -> "2.5%"

// The classifier's confidence in [0, 1] as a colour: red (low) - yellow - green (high), as matplotlib's RdYlGn.
const RDYLGN = [[165, 0, 38], [244, 109, 67], [254, 224, 139], [217, 239, 139], [102, 189, 99], [0, 104, 55]];
function confColour(p) {
  const t = Math.min(Math.max(p, 0), 1) * (RDYLGN.length - 1), i = Math.min(Math.floor(t), RDYLGN.length - 2);
  const f = t - i, [a, b] = [RDYLGN[i], RDYLGN[i + 1]];
  return `rgb(${a.map((v, k) => Math.round(v + f * (b[k] - v))).join(",")})`;
}

function svgEl(tag, cls, parent) {
  const el = document.createElementNS(SVG, tag);
  el.setAttribute("class", cls);
  parent.appendChild(el);
  return el;
}

// -------------------------------------------------------------------------------------------- a view

class View {
  constructor(info) {
    this.info = info;
    this.D = info.latent_dim;
    this.K = info.num_classes;   // a conditional model's labels; 0: unconditional
    this.label = this.K ? 0 : null;
    this.lastSample = null;      // [n, seed]
    this.lastInterp = null;      // [start, end, steps, spherical]
    this.root = $("#view").content.firstElementChild.cloneNode(true);
    this.z = new Array(this.D).fill(0);
    this.map = null;          // /api/latents response
    this.posterior = null;    // {mu, sigma} of the drawing
    this.path = null;         // interpolation codes
    this.picked = null;       // {index, mu}
    this.decodeLive = latestOnly(z => this.decode(z));
    this.encodeLive = latestOnly(pixels => this.encodeDrawing(pixels));
    this.build();
  }

  el(sel) { return $(sel, this.root); }

  // A request body for this model: its index, the chosen label when it is conditional, and `fields`.
  body(fields) {
    return Object.assign({ model: this.info.index }, this.K ? { label: this.label } : {}, fields);
  }

  build() {
    const i = this.info;
    this.el(".title").textContent = `${i.index}: ${i.name}`;
    const layers = i.latent_sizes.length > 1 ? `${i.latent_sizes.join(",")} (z1..z${i.latent_sizes.length}: ` +
      `the sliders and map show the top layer z${i.latent_sizes.length}, the layers below at their means)` : i.latent_dim;
    this.el(".meta").textContent = `${i.kind.toUpperCase()} · ${i.arch} · latent ${layers} · ` +
      `${i.likelihood}${i.prior ? ` · prior ${i.prior}` : ""} · map: ` + (i.split === "test" ? `${i.points} test examples of ${i.data}`
                                        : `the first ${i.points} examples of ${i.data} (its training file)`) +
      (i.threshold ? ` · anomaly threshold ${fmt(i.threshold.value, 1)} at FPR ${pct(i.threshold.fpr)}` : "") +
      (this.K ? ` · conditional on ${this.K} labels: the map shows the test digits encoded with their own labels` : "");
    this.buildLabels();
    this.buildBackground();    const plane = this.el(".plane");
    if (this.D < 2) plane.querySelector("option[value=pca]").remove();
    plane.value = this.D > 2 ? "pca" : "dims";
    if (this.D < 2) this.el(".dim-y").parentElement.hidden = true;
    for (const sel of [".dim-x", ".dim-y"]) this.el(sel).max = this.D;
    this.toggleDims();
    plane.addEventListener("change", () => { this.toggleDims(); this.loadMap().catch(showError); });
    for (const sel of [".dim-x", ".dim-y"]) {
      this.el(sel).addEventListener("change", () => this.loadMap().catch(showError));
    }
    this.el(".reset").addEventListener("click", () => this.map && this.setZ(this.map.center.slice()));

    const ov = this.el(".overlay");
    this.marks = {
      path: svgEl("polyline", "path", ov), pathDots: svgEl("g", "path-dots", ov),
      picked: svgEl("circle", "picked", ov), posterior: svgEl("ellipse", "posterior", ov),
      postMean: svgEl("circle", "posterior-mean", ov), current: svgEl("circle", "current", ov),
    };
    for (const m of ["path", "picked", "posterior", "postMean", "current"]) this.marks[m].style.display = "none";
    ov.addEventListener("pointermove", ev => this.onMapPointer(ev, false));
    ov.addEventListener("pointerdown", ev => { ov.setPointerCapture(ev.pointerId); this.onMapPointer(ev, true); });

    const legend = this.el(".legend");
    legend.hidden = !i.has_labels;
    TAB10.forEach((c, k) => {   // built with the DOM: the page's CSP refuses style attributes in markup
      const span = document.createElement("span"), dotEl = document.createElement("i");
      dotEl.style.background = c;
      span.append(dotEl, String(k));
      legend.append(span);
    });
  }

  buildLabels() {
    if (!this.K) return;
    this.el(".label-picker").hidden = false;
    const box = this.el(".labels");
    for (let k = 0; k < this.K; k++) {
      const b = document.createElement("button");
      b.textContent = String(k);
      b.dataset.label = k;
      b.title = `condition on label ${k}`;
      b.style.borderBottomColor = TAB10[k % 10];
      b.addEventListener("click", () => this.setLabel(k).catch(showError));
      box.append(b);
    }
    this.markLabel();
  }

  markLabel() {
    this.root.querySelectorAll(".labels button").forEach(b => {
      const on = +b.dataset.label === this.label;
      b.classList.toggle("active", on);
      b.setAttribute("aria-pressed", on ? "true" : "false");
    });
  }

  // A new label: everything this view shows is decoded again under it.
  async setLabel(k) {
    this.label = k;
    this.markLabel();
    this.decodeLive(this.z.slice());
    const work = [];
    if (this.info.confidence_map) work.push(this.loadMap());
    if (this.lastSample) work.push(this.sample(...this.lastSample));
    if (this.lastInterp) work.push(this.interpolate(...this.lastInterp).catch(e => setStatus(e.message, true)));
    if (state.drawing && this.takesDrawing()) this.encodeLive(state.drawing);
    await Promise.all(work);
  }

  // The confidence background's legend and toggle (a 2-D model with the classifier), or a note why none.
  buildBackground() {
    const i = this.info;
    if (i.confidence_map) {
      this.el(".bg-legend").hidden = false;
      const c = this.el(".bg-scale"), g = c.getContext("2d");
      for (let x = 0; x < c.width; x++) { g.fillStyle = confColour(x / (c.width - 1)); g.fillRect(x, 0, 1, c.height); }
      this.el(".bg-toggle").addEventListener("change", () => this.map && this.drawPoints());
    } else if (i.latent_dim === 2) {
      const note = this.el(".bg-note");
      note.hidden = false;
      note.textContent = state.classifier
        ? `No confidence background: the classifier ${state.classifier} cannot judge this model's images.`
        : "No confidence background: give `vaekit serve` a classifier folder too (e.g. runs/demo/classifier) " +
          "to see where the decoder draws no digit.";
    }
  }

  toggleDims() {
    const dims = this.el(".plane").value === "dims";
    this.root.querySelectorAll(".dims").forEach(el => {
      el.hidden = !dims || (this.D < 2 && el.contains(this.el(".dim-y")));
    });
  }

  // -- the map

  async loadMap() {
    const plane = this.el(".plane").value;
    const x = Math.min(Math.max(1, +this.el(".dim-x").value || 1), this.D) - 1;
    const y = Math.min(Math.max(1, +this.el(".dim-y").value || 2), this.D) - 1;
    const q = new URLSearchParams({ model: this.info.index, plane });
    if (this.K) q.set("label", this.label);
    if (plane === "dims") { q.set("x", x); q.set("y", this.D > 1 ? y : 0); }
    if (plane === "dims" && this.D > 1 && x === y) throw new Error("pick two different dimensions for the map");
    const first = this.map === null;
    this.map = await api(`/api/latents?${q}`);
    this.el(".axes").textContent = `map axes: ${this.map.axes.join(" vs ")}`;
    this.fitView();
    this.drawPoints();
    if (first) { this.buildSliders(); this.setZ(this.map.center.slice()); } else this.drawOverlay();
  }

  fitView() {
    const m = this.map, W = 360, H = 360, pad = 14;
    let xs = m.x, ys = m.y;
    if (!xs.length) { xs = [-3, 3]; ys = [-3, 3]; }
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x1 - x0 < 1e-6) { x0 -= 1; x1 += 1; }
    if (y1 - y0 < 1e-6) { y0 -= 1; y1 += 1; }
    const s = Math.min((W - 2 * pad) / (x1 - x0), (H - 2 * pad) / (y1 - y0));   // one scale: circles stay round
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
    this.view = { s, toPx: (u, v) => [W / 2 + (u - cx) * s, H / 2 - (v - cy) * s],
                  fromPx: (px, py) => [cx + (px - W / 2) / s, cy - (py - H / 2) / s] };
  }

  drawPoints() {
    const c = this.el(".map"), g = c.getContext("2d"), m = this.map;
    g.fillStyle = "#fff";
    g.fillRect(0, 0, c.width, c.height);
    const bg = m.confidence && this.el(".bg-toggle").checked;
    if (bg) this.drawBackground(g, m.confidence);
    this.el(".bg-text").textContent = m.confidence
      ? `classifier confidence (0 red, 1 green); outlined: holes, ${pct(m.confidence.hole_fraction)} of the grid` +
        (m.confidence.label !== null ? ` (label ${m.confidence.label})` : "")
      : (this.info.confidence_map ? "only on the two-dimensions plane" : "");
    g.strokeStyle = "#e6e9ef";
    const [ox, oy] = this.view.toPx(0, 0);
    g.beginPath(); g.moveTo(ox, 0); g.lineTo(ox, c.height); g.moveTo(0, oy); g.lineTo(c.width, oy); g.stroke();
    g.globalAlpha = 0.75;
    for (let k = 0; k < m.n; k++) {
      const [px, py] = this.view.toPx(m.x[k], m.y[k]);
      g.fillStyle = m.labels ? TAB10[((m.labels[k] % 10) + 10) % 10] : "#1f77b4";
      g.beginPath(); g.arc(px, py, 2.2, 0, 2 * Math.PI); g.fill();
    }
    g.globalAlpha = 1;
  }

  // The classifier's confidence on the decoded grid (claims_latent.hole_map), one cell per grid point, and
  // the holes outlined: the edges between a hole and a non-hole cell, or the grid's border.
  drawBackground(g, cm) {
    const n = cm.size, dx = (cm.x[n - 1] - cm.x[0]) / (n - 1), dy = (cm.y[0] - cm.y[n - 1]) / (n - 1);
    const corner = (r, c) => this.view.toPx(cm.x[0] + (c - 0.5) * dx, cm.y[0] - (r - 0.5) * dy)  // top-left
      .map(Math.round);   // whole pixels: neighbouring cells share their edge, no seam, no overlap
    g.globalAlpha = 0.6;
    for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) {
      const [x0, y0] = corner(r, c), [x1, y1] = corner(r + 1, c + 1);
      g.fillStyle = confColour(cm.confidence[r][c]);
      g.fillRect(x0, y0, x1 - x0, y1 - y0);
    }
    g.globalAlpha = 1;
    g.strokeStyle = "#000"; g.lineWidth = 1.5;
    const hole = (r, c) => r >= 0 && r < n && c >= 0 && c < n && cm.hole[r][c];
    g.beginPath();
    for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) {
      if (!cm.hole[r][c]) continue;
      const [x0, y0] = corner(r, c), [x1, y1] = corner(r + 1, c + 1);
      if (!hole(r - 1, c)) { g.moveTo(x0, y0); g.lineTo(x1, y0); }
      if (!hole(r + 1, c)) { g.moveTo(x0, y1); g.lineTo(x1, y1); }
      if (!hole(r, c - 1)) { g.moveTo(x0, y0); g.lineTo(x0, y1); }
      if (!hole(r, c + 1)) { g.moveTo(x1, y0); g.lineTo(x1, y1); }
    }
    g.stroke();
    g.lineWidth = 1;
  }

  project(z) {
    const m = this.map, d = z.map((v, i) => v - m.origin[i]);
    return [dot(d, m.basis[0]), dot(d, m.basis[1])];
  }

  // The plane point (u, v) with the other coordinates at the anchor (the current z).
  planeToZ(u, v) {
    const b = this.map.basis, [ua, va] = this.project(this.z);
    return this.z.map((a, i) => a + (u - ua) * b[0][i] + (v - va) * b[1][i]);
  }

  onMapPointer(ev, down) {
    if (!this.map) return;
    const r = ev.currentTarget.getBoundingClientRect();
    const px = (ev.clientX - r.left) * 360 / r.width, py = (ev.clientY - r.top) * 360 / r.height;
    if (down) {
      const k = this.nearest(px, py, 5);
      if (k !== null) { this.pick(k).catch(showError); return; }
    }
    const [u, v] = this.view.fromPx(px, py);
    this.setZ(this.planeToZ(u, v));
  }

  nearest(px, py, radius) {
    const m = this.map;
    let best = null, bestD = radius * radius;
    for (let k = 0; k < m.n; k++) {
      const [x, y] = this.view.toPx(m.x[k], m.y[k]);
      const d = (x - px) ** 2 + (y - py) ** 2;
      if (d <= bestD) { best = k; bestD = d; }
    }
    return best;
  }

  // Select test example k: its code becomes the anchor; the interpolation's "use selected" takes it.
  async pick(k) {
    const r = await api("/api/encode", { model: this.info.index, index: k });
    this.picked = { index: k, mu: r.mu };
    state.selected = k;
    const label = this.map.labels ? `, label ${this.map.labels[k]}` : "";
    const p = this.el(".selected");
    p.textContent = `selected test digit #${k}${label} `;
    const img = document.createElement("img");
    img.className = "pixelated thumb";
    img.src = r.image;
    img.width = 28; img.height = 28;
    p.appendChild(img);
    if (r.restyled) {   // a conditional model: its code under every label
      const strip = document.createElement("img");
      strip.className = "pixelated restyled-thumb";
      strip.src = r.restyled;
      strip.title = "its code decoded under every label";
      p.append(" under every label", strip);
    }
    this.setZ(r.mu.slice());
  }

  drawOverlay() {
    const mk = this.marks, s = this.view.s;
    const put = (el, z) => {
      const [x, y] = this.view.toPx(...this.project(z));
      el.setAttribute("cx", x);
      el.setAttribute("cy", y);
    };
    put(mk.current, this.z); mk.current.setAttribute("r", 6); mk.current.style.display = "";
    if (this.picked) { put(mk.picked, this.picked.mu); mk.picked.setAttribute("r", 5); mk.picked.style.display = ""; }
    if (this.posterior) {
      const { mu, sigma } = this.posterior, b = this.map.basis;
      // the circle of radius sigma, seen in the plane: sqrt(sum_d b_d^2 sigma_d^2) along each axis
      const rx = Math.sqrt(b[0].reduce((a, w, i) => a + (w * sigma[i]) ** 2, 0)) * s;
      const ry = Math.sqrt(b[1].reduce((a, w, i) => a + (w * sigma[i]) ** 2, 0)) * s;
      put(mk.posterior, mu); mk.posterior.setAttribute("rx", rx); mk.posterior.setAttribute("ry", ry);
      put(mk.postMean, mu); mk.postMean.setAttribute("r", 3);
      mk.posterior.style.display = mk.postMean.style.display = "";
    }
    mk.pathDots.replaceChildren();
    if (this.path) {
      const pts = this.path.map(z => this.view.toPx(...this.project(z)));
      mk.path.setAttribute("points", pts.map(p => p.join(",")).join(" "));
      mk.path.style.display = "";
      for (const [x, y] of pts) {
        const c = svgEl("circle", "path-dot", mk.pathDots);
        c.setAttribute("cx", x); c.setAttribute("cy", y); c.setAttribute("r", 2.5);
      }
    }
  }

  // -- the current code: sliders, marker, decoded image

  buildSliders() {
    const box = this.el(".sliders"), m = this.map, vae = this.info.kind === "vae";
    box.replaceChildren();
    this.sliders = [];
    for (let d = 0; d < Math.min(SLIDERS, this.D); d++) {
      let lo = m.low[d], hi = m.high[d];
      const span = Math.max(hi - lo, 1e-3);
      if (vae) { lo = Math.min(lo, -3); hi = Math.max(hi, 3); } else { lo -= 0.1 * span; hi += 0.1 * span; }
      const label = document.createElement("label"); label.textContent = `z${d + 1}`;
      const input = document.createElement("input");
      Object.assign(input, { type: "range", min: lo, max: hi, step: (hi - lo) / 400 });
      input.setAttribute("aria-label", `z${d + 1}`);
      const out = document.createElement("output");
      input.addEventListener("input", () => { const z = this.z.slice(); z[d] = +input.value; this.setZ(z, d); });
      box.append(label, input, out);
      this.sliders.push([input, out]);
    }
    if (this.D > SLIDERS) {
      const p = document.createElement("p");
      p.className = "hint";
      p.textContent = `first ${SLIDERS} of ${this.D} dimensions`;
      box.append(p);
    }
  }

  setZ(z, fromSlider = -1) {
    this.z = z;
    (this.sliders || []).forEach(([input, out], d) => {
      if (d !== fromSlider) input.value = z[d];
      out.textContent = fmt(z[d]);
    });
    if (this.map) this.drawOverlay();
    this.decodeLive(z.slice());
  }

  async decode(z) {
    const t0 = performance.now();
    const r = await api("/api/decode", this.body({ z }));
    this.el(".decoded").src = r.image;
    this.el(".latency").textContent = `${Math.round(performance.now() - t0)} ms`;
  }

  // -- actions shared by all views

  takesDrawing() {
    const s = this.info.input_shape, d = state.drawShape;
    return d && s.length === 3 && s[0] === 1 && s[1] === d[0] && s[2] === d[1];
  }

  async encodeDrawing(pixels) {
    const r = await api("/api/encode", this.body({ pixels }));
    this.el(".input").src = r.image;
    this.el(".recon").src = r.reconstruction;
    if (r.restyled) { this.el(".restyled").src = r.restyled; this.el(".restyle").hidden = false; }
    this.posterior = { mu: r.mu, sigma: r.sigma };
    const typical = this.info.elbo_mean;
    this.el(".elbo").textContent = r.elbo !== null
      ? `ELBO ${fmt(r.elbo, 1)} nats = E log p(x|z) ${fmt(r.recon, 1)} - KL ${fmt(r.kl, 1)}` +
        (typical !== null ? `  (test digits: ${fmt(typical, 1)})` : "")
      : `log p(x|z) at the code ${fmt(r.recon, 1)} nats (an AE has no ELBO: no posterior, no prior)` +
        (this.info.recon_mean !== null ? `  (test digits: ${fmt(this.info.recon_mean, 1)})` : "");
    this.showAnomaly(r.anomaly);
    this.drawBars(r.mu, r.sigma);
    this.setZ(r.mu.slice());
  }

  // The anomaly score against the run's threshold (vaekit.anomaly): the verdict with its number.
  showAnomaly(a) {
    const el = this.el(".anomaly"), t = a.threshold;
    el.classList.toggle("outlier", a.outlier === true);
    el.classList.toggle("inlier", a.outlier === false);
    el.textContent = `score ${fmt(a.score, 1)} nats` + (t
      ? ` (threshold ${fmt(t.value, 1)} at FPR ${pct(t.fpr)}): ` +
        (a.outlier ? "unlike the training data" : "looks like training data")
      : "; no threshold: run `vaekit score RUN --data ... --fpr 0.05` to calibrate one");
    const how = a.binarize === "none" ? "as drawn" : `binarized (${a.binarize}, seed ${a.seed}) as in training`;
    this.el(".anomaly-parts").textContent = `-log tail p of -ELBO ${fmt(a.neg_elbo, 1)} - complexity ` +
      `${fmt(a.complexity, 1)} and of the orientation ` +
      `(the drawing ${how}; higher = less like the training data)`;
  }

  drawBars(mu, sigma) {
    const c = this.el(".bars"), g = c.getContext("2d"), D = mu.length;
    const top = Math.max(3, ...mu.map((m, i) => Math.abs(m) + sigma[i]));
    const w = c.width / D, mid = c.height / 2 - 6, k = (c.height / 2 - 10) / top;
    g.clearRect(0, 0, c.width, c.height);
    g.strokeStyle = "#ccc"; g.beginPath(); g.moveTo(0, mid); g.lineTo(c.width, mid); g.stroke();
    for (let d = 0; d < D; d++) {
      const x = d * w;
      g.fillStyle = "#4c78a8";
      g.fillRect(x + w * 0.15, Math.min(mid, mid - mu[d] * k), w * 0.7, Math.abs(mu[d] * k));
      if (sigma[d] > 0) {
        g.strokeStyle = "#d1495b";
        g.beginPath();
        g.moveTo(x + w / 2, mid - (mu[d] + sigma[d]) * k);
        g.lineTo(x + w / 2, mid - (mu[d] - sigma[d]) * k);
        g.stroke();
      }
    }
    g.fillStyle = "#667085"; g.font = "10px sans-serif";
    const whiskers = sigma.some(s => s > 0) ? ", ± sigma (red)" : "";
    g.fillText(`mu per dimension (bars)${whiskers}; scale ±${fmt(top, 1)}`, 2, c.height - 2);
    c.title = mu.map((m, d) => `z${d + 1}: mu ${fmt(m)}, sigma ${fmt(sigma[d], 3)}`).join("\n");
  }

  async interpolate(start, end, steps, spherical) {
    this.lastInterp = [start, end, steps, spherical];
    const r = await api("/api/interpolate", this.body({ start, end, steps, spherical }));
    this.el(".strip").src = r.image;
    this.path = r.z;
    this.drawOverlay();
  }

  async sample(n, seed) {
    this.lastSample = [n, seed];
    const r = await api("/api/sample", this.body({ n, seed }));
    this.el(".grid").src = r.image;
  }
}

// ------------------------------------------------------------------------------------------ drawing

function setupDrawing() {
  const c = $("#draw"), g = c.getContext("2d", { willReadFrequently: true });
  const clear = () => { g.fillStyle = "#000"; g.fillRect(0, 0, c.width, c.height); state.drawing = null; };
  clear();
  let last = null;
  const at = ev => {
    const r = c.getBoundingClientRect();
    return [(ev.clientX - r.left) * c.width / r.width, (ev.clientY - r.top) * c.height / r.height];
  };
  const stroke = (p) => {
    g.strokeStyle = "#fff"; g.lineWidth = c.width / 28 * 2.2; g.lineCap = "round"; g.lineJoin = "round";
    g.beginPath(); g.moveTo(...(last || p)); g.lineTo(...p); g.stroke();
    last = p;
  };
  c.addEventListener("pointerdown", ev => {
    c.setPointerCapture(ev.pointerId);
    last = null;
    stroke(at(ev));
    encodeAll();
  });
  c.addEventListener("pointermove", ev => { if (last) { stroke(at(ev)); encodeAll(); } });
  const up = () => { if (last) { last = null; encodeAll(); } };
  c.addEventListener("pointerup", up);
  c.addEventListener("pointercancel", up);
  $("#clear").addEventListener("click", clear);
  $("#centre").addEventListener("change", () => state.drawing && encodeAll());
}

// The drawing as an h x w greyscale image in [0, 1], flattened row-major. With "centre": the ink's bounding
// box scaled into a 20x20 box and shifted so its centre of mass is the image centre (how MNIST was made).
function drawingPixels(h, w) {
  const src = $("#draw");
  const out = document.createElement("canvas");
  out.width = w; out.height = h;
  const o = out.getContext("2d", { willReadFrequently: true });
  o.fillStyle = "#000"; o.fillRect(0, 0, w, h);
  o.imageSmoothingEnabled = true; o.imageSmoothingQuality = "high";
  if ($("#centre").checked) {
    const box = inkBox(src);
    if (!box) return null;
    const s = (20 / 28) * Math.min(w, h) / Math.max(box.w, box.h);
    o.drawImage(src, box.x, box.y, box.w, box.h, (w - box.w * s) / 2, (h - box.h * s) / 2, box.w * s, box.h * s);
    const img = o.getImageData(0, 0, w, h);
    let m = 0, mx = 0, my = 0;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const v = img.data[4 * (y * w + x)];
        m += v; mx += v * (x + 0.5); my += v * (y + 0.5);
      }
    }
    const dx = Math.round(w / 2 - mx / m), dy = Math.round(h / 2 - my / m);
    if (dx || dy) { o.fillRect(0, 0, w, h); o.putImageData(img, dx, dy); }
  } else {
    if (!inkBox(src)) return null;
    o.drawImage(src, 0, 0, w, h);
  }
  const data = o.getImageData(0, 0, w, h).data, px = new Array(w * h);
  for (let i = 0; i < w * h; i++) px[i] = Math.round(data[4 * i] / 255 * 1000) / 1000;
  return px;
}

function inkBox(canvas) {
  const g = canvas.getContext("2d", { willReadFrequently: true });
  const { data, width: W, height: H } = g.getImageData(0, 0, canvas.width, canvas.height);
  let x0 = W, y0 = H, x1 = -1, y1 = -1;
  for (let y = 0; y < H; y++) for (let x = 0; x < W; x++) {
    if (data[4 * (y * W + x)] > 0) { if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y; }
  }
  return x1 < 0 ? null : { x: x0, y: y0, w: x1 - x0 + 1, h: y1 - y0 + 1 };
}

function encodeAll() {
  if (!state.drawShape) return;
  const px = drawingPixels(...state.drawShape);
  if (!px) return;
  state.drawing = px;
  for (const v of state.views) if (v.takesDrawing()) v.encodeLive(px);
}

// ---------------------------------------------------------------------------------- shared controls

function endOf(id) {
  const root = $(id);
  if ($(".kind", root).value === "drawing") {
    if (!state.drawing) throw new Error("draw a digit first (or choose a test digit)");
    return { pixels: state.drawing };
  }
  return { index: Math.max(0, Math.floor(+$(".index", root).value || 0)) };
}

async function interpolateAll() {
  const start = endOf("#end-from"), end = endOf("#end-to");
  const steps = Math.min(32, Math.max(2, Math.floor(+$("#steps").value || 10)));
  const spherical = $("#spherical").checked;
  await Promise.all(state.views.filter(v => !(start.pixels || end.pixels) || v.takesDrawing())
    .map(v => v.interpolate(start, end, steps, spherical)));
}

async function sampleAll() {
  const n = +$("#n").value, seed = Math.max(0, Math.floor(+$("#seed").value || 0));
  await Promise.all(state.views.map(v => v.sample(n, seed)));
}

function setupControls() {
  $("#interpolate").addEventListener("click", () => interpolateAll().catch(showError));
  $("#sample").addEventListener("click", () => sampleAll().catch(showError));
  for (const id of ["#end-from", "#end-to"]) {
    $(".pick", $(id)).addEventListener("click", () => {
      if (state.selected === null) { setStatus("click a dot on a map first", true); return; }
      $(".kind", $(id)).value = "index";
      $(".index", $(id)).value = state.selected;
    });
  }
  for (const id of ["#model-a", "#model-b"]) $(id).addEventListener("change", () => showViews().catch(showError));
}

// ---------------------------------------------------------------------------------------- the page

async function showViews() {
  const a = +$("#model-a").value, b = $("#model-b").value;
  const chosen = [a].concat(b !== "" && +b !== a ? [+b] : []);
  state.views = chosen.map(i => new View(state.models[i]));
  $("#views").replaceChildren(...state.views.map(v => v.root));
  const first = state.models[a].input_shape;
  state.drawShape = first.length === 3 && first[0] === 1 ? [first[1], first[2]] : null;
  $("#draw-card").hidden = !state.drawShape;
  await Promise.all(state.views.map(v => v.loadMap()));
  await Promise.all([sampleAll(), interpolateAll().catch(e => setStatus(e.message, true))]);
  if (state.drawing) encodeAll();
}

async function main() {
  setupDrawing();
  setupControls();
  const r = await api("/api/models");
  state.models = r.models;
  state.classifier = r.classifier;
  const opts = r.models.map(m => `<option value="${m.index}"></option>`).join("");
  for (const id of ["#model-a", "#model-b"]) {
    $(id).innerHTML = (id === "#model-b" ? '<option value="">none</option>' : "") + opts;
    $(id).querySelectorAll("option[value]:not([value=''])").forEach(o => {
      const m = r.models[+o.value];
      o.textContent = `${m.index}: ${m.name} (${m.kind})`;
    });
  }
  $("#model-b").value = r.models.length > 1 ? "1" : "";
  $("#compare").hidden = r.models.length < 2;
  await showViews();
  setStatus(`${r.models.length} model${r.models.length > 1 ? "s" : ""} loaded`);
  document.body.dataset.ready = "1";
}

main().catch(showError);
