// zfnet explore: the page. Plain JS, no build step, nothing fetched but this server's own API. Every string that
// comes from the server or the user is shown as text (textContent), never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, layer: null, map: null, rule: "deconvnet", unit: null };
let info = null, page = 0, pages = 1, grid = null, occJob = null;

async function api(path, options) {
  const r = await fetch(path, options);
  const body = await r.json().catch(() => ({ error: `${r.status} ${r.statusText}` }));
  if (!r.ok) throw new Error(body.error || `${r.status} ${r.statusText}`);
  return body;
}

function showError(e) { $("error").textContent = e ? String(e.message || e) : ""; }

function option(select, value, text) {
  const o = document.createElement("option");
  o.value = value; o.textContent = text; select.appendChild(o);
}

// --- the address bar: every view is a link ------------------------------------------------------------------
function writeHash() {
  const p = new URLSearchParams();
  for (const k of ["image", "layer", "map", "rule"]) if (state[k] !== null && state[k] !== undefined) p.set(k, state[k]);
  if (state.unit) p.set("unit", state.unit.join(","));
  const h = "#" + p.toString();
  if (location.hash !== h) history.replaceState(null, "", h);
}

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  state.image = p.get("image"); state.layer = p.get("layer");
  state.map = p.has("map") ? parseInt(p.get("map"), 10) : null;
  state.rule = p.get("rule") || "deconvnet";
  state.unit = p.has("unit") ? p.get("unit").split(",").map(Number) : null;
}

// --- choosing an image ----------------------------------------------------------------------------------------
async function loadPage(n) {
  if (!info.dataset) { $("browse").hidden = true; return; }
  const cls = $("browse-class").value;
  const d = await api(`/api/dataset?page=${n}` + (cls !== "" ? `&class=${cls}` : ""));
  page = d.page; pages = d.pages;
  $("pageinfo").textContent = `page ${page + 1} of ${pages}`;
  const box = $("thumbs"); box.replaceChildren();
  for (const it of d.items) {
    const b = document.createElement("button");
    b.type = "button"; b.className = "thumb"; b.dataset.key = it.key; b.title = `#${it.index}: ${it.label}`;
    const img = document.createElement("img"); img.src = `/api/thumb/${it.key}.png`; img.alt = it.label;
    b.appendChild(img); b.addEventListener("click", () => chooseImage(it.key));
    if (it.key === state.image) b.classList.add("current");
    box.appendChild(b);
  }
}

async function upload(file) {
  showError(null);
  try {
    const r = await api(`/api/upload?name=${encodeURIComponent(file.name)}`, { method: "POST", body: file });
    await chooseImage(r.key);
  } catch (e) { showError(e); }
}

async function chooseImage(key) {
  showError(null);
  try {
    const pred = await api(`/api/predict/${key}`);
    state.image = key;
    $("image").src = `/api/image/${key}.png`;
    paintReset();
    showIndexUnits();
    const ol = $("predictions"); ol.replaceChildren();
    for (const t of pred.top) {
      const li = document.createElement("li");
      li.textContent = `${t.name} ${(100 * t.p).toFixed(1)}%`;
      ol.appendChild(li);
    }
    for (const b of document.querySelectorAll("#thumbs button")) b.classList.toggle("current", b.dataset.key === key);
    await showLayer(state.layer || info.layers[info.layers.length - 1]);
  } catch (e) { showError(e); }
}

// --- one layer: the grid of its maps --------------------------------------------------------------------------
async function showLayer(layer) {
  if (!state.image) return;
  const meta = await api(`/api/layer/${state.image}/${encodeURIComponent(layer)}`);
  state.layer = layer; grid = meta;
  $("layer-name").textContent = `${layer} (${meta.channels} maps)`;
  for (const b of document.querySelectorAll("#layers button")) b.classList.toggle("current", b.dataset.layer === layer);
  await new Promise((resolve) => {
    const img = $("grid");
    img.onload = img.onerror = resolve;
    img.src = `/api/layer/${state.image}/${encodeURIComponent(layer)}.png`;
  });
  if (state.map !== null && state.map < meta.channels) await showMap(state.map, state.unit);
  else { state.map = null; writeHash(); }
}

