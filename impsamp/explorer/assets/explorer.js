// impsamp cluster explorer: draws the data of <script id="impsamp-data"> with the DOM and two canvases.
// Text from the corpus only ever goes through textContent (never innerHTML), so a document holding
// HTML or a script shows as text. No library, no network.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("impsamp-data").textContent);
  const L = D.leaves;
  const K = L.docs.length;
  const TOTAL = L.docs.reduce((a, b) => a + b, 0) || 1;
  const ROWS = L.rows ? L.rows.reduce((a, b) => a + b, 0) || 1 : 0;
  const HAS_T = !!L.target, HAS_W = !!L.weight, HAS_S = !!L.rows;
  const C = [];
  for (let i = 0; i < K; i++) {
    C.push({
      id: i, docs: L.docs[i], tokens: L.tokens[i], g: L.docs[i] / TOTAL,
      t: HAS_T ? L.target[i] : null, w: HAS_W ? L.weight[i] : null,
      rows: HAS_S ? L.rows[i] : null, s: HAS_S ? L.rows[i] / ROWS : null, rep: HAS_S ? L.repeats[i] : null,
      x: L.x[i], y: L.y[i], terms: L.terms[i], snips: L.snippets[i], parent: L.parent ? L.parent[i] : null,
    });
  }
  // what ranks the clusters first: the weight, unless every cluster weighs the same (a uniform selection)
  const FLAT_W = HAS_W && C.every((c) => c.w === C[0].w);
  const [RANK, RANK_TEXT] = HAS_W && !FLAT_W ? ["w", "the highest weight"] : HAS_T ? ["t", "the most target mass"] : ["docs", "the most documents"];
  const state = { selected: null, open: null, hover: null, sortKey: RANK, sortDir: -1, filter: "", page: 0, pageSize: 50 };

  // ---- small helpers -------------------------------------------------------------------------
  function h(tag, props, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "text") el.textContent = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) el.append(kid);  // strings become text nodes
    return el;
  }
  const int = (n) => (n === null || n === undefined ? "\u2013" : Math.round(n).toLocaleString("en-US"));
  function pct(p) {
    if (p === null || p === undefined) return "\u2013";
    if (p === 0) return "0%";
    const v = p * 100;
    return (v < 0.1 ? v.toPrecision(2) : v < 10 ? v.toFixed(2) : v.toFixed(1)) + "%";
  }
  function times(w) {
    if (w === null || w === undefined) return "\u2013";
    if (w === 0) return "0\u00d7";
    if (w < 0.01) return "<0.01\u00d7";
    return (w < 10 ? w.toPrecision(2) : w < 1000 ? w.toFixed(0) : w.toExponential(1)) + "\u00d7";
  }
  function compact(n) {
    return n >= 1e9 ? (n / 1e9).toFixed(1) + "B" : n >= 1e6 ? (n / 1e6).toFixed(1) + "M"
      : n >= 1e4 ? (n / 1e3).toFixed(0) + "k" : int(n);
  }
  // weight -> colour: blue (pushed out) .. grey (1x) .. red (pulled in), on log2 clamped to +-4
  const BLUE = [33, 102, 172], GREY = [222, 222, 222], RED = [178, 24, 43], NONE = [95, 140, 160], ZERO = "rgb(150, 160, 172)";
  function colour(w) {
    if (w === null) return `rgb(${NONE})`;
    if (w === 0) return ZERO;  // no target document (the map draws an open circle)
    const t = Math.max(-4, Math.min(4, w > 0 ? Math.log2(w) : -4)) / 4;
    const end = t < 0 ? BLUE : RED, a = Math.abs(t);
    return `rgb(${GREY.map((g, i) => Math.round(g + (end[i] - g) * a))})`;
  }
  function canvasFor(canvas, height) {
    const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth || 600;
    canvas.width = Math.round(w * dpr); canvas.height = Math.round(height * dpr);
    canvas.style.height = height + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, height);
    return [ctx, w];
  }
  const tip = h("div", { class: "tip", role: "tooltip" });
  function showTip(ev, lines) {
    tip.replaceChildren(...lines.map((l, i) => h(i ? "div" : "strong", { text: l })));
    tip.style.display = "block";
    const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
    tip.style.left = x + window.scrollX + "px";
    tip.style.top = ev.clientY + 14 + window.scrollY + "px";
  }
  const hideTip = () => { tip.style.display = "none"; };
  function clusterLines(c) {
    const nums = [`generic ${pct(c.g)}`];
    if (HAS_T) nums.push(`target ${pct(c.t)}`);
    if (HAS_W) nums.push(`weight ${times(c.w)}`);
    if (HAS_S) nums.push(`selected ${pct(c.s)}`);
    return [`Cluster ${c.id} \u00b7 ${int(c.docs)} documents`, nums.join(" \u00b7 "), c.terms.join(", ") || "(no terms)"];
  }

  // ---- header ----------------------------------------------------------------------------------
  function header() {
    const cl = D.clustering, sel = D.selection, tg = D.target;
    const lv = cl.levels.length > 1 ? ` (a tree of ${cl.levels.length} levels: ${cl.levels.map(int).join(" \u2192 ")} nodes)` : "";
    const facts = [h("li", { text: `${int(K)} clusters${lv} over ${int(cl.documents)} documents, ${compact(cl.tokens)} tokens of the generic corpus (${cl.name}).` })];
    if (sel) {
      const how = [sel.method, sel.method === "importance" ? sel.scheme : null].filter(Boolean).join(", ");
      facts.push(h("li", { text: `Selection ${sel.name} (${how}): ${int(sel.rows)} rows, ${compact(sel.tokens)} tokens, `
        + `${pct(sel.repetition_rate)} of the rows repeat a document already selected.` }));
    }
    if (tg) {
      let s = `Target ${tg.source || "sample"}: ${int(tg.documents)} documents.`;
      if (sel && sel.kl_target_generic !== null && sel.kl_target_generic !== undefined) {
        s += ` KL(target \u2016 generic) ${sel.kl_target_generic.toFixed(3)} \u2192 KL(target \u2016 selection) ${sel.kl_target_selected.toFixed(3)}.`;
        const missed = HAS_S && HAS_T ? C.filter((c) => c.t > 0 && c.rows === 0).length : 0;
        if (missed) s += ` The selection has no row in ${int(missed)} of the target's clusters: there KL(target \u2016 selection) `
          + "is infinite, and the figure floors the selection's share at 1e-12.";
      }
      if (tg.selection_drawn_for)
        s += ` The selection was drawn for ${tg.selection_drawn_for}: its weights are that target's \u00f7 generic.`;
      facts.push(h("li", { text: s }));
    } else facts.push(h("li", { text: "No target given: pass --target (or --selection) to see target mass and weights." }));
    const help = "Each cluster groups similar documents (k-means on their embeddings). Generic"
      + (HAS_T ? " and target: the share of the generic corpus's and of the target sample's documents in the cluster." : ": the share of the generic corpus's documents in the cluster.")
      + (HAS_W ? " Weight: the cluster's importance weight (target \u00f7 generic, smoothed and capped), how much importance "
        + "sampling multiplies a document's chance (red, above 1: pulled in; blue, below 1: pushed out)." : "")
      + (HAS_S ? " Selected: the share of the selection's rows. Repeats: rows that are a second or later copy of a document." : "");
    return h("header", null, h("h1", { text: D.title }), h("ul", { class: "facts" }, ...facts), h("p", { class: "help", text: help }));
  }

  // ---- map -----------------------------------------------------------------------------------
  const map = { canvas: h("canvas", { id: "map", "aria-label": "map of the cluster centroids" }), pts: [] };
  function drawMap() {
    const H = 440, [ctx, W] = canvasFor(map.canvas, H);
    const maxDocs = C.reduce((m, c) => Math.max(m, c.docs), 1);
    const rMax = Math.max(5, Math.min(22, 260 / Math.sqrt(K))), pad = rMax + 6;
    map.pts = C.map((c) => ({ c, px: pad + c.x * (W - 2 * pad), py: pad + (1 - c.y) * (H - 2 * pad),
      r: 1.5 + rMax * Math.sqrt(c.docs / maxDocs) }));
    // clusters the target does not use first, then by weight (the pulled-in ones on top), larger first
    const order = map.pts.slice().sort((a, b) => (HAS_W ? (a.c.w > 0) - (b.c.w > 0) || a.c.w - b.c.w : 0) || b.r - a.r);
    for (const p of order) {
      if (p.c.docs === 0) {  // an empty cluster: a cross, not a dot too small to see
        const a = 3.5;
        ctx.beginPath(); ctx.moveTo(p.px - a, p.py - a); ctx.lineTo(p.px + a, p.py + a);
        ctx.moveTo(p.px - a, p.py + a); ctx.lineTo(p.px + a, p.py - a);
        ctx.strokeStyle = "#555"; ctx.lineWidth = 1.4; ctx.stroke();
        continue;
      }
      ctx.beginPath(); ctx.arc(p.px, p.py, p.r, 0, 2 * Math.PI);
      if (p.c.w === 0) {  // no target document: an open circle
        ctx.strokeStyle = ZERO; ctx.lineWidth = 1.2; ctx.stroke();
      } else {
        ctx.fillStyle = colour(p.c.w); ctx.fill();
        if (p.r > 3) { ctx.strokeStyle = "rgba(255,255,255,0.9)"; ctx.lineWidth = 0.6; ctx.stroke(); }
      }
    }
    for (const [id, col, wid] of [[state.hover, "#555", 1.5], [state.selected, "#000", 2.5]]) {
      if (id === null) continue;
      const p = map.pts[id];
      ctx.beginPath(); ctx.arc(p.px, p.py, p.r + 3, 0, 2 * Math.PI);
      ctx.strokeStyle = col; ctx.lineWidth = wid; ctx.stroke();
    }
  }
  function nearest(ev) {
    const r = map.canvas.getBoundingClientRect(), x = ev.clientX - r.left, y = ev.clientY - r.top;
    let best = null, bestD = Infinity;
    for (const p of map.pts) {
      const d = Math.hypot(p.px - x, p.py - y);
      if (d < Math.max(p.r + 3, 7) && d - p.r < bestD) { best = p; bestD = d - p.r; }
    }
    return best;
  }
  map.canvas.addEventListener("mousemove", (ev) => {
    const p = nearest(ev), id = p ? p.c.id : null;
    if (p) showTip(ev, clusterLines(p.c)); else hideTip();
    map.canvas.style.cursor = p ? "pointer" : "default";
    if (id !== state.hover) { state.hover = id; drawMap(); }
  });
  map.canvas.addEventListener("mouseleave", () => { hideTip(); state.hover = null; drawMap(); });
  map.canvas.addEventListener("click", (ev) => { const p = nearest(ev); if (p) select(p.c.id); });
  function legend() {
    const items = [];
    if (HAS_W) {
      const bar = h("span", { class: "ramp" });
      bar.style.background = `linear-gradient(to right, ${[-4, -2, 0, 2, 4].map((t) => colour(2 ** t)).join(",")})`;
      const zero = h("span", { class: "swatch open" }); zero.style.borderColor = ZERO;
      items.push(h("span", { text: "weight \u2264 1/16\u00d7 " }), bar, h("span", { text: " \u2265 16\u00d7 (grey: 1\u00d7)" }),
        zero, h("span", { text: "open circle: 0\u00d7, no target document" }));
    } else if (D.selection) items.push(h("span", { text: `colour: none (a ${D.selection.method} selection weighs `
      + (D.selection.method === "uniform" ? "nothing" : "each document on its own, not the clusters") + ")" }));
    else items.push(h("span", { text: "colour: no weights (give a target or a selection)" }));
    return h("div", null, h("div", { class: "legend" }, ...items),
      h("div", { class: "legend", text: "Size: documents in the cluster" + (C.some((c) => c.docs === 0) ? " (\u00d7: an empty one)" : "")
        + ". Hover a dot for its terms, click it for its details." }));
  }

  // ---- histogram -------------------------------------------------------------------------------
  const hist = { canvas: h("canvas", { id: "hist", "aria-label": "generic versus target histogram" }), bars: [] };
  const TOP = Math.min(K, 40);
  // the order of the selection's histograms.png: target + selected mass, then generic mass
  const mass = (c) => (HAS_T ? c.t : c.g) + (HAS_S ? c.s || 0 : 0);  // (no target: the png's target is the pool)
  const histOrder = C.slice().sort((a, b) => mass(b) - mass(a) || b.g - a.g || a.id - b.id).slice(0, TOP);
  const SERIES = [["g", "generic", "#9a9a9a"]].concat(HAS_T ? [["t", "target", "#e66101"]] : [],
    HAS_S ? [["s", "selected", "#2c7bb6"]] : []);  // histograms.png's names
  function niceStep(max) {  // 1, 2, 2.5 or 5 x 10^n, about 4 ticks
    const raw = max / 4, mag = 10 ** Math.floor(Math.log10(raw));
    return mag * ([1, 2, 2.5, 5, 10].find((m) => m * mag >= raw) || 10);
  }
  function drawHist() {
    const H = 270, [ctx, W] = canvasFor(hist.canvas, H), left = 48, top = 10;
    ctx.font = "11px system-ui, sans-serif";
    const slot = (W - left - 4) / histOrder.length, bw = Math.max(1, (slot * 0.8) / SERIES.length);
    const widest = Math.max(...histOrder.map((c) => ctx.measureText(String(c.id)).width));
    const tilt = widest > slot - 4, bottom = tilt ? 18 + widest * 0.72 : 30;
    const every = tilt ? Math.max(1, Math.ceil(13 / slot)) : 1;  // tilted labels 13 px apart at least (narrow screens)
    const step = niceStep(Math.max(1e-9, ...histOrder.flatMap((c) => SERIES.map(([k]) => c[k] || 0))));
    const ymax = step * Math.ceil(Math.max(1e-9, ...histOrder.flatMap((c) => SERIES.map(([k]) => c[k] || 0))) / step);
    ctx.fillStyle = "#444"; ctx.strokeStyle = "#e5e5e5"; ctx.lineWidth = 1;
    for (let v = 0; v <= ymax + step / 2; v += step) {
      const y = top + (H - top - bottom) * (1 - v / ymax);
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(W - 4, y); ctx.stroke();
      ctx.textAlign = "right"; ctx.fillText(pct(v), left - 4, y + 4);
    }
    hist.bars = [];
    histOrder.forEach((c, i) => {
      const x0 = left + i * slot + slot * 0.1;
      SERIES.forEach(([k, , col], j) => {
        const v = c[k] || 0, hgt = (H - top - bottom) * v / ymax;
        ctx.fillStyle = col; ctx.fillRect(x0 + j * bw, H - bottom - hgt, bw - (bw > 3 ? 1 : 0), hgt);
      });
      hist.bars.push({ c, x0: left + i * slot, x1: left + (i + 1) * slot });
      if (i % every && c.id !== state.selected) return;
      ctx.save(); ctx.translate(left + (i + 0.5) * slot, H - bottom + 6); ctx.rotate(tilt ? -Math.PI / 4 : 0);
      ctx.fillStyle = c.id === state.selected ? "#000" : "#555"; ctx.textAlign = tilt ? "right" : "center";
      ctx.fillText(String(c.id), tilt ? 4 : 0, tilt ? 4 : 10); ctx.restore();
    });
  }
  function histAt(ev) {
    const r = hist.canvas.getBoundingClientRect(), x = ev.clientX - r.left;
    return hist.bars.find((b) => x >= b.x0 && x < b.x1) || null;
  }
  hist.canvas.addEventListener("mousemove", (ev) => { const b = histAt(ev); if (b) showTip(ev, clusterLines(b.c)); else hideTip(); });
  hist.canvas.addEventListener("mouseleave", hideTip);
  hist.canvas.addEventListener("click", (ev) => { const b = histAt(ev); if (b) select(b.c.id); });
  function histPanel() {
    const nT = histOrder.filter((c) => mass(c) > 0).length;  // with fewer such clusters than bars, the rest are the largest
    const what = HAS_T && HAS_S ? "target or selected mass" : HAS_T ? "target mass" : "generic or selected mass";
    const which = !HAS_T && !HAS_S ? `the ${TOP} clusters with the most generic documents` : nT < TOP
      ? `the ${nT} cluster${nT === 1 ? "" : "s"} that hold ${what}, then the ${TOP - nT} largest other${TOP - nT === 1 ? "" : "s"}`
      : `the ${TOP} clusters with the most ${what}`;
    const left = (k) => { const r = 1 - histOrder.reduce((a, c) => a + (c[k] || 0), 0); return pct(r > 1e-6 ? r : 0); };
    const parts = [HAS_T ? `${left("t")} of the target` : null, HAS_S ? `${left("s")} of the selection` : null]
      .filter(Boolean);
    const note = K > TOP ? ` The other ${int(K - TOP)} clusters hold ${parts.length ? parts.join(" and ") : `${left("g")} of the generic corpus`}.` : "";
    const keys = h("div", { class: "legend" }, ...SERIES.map(([, name, col]) => {
      const sw = h("span", { class: "swatch" }); sw.style.background = col; return h("span", null, sw, name + " ");
    }));
    return h("section", { class: "panel", id: "hist-panel" }, h("h2", { text: HAS_T ? `Generic vs target: ${which}` : `Cluster sizes: ${which}` }),
      h("p", { class: "caption", text: "Share of each corpus's documents per cluster (selection: share of its rows)." + note }),
      hist.canvas, keys);
  }

  // ---- details -------------------------------------------------------------------------------
  const detail = h("div", { id: "detail" });
  function renderDetail() {
    if (state.selected === null) { detail.replaceChildren(h("p", { class: "caption", text: "Click a cluster on the map, the histogram or the table." })); return; }
    const c = C[state.selected];
    const rows = [["Documents", `${int(c.docs)} (${pct(c.g)} of the generic corpus)`], ["Tokens", int(c.tokens)]];
    if (HAS_T) rows.push(["Target mass", pct(c.t)]);
    if (HAS_W) rows.push(["Weight", times(c.w)]);
    if (HAS_S) rows.push(["Selected", `${int(c.rows)} rows (${pct(c.s)} of the selection), ${int(c.rep)} repeats`]);
    if (c.parent !== null) rows.push(["In tree node", `${c.parent} (level ${D.clustering.levels.length - 2})`]);
    const dl = h("dl", null, ...rows.flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })]));
    const terms = h("p", { class: "terms" }, ...(c.terms.length ? c.terms.map((t) => h("span", { class: "term", text: t })) : ["(no terms)"]));
    const snips = c.snips.length ? c.snips.map((s) => h("blockquote", { class: "snippet", text: s })) : [h("p", { class: "caption", text: "(no documents sampled)" })];
    const why = c.id === state.initial ? h("p", { class: "caption", text: (FLAT_W ? "Every cluster has the same weight. " : "") + `The cluster with ${RANK_TEXT}; `
      + "click any other on the map, the histogram or the table." }) : null;
    detail.replaceChildren(h("h3", { text: `Cluster ${c.id}` }), ...(why ? [why] : []), dl, h("h4", { text: "Top terms" }), terms,
      h("h4", { text: "Example documents" }), ...snips);
  }
  function select(id) {
    state.selected = id;
    const at = visible().findIndex((c) => c.id === id);  // picked on the map: its row's page shown
    if (at >= 0) state.page = Math.floor(at / state.pageSize);
    renderDetail(); drawMap(); drawHist(); renderTable();
  }
  function openRow(id) { state.open = state.open === id ? null : id; select(id); }

  // ---- table -----------------------------------------------------------------------------------
  const COLS = [["id", "Cluster", (c) => String(c.id)], ["docs", "Documents", (c) => int(c.docs)],
    ["tokens", "Tokens", (c) => int(c.tokens)], ["g", "Generic", (c) => pct(c.g)]]
    .concat(HAS_T ? [["t", "Target", (c) => pct(c.t)]] : [], HAS_W ? [["w", "Weight", (c) => times(c.w)]] : [],
      HAS_S ? [["s", "Selected", (c) => pct(c.s)], ["rep", "Repeats", (c) => int(c.rep)]] : [],
      [["terms", "Top terms", (c) => c.terms.join(", ")]]);
  const thead = h("thead"), tbody = h("tbody"), pager = h("div", { class: "pager" }), count = h("span", { class: "count" });
  const search = h("input", { type: "search", placeholder: "filter: a word or number of the terms or snippets, or a cluster (#12)", "aria-label": "filter clusters" });
  let timer = null;
  search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => { state.filter = search.value.trim().toLowerCase(); state.page = 0; renderTable(); }, 120); });
  const sizeSel = h("select", { "aria-label": "rows per page", onchange: (e) => { state.pageSize = +e.target.value; state.page = 0; renderTable(); } },
    ...[25, 50, 100, 250].map((n) => h("option", n === 50 ? { value: n, selected: "" } : { value: n }, `${n} per page`)));
  function renderHead() {
    thead.replaceChildren(h("tr", null, ...COLS.map(([key, label]) => {
      const sorted = state.sortKey === key, arrow = sorted ? (state.sortDir < 0 ? " \u25bc" : " \u25b2") : "";
      return h("th", { "data-key": key, class: key === "terms" ? "" : "num sortable", "aria-sort": sorted ? (state.sortDir < 0 ? "descending" : "ascending") : "none",
        title: key === "terms" ? "" : "click to sort", onclick: key === "terms" ? null : () => sortBy(key) }, label + arrow);
    })));
  }
  function sortBy(key) {
    if (state.sortKey === key) state.sortDir = -state.sortDir;
    else { state.sortKey = key; state.sortDir = key === "id" ? 1 : -1; }
    state.page = 0; renderHead(); renderTable();
  }
  const haystack = C.map((c) => (c.terms.join(" ") + " " + c.snips.join(" ")).toLowerCase());
  function visible() {
    const q = state.filter;
    let rows = C;
    if (/^#\d+$/.test(q)) rows = C.filter((c) => String(c.id) === q.slice(1));  // #12: that cluster only
    else if (q) rows = C.filter((c) => haystack[c.id].includes(q) || String(c.id) === q);
    const k = state.sortKey, dir = state.sortDir;
    // a bare number (a year, a version) searches the text too, with the cluster of that number first
    const first = (c) => (/^\d+$/.test(q) && String(c.id) === q ? 0 : 1);
    return rows.slice().sort((a, b) => first(a) - first(b) || ((a[k] ?? -1) - (b[k] ?? -1)) * dir || a.id - b.id);
  }
  function renderTable() {
    const rows = visible(), pages = Math.max(1, Math.ceil(rows.length / state.pageSize));
    state.page = Math.min(state.page, pages - 1);
    const shown = rows.slice(state.page * state.pageSize, (state.page + 1) * state.pageSize);
    tbody.replaceChildren(...shown.flatMap((c) => {
      const tr = h("tr", { "data-cluster": c.id, tabindex: "0", class: c.id === state.selected ? "selected" : null,
        "aria-expanded": String(c.id === state.open), onclick: () => openRow(c.id), onkeydown: (e) => { if (e.key === "Enter") openRow(c.id); } },
        ...COLS.map(([key, , fmt]) => h("td", { class: key === "terms" ? "terms-cell" : "num" }, fmt(c))));
      if (c.id !== state.open) return [tr];
      const snips = c.snips.length ? c.snips.map((t) => h("blockquote", { class: "snippet", text: t })) : [h("p", { class: "caption", text: "(no documents sampled)" })];
      return [tr, h("tr", { class: "row-detail" }, h("td", { colspan: COLS.length }, ...snips))];
    }));
    count.textContent = rows.length === K ? `${int(K)} clusters` : `${int(rows.length)} of ${int(K)} clusters match`;
    const go = (p) => () => { state.page = p; renderTable(); };
    pager.replaceChildren(h("button", { type: "button", disabled: state.page === 0, onclick: go(state.page - 1), "aria-label": "previous page" }, "\u2039"),
      h("span", { text: ` page ${state.page + 1} of ${pages} ` }),
      h("button", { type: "button", disabled: state.page >= pages - 1, onclick: go(state.page + 1), "aria-label": "next page" }, "\u203a"));
  }

  // ---- tree (hierarchies) ----------------------------------------------------------------------
  function treePanel() {
    const T = D.tree, levels = T.length;  // non-leaf levels; the leaves are C
    const kids = T.map((_, j) => { const n = (j + 1 < levels ? T[j + 1].parent : L.parent); const m = T[j].docs.map(() => []); n.forEach((p, i) => m[p].push(i)); return m; });
    const node = (j, i) => ({ j, i, docs: T[j].docs[i], g: T[j].docs[i] / TOTAL, t: HAS_T ? T[j].target[i] : null,
      s: HAS_S ? T[j].rows[i] / ROWS : null, terms: T[j].terms[i] });
    const key = (a, b) => (HAS_T ? b.t - a.t : 0) || b.docs - a.docs || a.i - b.i;
    function row(n, depth) {
      const leaf = n.j === levels, nk = leaf ? 0 : kids[n.j][n.i].length;
      const ratio = HAS_T && n.g > 0 ? n.t / n.g : null;
      const toggle = h("button", { type: "button", class: "toggle", "aria-expanded": "false", disabled: leaf }, leaf ? "\u00b7" : "\u25b8");
      const label = leaf ? `cluster ${n.i}` : `node ${n.i} (${nk} ${n.j + 1 === levels ? "clusters" : "nodes"})`;
      const line = h("div", { class: "tree-row", style: `padding-left:${depth * 1.4}em` }, toggle, h("span", { class: "tree-label", text: label }),
        h("span", { class: "num", text: `${int(n.docs)} docs` }), h("span", { class: "num", text: `generic ${pct(n.g)}` }),
        HAS_T ? h("span", { class: "num", text: `target ${pct(n.t)}` }) : null, ratio !== null ? h("span", { class: "num", text: `target\u00f7generic ${times(ratio)}` }) : null,
        HAS_S ? h("span", { class: "num", text: `selected ${pct(n.s)}` }) : null, h("span", { class: "tree-terms", text: n.terms.join(", ") }));
      const box = h("div", { class: "tree-node" }, line);
      if (leaf) line.addEventListener("click", () => { select(n.i); document.getElementById("detail-panel").scrollIntoView({ block: "nearest" }); });
      else toggle.addEventListener("click", () => {
        const open = toggle.getAttribute("aria-expanded") === "true";
        toggle.setAttribute("aria-expanded", String(!open)); toggle.textContent = open ? "\u25b8" : "\u25be";
        if (open) { box.querySelector(".tree-kids").remove(); return; }
        const ch = kids[n.j][n.i].map((i) => (n.j + 1 === levels ? { ...C[i], j: levels, i } : node(n.j + 1, i))).sort(key);
        box.append(h("div", { class: "tree-kids" }, ...ch.map((c) => row(c, depth + 1))));
      });
      return box;
    }
    const roots = T[0].docs.map((_, i) => node(0, i)).sort(key);
    return h("section", { class: "panel", id: "tree-panel" }, h("h2", { text: "Cluster tree" }),
      h("p", { class: "caption", text: "Expand a node to see its children (ordered by " + (HAS_T ? "target mass" : "documents") + "); click a cluster for its details." }),
      h("div", { class: "tree" }, ...roots.map((n) => row(n, 0))));
  }

  // ---- page ----------------------------------------------------------------------------------
  const app = document.getElementById("app");
  const top = C.slice().sort((a, b) => b[RANK] - a[RANK] || b.docs - a.docs || a.id - b.id)[0];
  state.selected = state.initial = top ? top.id : null;
  app.append(...[header(),
    h("div", { class: "row" },
      h("section", { class: "panel", id: "map-panel" }, h("h2", { text: "Map of the clusters" }),
        h("p", { class: "caption", text: "Each dot is a cluster centroid, placed by PCA of the centroids (nearby dots hold similar documents)." }),
        map.canvas, legend()),
      h("section", { class: "panel", id: "detail-panel" }, h("h2", { text: "Cluster details" }), detail)),
    histPanel(), D.tree && D.tree.length ? treePanel() : null,
    h("section", { class: "panel", id: "table-panel" }, h("h2", { text: "All clusters" }),
      h("div", { class: "controls" }, search, count, sizeSel, pager),
      h("div", { class: "table-wrap" }, h("table", { id: "clusters" }, thead, tbody))),
    h("footer", { text: `impsamp ${D.impsamp_version} \u00b7 clustering ${D.clustering.name} (${D.clustering.fingerprint}) \u00b7 terms: TF-IDF over up to `
      + `${D.sample.per_cluster} sampled documents per cluster (${int(D.sample.units)} in all, seed ${D.sample.seed}); snippets: `
      + `${D.sample.snippets} of them per cluster, cut to ${D.sample.snippet_chars} characters.` }), tip].filter(Boolean));
  renderHead(); renderTable(); renderDetail(); drawMap(); drawHist();
  // read-only handle for debugging and tests: where each cluster is drawn on the map (CSS pixels)
  window.impsampExplorer = Object.freeze({ clusters: K, mapPoints: () => map.pts.map((p) => ({ id: p.c.id, x: p.px, y: p.py, r: p.r })) });
  let resize = null;
  window.addEventListener("resize", () => { clearTimeout(resize); resize = setTimeout(() => { drawMap(); drawHist(); }, 100); });
})();
