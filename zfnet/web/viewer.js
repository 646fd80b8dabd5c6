// zfnet static atlas viewer. Reads window.ZFNET_ATLAS (atlas-data.js); works from file:// (no fetch).
// Every string from the data is inserted with textContent, never as HTML.
(function () {
  "use strict";
  var A = window.ZFNET_ATLAS;
  var state = { layer: null, channel: null, sort: "channel" };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function pad(n, w) { n = String(n); while (n.length < w) n = "0" + n; return n; }
  function spriteUrl(layer, channel) { return "maps/" + encodeURIComponent(layer) + "/" + pad(channel, 4) + ".png"; }
  function fired(info, channel) { return (info.maps[channel] || []).length; }  // entries: images it fired on
  function tile(layer, channel, info, row, col, size) {
    var d = el("div", "tile");
    var w = info.tile[1], h = info.tile[0], s = size ? size / Math.max(w, h) : 1;
    var cols = fired(info, channel);  // the sprite holds one column per entry (fewer than k: it fired on fewer)
    d.style.width = Math.round(w * s) + "px";
    d.style.height = Math.round(h * s) + "px";
    if (!cols) { d.classList.add("silent"); d.title = "never fired"; return d; }
    d.style.backgroundImage = "url(\"" + spriteUrl(layer, channel) + "\")";
    d.style.backgroundSize = Math.round(w * s * cols) + "px " + Math.round(h * s * 2) + "px";
    d.style.backgroundPosition = (-Math.round(col * w * s)) + "px " + (-Math.round(row * h * s)) + "px";
    return d;
  }

  // issue 36: the scores of `zfnet atlas --evidence`, the sort keys of the layer page
  var SCORES = [
    ["weight_ssim", "weight dependence: SSIM to the projection with every layer up to the map re-initialized", 1],
    ["other_ssim", "specificity: mean SSIM to other maps' projections at the same image and place", 1],
    ["edge_ssim", "SSIM to the image's edge map", 1],
    ["agreement", "causal agreement: rank correlation of projection and activation drop", -1]
  ];
  function scoresOf(layer, channel) {
    var e = A.evidence && A.evidence.layers && A.evidence.layers[layer];
    return e ? e[String(channel)] || null : null;
  }
  function fmt(v) { return v === null || v === undefined ? "-" : Number(v).toFixed(2); }
  function sortedMaps(name, shown) {
    var key = state.sort;
    if (!key || key === "channel") return shown;
    var dir = SCORES.filter(function (s) { return s[0] === key; })[0][2];
    return shown.slice().sort(function (a, b) {
      var sa = scoresOf(name, a), sb = scoresOf(name, b);
      var va = sa && sa[key] !== null ? sa[key] : null, vb = sb && sb[key] !== null ? sb[key] : null;
      if (va === null || vb === null) return (va === null) - (vb === null) || a - b;  // unscored last
      return dir * (va - vb) || a - b;
    });
  }
  function evidenceCard(layer, channel) {
    var sc = scoresOf(layer, channel);
    var card = el("div", "card evidence-card");
    card.id = "evidence";
    if (!sc) { card.appendChild(el("div", "caption", "no evidence: the map never fired")); return card; }
    if (sc.causal) {
      var img = el("img", "causal");
      img.src = sc.causal;
      img.alt = "causal map: the drop of the map's activation with the grey square at each place of its field";
      card.appendChild(img);
      card.appendChild(el("div", "caption", "causal map on its top-1 image: red, covering it lowers the map"));
    }
    var base = (A.evidence.summary[layer] || {})[A.evidence.rule] || {};
    var table = el("table", "scores");
    var head = el("tr");
    ["score", "this map", "layer median"].forEach(function (h) { head.appendChild(el("th", "", h)); });
    table.appendChild(head);
    SCORES.forEach(function (s) {
      var row = el("tr");
      row.title = s[1];
      row.appendChild(el("td", "", s[0].replace("_", " ")));
      row.appendChild(el("td", "", fmt(sc[s[0]])));
      row.appendChild(el("td", "", fmt(base[s[0]])));
      table.appendChild(row);
    });
    card.appendChild(table);
    card.appendChild(el("div", "caption", "weight: near 1 means the picture survives randomizing the weights " +
      "(it shows the image, not the map); other: near 1 means other maps draw the same picture"));
    return card;
  }

  function showTab(name) {
    document.querySelectorAll(".tab").forEach(function (b) { b.classList.toggle("active", b.dataset.tab === name); });
    document.querySelectorAll(".panel").forEach(function (p) { p.classList.toggle("active", p.id === name); });
  }

  function renderLayers() {
    var box = document.getElementById("layers");
    clear(box);
    A.layer_order.forEach(function (name) {
      var b = el("button", name === state.layer ? "active" : "", name);
      b.dataset.layer = name;
      b.addEventListener("click", function () { selectLayer(name); });
      box.appendChild(b);
    });
  }

  function selectLayer(name) {
    if (!A.layers[name]) return;
    state.layer = name;
    renderLayers();
    var info = A.layers[name];
    document.getElementById("layer-info").textContent =
      name + ": " + info.channels + " maps, feature maps " + info.shape.join("x") +
      (info.field ? ", receptive field " + info.field.join("x") + " px" : "") +
      ", top " + info.k + " over " + A.dataset.images + " images (fewer where a map fired on fewer)" +
      (info.projected ? "; " + info.projected.length + " of them projected (--max-maps)" : "");
    var grid = document.getElementById("maps");
    clear(grid);
    var shown = sortedMaps(name, info.projected || Array.from({length: info.channels}, function (_, i) { return i; }));
    var sortBox = document.getElementById("sort-box");
    sortBox.hidden = !(A.evidence && A.evidence.layers && A.evidence.layers[name]);
    shown.forEach(function (c) {
      var m = el("div", "map");
      m.dataset.channel = c;
      var th = tile(name, c, info, 0, 0, 76);
      th.classList.remove("tile");
      th.classList.add("thumb");
      m.appendChild(th);
      var top = info.maps[c][0], n = fired(info, c);
      m.appendChild(el("div", "", "#" + c + (top ? " " + top.value.toPrecision(3) : " never fired") +
        (n && n < info.k ? " (" + n + "/" + info.k + ")" : "") +
        (state.sort && state.sort !== "channel" && scoresOf(name, c) ? " \u00b7 " + fmt(scoresOf(name, c)[state.sort]) : "")));
      m.addEventListener("click", (function (ch) { return function () { openMap(ch); }; })(c));
      grid.appendChild(m);
    });
  }

  function step(by) {  // the next / previous map the viewer has
    var info = A.layers[state.layer];
    var shown = sortedMaps(state.layer, info.projected || Array.from({length: info.channels}, function (_, i) { return i; }));
    var at = state.channel === null ? -1 : shown.indexOf(state.channel);
    var next = shown[Math.min(shown.length - 1, Math.max(0, at + by))];
    if (next !== undefined) openMap(next);
  }

  function openMap(channel) {
    var info = A.layers[state.layer];
    if (channel < 0 || channel >= info.channels) return;
    if (info.projected && info.projected.indexOf(channel) < 0) return;
    state.channel = channel;
    document.querySelectorAll(".map").forEach(function (m) {
      m.classList.toggle("selected", Number(m.dataset.channel) === channel);
    });
    document.getElementById("detail-title").textContent = state.layer + " / map " + channel;
    var cards = document.getElementById("cards");
    clear(cards);
    if (info.filter) {  // layer 1: the filter itself (Fig. 2)
      var fc = el("div", "card filter-card");
      var ft = el("div", "tile filter"), fw = info.filter.tile[1], fh = info.filter.tile[0];
      var fs = 160 / Math.max(fw, fh);
      ft.style.width = Math.round(fw * fs) + "px";
      ft.style.height = Math.round(fh * fs) + "px";
      ft.style.backgroundImage = "url(\"" + info.filter.sprite + "\")";
      ft.style.backgroundSize = Math.round(fw * fs * info.channels) + "px " + Math.round(fh * fs) + "px";
      ft.style.backgroundPosition = (-Math.round(channel * fw * fs)) + "px 0px";
      fc.appendChild(ft);
      fc.appendChild(el("div", "caption", "filter " + channel));
      cards.appendChild(fc);
    }
    var vis = A.visualized && A.visualized[state.layer] && A.visualized[state.layer].maps[String(channel)];
    if (vis) {  // issue 37: the image optimized for the map (Olah et al. 2017), beside its top-k
      var vc = el("div", "card vis-card");
      vc.id = "visualized";
      var vimg = el("img", "optimized");
      vimg.src = vis.file;
      vimg.alt = "the image optimized to excite the map";
      vc.appendChild(vimg);
      var how = A.visualized[state.layer].arithmetic;
      vc.appendChild(el("div", "caption", "optimized for the map's mean: " + Number(vis.value).toPrecision(3) +
        (how ? " (steps in " + how + ")" : "")));
      cards.appendChild(vc);
    }
    if (A.evidence) cards.appendChild(evidenceCard(state.layer, channel));
    if (fired(info, channel) < info.k) {
      cards.appendChild(el("p", "caption fired", "map " + channel + " fired on " + fired(info, channel) + " of the " +
        A.dataset.images + " images (top " + info.k + " asked)"));
    }
    info.maps[channel].forEach(function (e, r) {
      var card = el("div", "card");
      card.appendChild(tile(state.layer, channel, info, 0, r, 160));
      card.appendChild(tile(state.layer, channel, info, 1, r, 160));
      var cap = el("div", "caption");
      cap.appendChild(el("div", "", "#" + (r + 1) + "  value " + e.value.toPrecision(4)));
      cap.appendChild(el("div", "", e.id));
      if (e.label !== null && e.label !== undefined) cap.appendChild(el("div", "", "class: " + e.label));
      if (e.y >= 0) cap.appendChild(el("div", "", "at (" + e.y + ", " + e.x + ")"));
      card.appendChild(cap);
      cards.appendChild(card);
    });
    document.getElementById("detail").hidden = false;
  }

  function closeMap() { document.getElementById("detail").hidden = true; state.channel = null; }

  function jump(text) {
    var parts = String(text).trim().split(/[\/:\s]+/);
    if (!A.layers[parts[0]]) return false;
    selectLayer(parts[0]);
    if (parts.length > 1 && parts[1] !== "") openMap(parseInt(parts[1], 10));
    return true;
  }

  function renderFilters() {
    var body = document.getElementById("filters-body");
    clear(body);
    if (!A.filters) { body.appendChild(el("p", "", "No filter analysis in this atlas.")); return; }
    var fig = el("div", "figure");
    var img = el("img");
    img.src = A.filters.figure;
    img.alt = "first-layer filters";
    fig.appendChild(img);
    body.appendChild(fig);
    A.filters.models.forEach(function (m) {
      body.appendChild(el("h3", "", m.title));
      var t = el("table");
      Object.keys(m.summary).forEach(function (k) {
        var v = m.summary[k];
        if (typeof v === "object") v = JSON.stringify(v);
        var tr = el("tr");
        tr.appendChild(el("th", "", k));
        tr.appendChild(el("td", "", v));
        t.appendChild(tr);
      });
      body.appendChild(t);
    });
  }

  function renderEvolution() {
    var body = document.getElementById("evolution-body");
    clear(body);
    if (!A.evolution) { body.appendChild(el("p", "", "No training snapshots were given (zfnet atlas --evolution RUN).")); return; }
    body.appendChild(el("p", "", "Columns: epochs " + A.evolution.epochs.join(", ") +
      ". Rows: randomly chosen maps; each cell projects that epoch's strongest activation over the training set."));
    Object.keys(A.evolution.figures).forEach(function (layer) {
      body.appendChild(el("h3", "", layer + " (maps " + A.evolution.channels[layer].join(", ") + ")"));
      var fig = el("div", "figure");
      var img = el("img");
      img.src = A.evolution.figures[layer];
      img.alt = "evolution of " + layer;
      fig.appendChild(img);
      body.appendChild(fig);
    });
  }

  function renderClasses() {  // per-class references (zfnet atlas --per-class K)
    var layers = A.layer_order.filter(function (l) { return A.layers[l].class_sheets; });
    if (!layers.length) return;
    document.getElementById("classes-tab").hidden = false;
    var cls = document.getElementById("class-select"), lay = document.getElementById("class-layer");
    Object.keys(A.layers[layers[0]].class_sheets).forEach(function (c) { var o = el("option", "", c); o.value = c; cls.appendChild(o); });
    layers.forEach(function (l) { var o = el("option", "", l); o.value = l; lay.appendChild(o); });
    function show() {
      var sheet = (A.layers[lay.value].class_sheets || {})[cls.value];
      var box = document.getElementById("class-maps");
      clear(box);
      var img = document.getElementById("class-sheet");
      if (!sheet) { img.hidden = true; box.appendChild(el("p", "", "No references for this class.")); return; }
      img.hidden = false;
      img.src = sheet.file;
      var projected = A.layers[lay.value].projected;
      sheet.maps.forEach(function (c) {
        var b = el("button", "", lay.value + " #" + c);
        if (projected && projected.indexOf(c) < 0) {  // its top-k were not drawn (--max-maps): no page to open
          b.disabled = true;
          b.title = "not projected in this atlas (zfnet atlas --max-maps)";
        } else b.addEventListener("click", function () { showTab("atlas"); selectLayer(lay.value); openMap(c); });
        box.appendChild(b);
      });
    }
    cls.addEventListener("change", show);
    lay.addEventListener("change", show);
    show();
  }

  function init() {
    if (!A) { document.body.appendChild(el("p", "", "atlas-data.js is missing.")); return; }
    document.getElementById("subtitle").textContent =
      A.model.name + " on " + A.dataset.spec + " (" + A.dataset.split + ", " + A.dataset.images + " images), " +
      "rule " + A.rule;
    var said = [];  // what the pictures rest on (issue 35): raw maps, the gradient where the rule does not apply
    Object.keys(A.feature_maps || {}).forEach(function (l) {
      var f = A.feature_maps[l];
      if (!f.rectified) said.push(l + ": unrectified (" + f.reads + ")");
      if (f.layout) said.push(l + ": " + f.layout);
    });
    Object.keys(A.rule_substituted || {}).forEach(function (l) { said.push(A.rule_substituted[l]); });
    if (A.from_index && A.from_index.note) said.push(A.from_index.note);  // issue 39: top-k read from an index
    if (said.length) {
      var note = el("p", "note", said.join("; "));
      note.id = "feature-notes";
      document.getElementById("subtitle").after(note);
    }
    document.getElementById("provenance").textContent = JSON.stringify(A.provenance, null, 1);
    document.querySelectorAll(".tab").forEach(function (b) {
      b.addEventListener("click", function () { showTab(b.dataset.tab); });
    });
    document.getElementById("close").addEventListener("click", closeMap);
    document.getElementById("jump").addEventListener("keydown", function (ev) {
      if (ev.key === "Enter") { jump(ev.target.value); ev.target.blur(); }
    });
    document.addEventListener("keydown", function (ev) {
      if (ev.target && ev.target.tagName === "INPUT") return;
      var order = A.layer_order, li = order.indexOf(state.layer);
      if (ev.key === "Escape") closeMap();
      else if (ev.key === "/") { ev.preventDefault(); document.getElementById("jump").focus(); }
      else if (ev.key === "ArrowRight") step(1);
      else if (ev.key === "ArrowLeft") step(-1);
      else if (ev.key === "ArrowDown" && li + 1 < order.length) { closeMap(); selectLayer(order[li + 1]); }
      else if (ev.key === "ArrowUp" && li > 0) { closeMap(); selectLayer(order[li - 1]); }
    });
    var sort = document.getElementById("sort");
    [["channel", "map number"]].concat(SCORES.map(function (s) { return [s[0], s[1]]; })).forEach(function (o) {
      var opt = el("option", "", o[1]);
      opt.value = o[0];
      sort.appendChild(opt);
    });
    sort.addEventListener("change", function () { state.sort = sort.value; selectLayer(state.layer); });
    renderFilters();
    renderEvolution();
    renderClasses();
    var fromHash = window.location.hash ? decodeURIComponent(window.location.hash.slice(1)) : "";
    if (!(fromHash && jump(fromHash))) selectLayer(A.layer_order[0]);
  }

  init();
})();