function mapAt(event) {
  // the click's map and unit, from the grid's geometry (cells of `cell` px after `pad`, `scale` px a unit)
  const img = $("grid"), g = grid.grid;
  const sx = img.naturalWidth / img.clientWidth, sy = img.naturalHeight / img.clientHeight;
  const px = event.offsetX * sx - g.pad, py = event.offsetY * sy - g.pad;
  const col = Math.floor(px / g.cell[1]), row = Math.floor(py / g.cell[0]);
  if (col < 0 || row < 0 || col >= g.cols) return null;
  const m = row * g.cols + col;
  if (m >= grid.channels) return null;
  const y = Math.floor((py - row * g.cell[0]) / g.scale), x = Math.floor((px - col * g.cell[1]) / g.scale);
  const inside = y >= 0 && x >= 0 && y < g.map[0] && x < g.map[1];
  return { map: m, unit: inside ? [y, x] : null };
}

// --- one map: its projection, patch, atlas references --------------------------------------------------------
let mapSeq = 0;
async function showMap(m, unit) {
  const my = ++mapSeq;
  showError(null);
  const q = new URLSearchParams({ rule: state.rule });
  if (unit) { q.set("y", unit[0]); q.set("x", unit[1]); }
  try {
    const p = await api(`/api/project/${state.image}/${encodeURIComponent(state.layer)}/${m}?` + q);
    if (my !== mapSeq) return;  // a later click won
    state.map = m; state.unit = unit;
    clearEvidence();
    visJob = null; $("vis-image").hidden = true; $("vis-info").textContent = "";
    $("map-name").textContent = `${state.layer} #${m}`;
    $("projection").src = p.projection; $("field").src = p.field; $("patch").src = p.patch;
    $("unit-info").textContent = `unit (${p.unit[0]}, ${p.unit[1]}), activation ${p.activation.toFixed(3)}, ` +
      `receptive field rows ${p.box[0]}-${p.box[2]}, columns ${p.box[1]}-${p.box[3]} (${p.settings.rule})`;
    writeHash();
    showIndexTop(0);
    if (info.atlas) await showAtlas();
  } catch (e) { showError(e); }
}

// --- issue 36: the clicked unit's evidence, on demand (the server caches it) -----------------------------------
let evidenceSeq = 0;
function clearEvidence() {
  evidenceSeq++;
  $("evidence-table").hidden = true; $("evidence-causal-fig").hidden = true; $("evidence-info").textContent = "";
}
async function showEvidence() {
  if (state.map === null) return;
  const my = ++evidenceSeq;
  const q = new URLSearchParams();
  if (state.unit) { q.set("y", state.unit[0]); q.set("x", state.unit[1]); }
  $("evidence-info").textContent = "computing...";
  try {
    const e = await api(`/api/evidence/${state.image}/${encodeURIComponent(state.layer)}/${state.map}?` + q);
    if (my !== evidenceSeq) return;
    const t = $("evidence-table");
    t.replaceChildren();
    const cols = ["weight_ssim", "other_ssim", "edge_ssim", "agreement"];
    const head = document.createElement("tr");
    for (const h of ["rule", "weight SSIM", "other units SSIM", "edge SSIM", "causal agreement"]) {
      const th = document.createElement("th"); th.textContent = h; head.appendChild(th);
    }
    t.appendChild(head);
    for (const [rule, sc] of Object.entries(e.scores)) {
      const tr = document.createElement("tr");
      for (const v of [rule, ...cols.map((k) => sc[k] === null ? "-" : sc[k].toFixed(2))]) {
        const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
      }
      t.appendChild(tr);
    }
    t.hidden = false;
    $("evidence-causal-fig").hidden = !e.causal;
    if (e.causal) $("evidence-causal").src = e.causal;
    $("evidence-info").textContent = `unit (${e.unit[0]}, ${e.unit[1]}); causal maps: ${e.causal_strategy}` +
      Object.values(e.rule_substituted).map((d) => "; " + Object.values(d).join("; ")).join("");
  } catch (err) { if (my === evidenceSeq) $("evidence-info").textContent = String(err.message || err); }
}

async function showAtlas() {
  try {
    const a = await api(`/api/atlas/${encodeURIComponent(state.layer)}/${state.map}`);
    $("atlas").hidden = !a.sprite;
    if (a.sprite) $("atlas").src = a.sprite;
    $("atlas-info").textContent = a.top.map((t) => `${t.label ?? "#" + t.image} ${t.value.toFixed(2)}`).join(" · ");
    await showClassRefs();
  } catch (e) { $("atlas").hidden = true; $("atlas-info").textContent = String(e.message || e); }
}

let refsSeq = 0;  // answers to an earlier choice that arrive late are dropped
async function showClassRefs() {
  const my = ++refsSeq;
  const k = $("ref-class").value;
  if (k === "" || state.map === null) {
    $("class-refs").replaceChildren(); $("class-maps").replaceChildren();
    $("class-maps-info").textContent = ""; $("class-sheet").hidden = true;
    return;
  }
  try {
    const cls = encodeURIComponent(k);
    const a = await api(`/api/atlas/${encodeURIComponent(state.layer)}/${state.map}?cls=${cls}`);
    const c = await api(`/api/classmaps/${encodeURIComponent(state.layer)}?cls=${cls}`);
    if (my !== refsSeq) return;
    const refs = [];
    for (const t of a.class.top) {
      if (info.atlas.same_data) {  // the atlas's image numbers are this dataset's
        const img = document.createElement("img");
        img.src = `/api/thumb/d${t.image}.png`; img.alt = `#${t.image}`; img.title = `#${t.image}: ${t.value.toFixed(3)}`;
        refs.push(img);
      } else refs.push(document.createTextNode(`${t.id} ${t.value.toFixed(3)}  `));
    }
    $("class-refs").replaceChildren(...refs);
    $("class-maps-info").textContent = `the maps of ${state.layer} that fire most for ${c.class}:`;
    $("class-maps").replaceChildren(...c.maps.map((e) => {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = `#${e.map}`; b.addEventListener("click", () => showMap(e.map, null));
      return b;
    }));
    $("class-sheet").hidden = !c.sheet;
    if (c.sheet) $("class-sheet").src = c.sheet;
  } catch (e) { if (my === refsSeq) showError(e); }
}

// --- occlusion ------------------------------------------------------------------------------------------------
async function runOcclusion() {
  if (!state.image) return;
  showError(null);
  const q = new URLSearchParams();
  for (const [name, id] of [["class", "occ-class"], ["window", "occ-window"], ["stride", "occ-stride"]])
    if ($(id).value !== "") q.set(name, $(id).value);
  if (occJob) api(`/api/job/${occJob}`, { method: "DELETE" }).catch(() => {});  // the earlier run stops
  try {
    const { job } = await api(`/api/occlusion/${state.image}?` + q, { method: "POST" });
    occJob = job; $("occ-progress").value = 0; $("occ-info").textContent = "running...";
    while (occJob === job) {
      const s = await api(`/api/occlusion-job/${job}`);
      if (s.total) $("occ-progress").value = s.done / s.total;
      if (s.error) { showError(s.error); $("occ-info").textContent = ""; break; }
      if (s.result) {
        $("occ-progress").value = 1; $("occ-figure").src = s.result.figure; $("occ-figure").hidden = false;
        $("occ-info").textContent = `${s.result.computation}; ${s.result.seconds.toFixed(2)} s`;
        break;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  } catch (e) { showError(e); }
}

// --- issue 37: the map's optimized image, a job (the server keeps it once made) ---------------------------------
let visJob = null;
async function runVisualize() {
  if (state.map === null) return;
  const layer = state.layer, m = state.map, unit = state.unit;
  $("vis-info").textContent = "optimizing...";
  // a clicked unit: the image that excites that unit (the neuron objective); else the map's mean
  const q = unit ? `?y=${unit[0]}&x=${unit[1]}` : "";
  try {
    const { job } = await api(`/api/visualize/${encodeURIComponent(layer)}/${m}${q}`, { method: "POST" });
    visJob = job; $("vis-progress").value = 0;
    while (visJob === job) {
      const s = await api(`/api/job/${job}`);
      if (s.total) $("vis-progress").value = s.done / s.total;
      if (s.error) { $("vis-info").textContent = s.error; break; }
      if (s.result) {
        if (layer !== state.layer || m !== state.map) break;  // another map was clicked meanwhile
        $("vis-progress").value = 1; $("vis-image").src = s.result.image; $("vis-image").hidden = false;
        const what = s.result.unit ? `unit (${s.result.unit[0]}, ${s.result.unit[1]})` : "its mean";
        $("vis-info").textContent = `${layer} #${m}: ${what} ${s.result.value.toFixed(3)} after ${s.result.steps} steps (${s.result.arithmetic})`;
        break;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  } catch (e) { $("vis-info").textContent = String(e.message || e); }
}

// --- issue 38: paint to occlude --------------------------------------------------------------------------------
// The mask lives at the model's input size (white = painted); the visible canvas shows the strokes over the image.
// Each stroke's end sends the whole mask; the server replays only the rectangle the stroke changed.
const paint = { mask: null, down: false, history: [], seq: 0, key: null };
function paintReset() {
  const n = info.input[1];
  paint.mask = document.createElement("canvas"); paint.mask.width = n; paint.mask.height = n;
  const m = paint.mask.getContext("2d"); m.fillStyle = "#000"; m.fillRect(0, 0, n, n);
  const c = $("paint-canvas"); c.getContext("2d").clearRect(0, 0, c.width, c.height);
  paint.history = []; paint.key = state.image; drawHistory();
  $("paint-activity").hidden = true;
}
function paintAt(e) {
  const c = $("paint-canvas"), r = c.getBoundingClientRect();
  const u = (e.clientX - r.left) / r.width, v = (e.clientY - r.top) / r.height;
  const n = info.input[1], brush = Number($("paint-brush").value) * n / 224, erase = $("paint-erase").checked;
  const m = paint.mask.getContext("2d");
  m.fillStyle = erase ? "#000" : "#fff"; m.beginPath(); m.arc(u * n, v * n, brush / 2, 0, 2 * Math.PI); m.fill();
  const g = c.getContext("2d");
  g.globalCompositeOperation = erase ? "destination-out" : "source-over";
  g.fillStyle = "rgba(220, 40, 40, 0.45)";
  g.beginPath(); g.arc(u * c.width, v * c.height, brush / 2 * c.width / n, 0, 2 * Math.PI); g.fill();
}
function paintCover() { return document.querySelector("input[name=paint-cover]:checked").value; }
async function paintSend() {
  if (!state.image) return;
  const my = ++paint.seq;
  const blob = await new Promise((r) => paint.mask.toBlob(r, "image/png"));
  const q = new URLSearchParams();
  if ($("occ-class").value !== "") q.set("target", $("occ-class").value);
  if (state.layer) q.set("layer", state.layer);
  if (state.map !== null) q.set("map", state.map);
  if (paintCover() === "blur") q.set("blur", Math.max(1, info.input[1] / 28));
  try {
    const r = await api(`/api/paint/${state.image}?` + q, { method: "POST", body: blob });
    if (my !== paint.seq) return;  // a later stroke's answer will come
    paint.history.push(r.p); drawHistory();
    const best = r.top[0];
    $("paint-readout").textContent = `p(${r.target_name}) = ${r.p.toFixed(3)}; top: ${best.name} ` +
      `${(100 * best.p).toFixed(1)}%; ${r.activity.layer} #${r.activity.map} ${r.activity.value.toFixed(2)} ` +
      `at (${r.activity.position.join(", ")}) - ${r.strategy}, ${(1000 * r.seconds).toFixed(0)} ms`;
    $("paint-activity").src = r.activity_image; $("paint-activity").hidden = false;
  } catch (e) { $("paint-readout").textContent = String(e.message || e); }
}
function drawHistory() {
  const c = $("paint-history"), g = c.getContext("2d"), h = paint.history;
  g.clearRect(0, 0, c.width, c.height);
  if (!h.length) return;
  g.strokeStyle = "#36c"; g.lineWidth = 2; g.beginPath();
  h.forEach((p, i) => {
    const x = h.length === 1 ? c.width / 2 : 4 + i * (c.width - 8) / (h.length - 1), y = c.height - 3 - p * (c.height - 6);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  });
  g.stroke();
}
function paintSetup() {
  const c = $("paint-canvas");
  c.addEventListener("pointerdown", (e) => {
    if (!state.image) return;
    if (paint.key !== state.image) paintReset();
    paint.down = true; c.setPointerCapture(e.pointerId); paintAt(e);
  });
  c.addEventListener("pointermove", (e) => { if (paint.down) paintAt(e); });
  const end = () => { if (paint.down) { paint.down = false; paintSend(); } };
  c.addEventListener("pointerup", end); c.addEventListener("pointercancel", end);
  $("paint-clear").addEventListener("click", () => { if (state.image) { paintReset(); paintSend(); } });
}

// --- issue 39: the activation index: a unit's images over all of it, an image's units ---------------------------
let idxPage = 0;
async function showIndexTop(page) {
  if (!info.index || state.map === null || !info.index.layers.includes(state.layer)) {
    $("index-panel").hidden = true; return;
  }
  $("index-panel").hidden = false;
  const q = new URLSearchParams({ k: 12, page });
  if ($("idx-class").value !== "") q.set("class", $("idx-class").value);
  try {
    const r = await api(`/api/index/top/${encodeURIComponent(state.layer)}/${state.map}?` + q);
    idxPage = r.page; $("idx-page").textContent = `page ${r.page + 1}`;
    const box = $("idx-top"); box.replaceChildren();
    for (const row of r.rows) {
      const b = document.createElement("button");
      b.type = "button"; b.title = `${row.path}: ${row.value.toFixed(3)} at (${row.y}, ${row.x})`;
      if (row.key) {
        const img = document.createElement("img"); img.src = `/api/thumb/${row.key}.png`; img.alt = row.path;
        b.appendChild(img); b.addEventListener("click", () => chooseImage(row.key));
      }
      b.appendChild(document.createTextNode(row.value.toFixed(2)));
      box.appendChild(b);
    }
    if (!r.rows.length) box.textContent = "no image on this page";
  } catch (e) { showError(e); }
}
async function showIndexUnits() {
  if (!info.index || !state.image) return;
  const list = $("idx-units"); list.replaceChildren();
  try {
    const r = await api(`/api/index/units/${state.image}?k=3`);
    $("index-units").hidden = false;
    for (const row of r.rows) {
      const li = document.createElement("li");
      li.textContent = `${row.layer} #${row.unit}: ${row.value.toFixed(3)}`;
      li.addEventListener("click", async () => {
        if (info.layers.includes(row.layer)) { await showLayer(row.layer); await showMap(row.unit, null); }
      });
      list.appendChild(li);
    }
  } catch (e) { $("index-units").hidden = true; }
}

// --- start ----------------------------------------------------------------------------------------------------
async function start() {
  // issue 38: the token of the printed URL is now a cookie the server set (HttpOnly): out of the address bar
  if (new URLSearchParams(location.search).has("token")) history.replaceState(null, "", location.pathname + location.hash);
  readHash();  // before the controls are built: they show the linked view
  info = await api("/api/info");
  $("model").textContent = `${info.model} (${info.input.join("x")})`;
  for (const l of info.layers) {
    const b = document.createElement("button");
    b.type = "button"; b.dataset.layer = l; b.textContent = l;
    b.addEventListener("click", () => showLayer(l).catch(showError));
    $("layers").appendChild(b);
  }
  for (const m of info.rules) {
    const lab = document.createElement("label"), r = document.createElement("input");
    r.type = "radio"; r.name = "rule"; r.value = m; r.checked = m === state.rule;
    r.addEventListener("change", () => { state.rule = m; if (state.map !== null) showMap(state.map, state.unit); });
    lab.appendChild(r); lab.appendChild(document.createTextNode(" " + m + " ")); $("modes").appendChild(lab);
  }
  (info.classes || []).forEach((c, k) => option($("occ-class"), k, c));  // the model's classes: occlusion targets
  if (info.atlas) info.atlas.classes.forEach((c) => option($("ref-class"), c, c));  // the atlas data's classes
  if (info.dataset) (info.dataset.classes || []).forEach((c, k) => option($("browse-class"), k, c));
  $("atlas-panel").hidden = !info.atlas;
  $("occ-window").placeholder = info.occlusion.window;  // the server's default for this input (OcclusionSettings)
  $("occ-stride").placeholder = info.occlusion.stride;
  $("evidence-run").addEventListener("click", () => showEvidence());
  $("vis-run").addEventListener("click", () => runVisualize());
  paintSetup();
  if (info.index) {
    info.index.classes.forEach((c, k) => option($("idx-class"), k, c));
    $("idx-class").addEventListener("change", () => showIndexTop(0));
    $("idx-prev").addEventListener("click", () => showIndexTop(Math.max(0, idxPage - 1)));
    $("idx-next").addEventListener("click", () => showIndexTop(idxPage + 1));
  }
  $("prev").addEventListener("click", () => loadPage(Math.max(0, page - 1)).catch(showError));
  $("next").addEventListener("click", () => loadPage(Math.min(pages - 1, page + 1)).catch(showError));
  $("browse-class").addEventListener("change", () => loadPage(0).catch(showError));
  $("ref-class").addEventListener("change", showClassRefs);
  $("upload").addEventListener("change", (e) => { if (e.target.files[0]) upload(e.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]);
  });
  const g = $("grid");
  g.addEventListener("mousemove", (e) => {
    const at = grid && mapAt(e);
    $("grid-info").textContent = at ? `map ${at.map}, largest activation ${grid.maps[at.map][0]}` : "";
  });
  g.addEventListener("click", (e) => {
    const at = grid && mapAt(e);
    if (at) showMap(at.map, $("use-unit").checked ? at.unit : null);
  });
  $("occ-run").addEventListener("click", runOcclusion);
  document.addEventListener("keydown", (e) => {
    if (!state.image || !["ArrowUp", "ArrowDown"].includes(e.key) || e.target.tagName === "INPUT") return;
    e.preventDefault();
    const i = info.layers.indexOf(state.layer) + (e.key === "ArrowDown" ? 1 : -1);
    if (i >= 0 && i < info.layers.length) showLayer(info.layers[i]).catch(showError);
  });
  await loadPage(0).catch(showError);
  const first = state.image || (info.dataset ? "d0" : null);
  if (first) await chooseImage(first);
}

start().catch(showError);
