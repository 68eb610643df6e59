// sctd3d report page: the per-asset table (sort, filter, pages) and the on-demand 3D viewers.
// Classic script, no network: everything it loads lies in the report folder (data/rows.js,
// viewer/viewer.js, a/<key>.js), inserted as <script> tags so it works from file:// as well as
// from a web server or object storage. Text from the manifest is only ever set via textContent.
(function () {
  "use strict";
  const CFG = window.SCTD3D_PAGE || {};
  const S = (window.SCTD3D = { ready: 0, errors: [], groups: [], state: null });

  // ---------------------------------------------------------------- script loading (file:// safe)
  const loaded = {};
  function loadScript(src) {
    if (!loaded[src]) {
      loaded[src] = new Promise((resolve, reject) => {
        const s = document.createElement("script");
        s.src = src;
        s.onload = () => resolve();
        s.onerror = () => reject(new Error("cannot load " + src));
        document.head.appendChild(s);
      });
    }
    return loaded[src];
  }
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(v) {
    if (v === null || v === undefined || (typeof v === "number" && !isFinite(v))) return "–";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v) && Math.abs(v) < 1e9) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a >= 1e4 || a < 1e-3) ? v.toPrecision(3) : v.toFixed(3);
  }

  // ---------------------------------------------------------------- 3D viewers
  // One loader per compact web format: swap or add one here (Spark reads ply, spz, splat, ksplat, sog).
  const LOADERS = {
    ply: (V, bytes) => new V.SplatMesh({ fileBytes: bytes, fileType: "ply" }),
    spz: (V, bytes) => new V.SplatMesh({ fileBytes: bytes, fileType: "spz" }),
  };
  function b64bytes(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  // A group of viewers shares one orbit angle: tonight and the baseline turn together.
  function openGroup(container, views) {
    const cam = CFG.camera;
    if (!cam) throw new Error("no camera in the page config");
    const group = { viewers: [], angle: 0, playing: true, speed: 0.5, id: S.groups.length, ready: 0, frames: 0 };
    S.groups.push(group);
    if (container.__sctd3dGroup) container.__sctd3dGroup.stopped = true; // reopened: the old viewers go
    container.__sctd3dGroup = group;
    container.textContent = "";
    const bar = el("div", { class: "vbar" });
    const btn = el("button", { type: "button", class: "vplay" }, "pause");
    btn.onclick = () => { group.playing = !group.playing; btn.textContent = group.playing ? "pause" : "orbit"; };
    bar.appendChild(btn);
    bar.appendChild(el("span", { class: "muted" }, " drag to turn · all views in this box turn together"));
    container.appendChild(bar);
    const row = el("div", { class: "vrow" });
    container.appendChild(row);
    const status = el("div", { class: "muted vstatus" }, "loading viewer…");
    container.appendChild(status);
    loadScript(CFG.viewer_js).then(() => {
      const V = window.SCTD3DViewer;
      const T = V.THREE;
      const c2w0 = new T.Matrix4().fromArray(cam.c2w).transpose(); // row-major in the page config
      const rot = new T.Matrix4();
      for (const v of views) {
        const box = el("div", { class: "vbox" });
        box.appendChild(el("div", { class: "muted" }, v.label));
        const canvas = el("canvas", { width: cam.size, height: cam.size, class: "viewer",
                                      "data-key": v.key, "data-role": v.role || "" });
        box.appendChild(canvas);
        row.appendChild(box);
        const renderer = new T.WebGLRenderer({ canvas, antialias: false, preserveDrawingBuffer: true });
        renderer.setPixelRatio(1);
        renderer.setSize(cam.size, cam.size, false);
        renderer.setClearColor(new T.Color(cam.background[0], cam.background[1], cam.background[2]), 1);
        const scene = new T.Scene();
        scene.add(new V.SparkRenderer({ renderer }));
        const camera = new T.PerspectiveCamera(cam.fovy_deg, 1, 0.01, 1000);
        const viewer = { renderer, scene, camera, canvas, ready: false, key: v.key };
        group.viewers.push(viewer);
        let drag = null;
        canvas.addEventListener("pointerdown", (e) => { drag = e.clientX; group.playing = false; btn.textContent = "orbit"; });
        window.addEventListener("pointerup", () => { drag = null; });
        canvas.addEventListener("pointermove", (e) => {
          if (drag !== null) { group.angle += (e.clientX - drag) * 0.01; drag = e.clientX; }
        });
        loadScript(v.src).then(() => {
          const b64 = (window.__sctd3dAssets || {})[v.key];
          if (!b64) throw new Error("asset data missing for " + v.key);
          const mesh = (LOADERS[v.format] || LOADERS.ply)(V, b64bytes(b64));
          scene.add(mesh);
          return mesh.initialized;
        }).then(() => {
          viewer.ready = true;
          group.ready++;
          S.ready++;
          canvas.setAttribute("data-ready", "1");
          if (group.ready === views.length) status.textContent = "";
        }).catch((e) => { S.errors.push(String(e)); status.textContent = "3D view failed: " + e; });
      }
      let last = performance.now();
      function frame(now) {
        if (group.stopped || !container.isConnected) { // closed, reopened or paged away: free the WebGL contexts (~16 per page)
          for (const vw of group.viewers) { vw.renderer.dispose(); vw.renderer.forceContextLoss(); }
          group.viewers.length = 0;
          group.stopped = true;
          return;
        }
        const dt = (now - last) / 1000;
        last = now;
        if (group.playing) group.angle += dt * group.speed;
        rot.makeRotationY(group.angle).multiply(c2w0);
        for (const vw of group.viewers) {
          rot.decompose(vw.camera.position, vw.camera.quaternion, vw.camera.scale);
          vw.renderer.render(vw.scene, vw.camera);
        }
        if (group.ready === views.length) group.frames++; // frames drawn with every asset loaded
        requestAnimationFrame(frame);
      }
      requestAnimationFrame(frame);
    }).catch((e) => {
      S.errors.push(String(e));
      status.textContent = CFG.viewer_js ? "3D viewer failed to load: " + e
        : "no 3D viewer in this report (run tools/report-viewer/setup.sh, i.e. make setup)";
    });
    return group;
  }
  S.openGroup = openGroup;
  S.setAngle = (gid, a) => { const g = S.groups[gid]; g.playing = false; g.angle = a; };

  // ---------------------------------------------------------------- training curves (meta.json)
  function drawCurves(canvas, curve) {
    const ctx = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height, pad = 24;
    ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, W, H);
    ctx.font = "10px sans-serif";
    const names = Object.keys(curve.terms || {});
    const colors = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b7791f", "#c53030", "#319795"];
    names.forEach((name, k) => {
      const ys = curve.terms[name], xs = curve.it;
      const fin = ys.filter((y) => isFinite(y));
      if (!fin.length) return;
      const lo = Math.min(...fin), hi = Math.max(...fin), span = hi - lo || 1;
      const xmax = Math.max(...xs) || 1;
      ctx.strokeStyle = colors[k % colors.length];
      ctx.beginPath();
      xs.forEach((x, i) => {
        const px = pad + (W - 2 * pad) * x / xmax, py = H - pad - (H - 2 * pad) * (ys[i] - lo) / span;
        if (i === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
      });
      ctx.stroke();
      ctx.fillStyle = ctx.strokeStyle;
      ctx.fillText(name + " " + fmt(fin[0]) + "→" + fmt(fin[fin.length - 1]), pad, 12 + 11 * k);
    });
    ctx.fillStyle = "#667";
    ctx.fillText("iteration (each term scaled to its own range)" + (curve.summary ? "; from meta.json term summaries" : ""), pad, H - 6);
  }

  // ---------------------------------------------------------------- the per-asset table
  function initTable() {
    const D = window.SCTD3D_ROWS;
    const host = document.getElementById("asset-table-host");
    if (!host) return;
    if (!D) { host.textContent = "per-asset data (data/rows.js) did not load"; return; }
    const idx = {};
    D.columns.forEach((c, i) => { idx[c.key] = i; });
    const cols = D.columns.filter((c) => !c.hidden); // shown columns (the last one holds the row's details)
    const rows = D.rows;
    const st = (S.state = { sortKey: null, asc: true, page: 0, filter: "", status: "", method: "",
                            order: rows.map((_, i) => i), view: null });
    const controls = el("div", { class: "controls" });
    const q = el("input", { type: "search", id: "asset-filter", placeholder: "filter prompts…" });
    const ss = el("select", { id: "asset-status" });
    ["", "done", "failed", "rejected"].forEach((s) => ss.appendChild(el("option", { value: s }, s || "any status")));
    const ms = el("select", { id: "asset-method" });
    ms.appendChild(el("option", { value: "" }, "any method"));
    [...new Set(rows.map((r) => r[idx.method]))].sort().forEach((m) => ms.appendChild(el("option", { value: m }, m)));
    const prev = el("button", { type: "button", id: "asset-prev" }, "‹ prev");
    const next = el("button", { type: "button", id: "asset-next" }, "next ›");
    const info = el("span", { id: "asset-page-info", class: "muted" });
    [q, ss, ms, prev, next, info].forEach((x) => controls.appendChild(x));
    host.appendChild(controls);
    const table = el("table", { id: "asset-table" });
    const thead = el("thead"), htr = el("tr");
    cols.forEach((c) => {
      const th = el("th", { "data-key": c.key, class: c.num ? "" : "l", title: c.title || "click to sort" }, c.label);
      th.onclick = () => { if (st.sortKey === c.key) st.asc = !st.asc; else { st.sortKey = c.key; st.asc = true; } st.page = 0; apply(); };
      htr.appendChild(th);
    });
    thead.appendChild(htr);
    table.appendChild(thead);
    const tbody = el("tbody");
    table.appendChild(tbody);
    host.appendChild(el("div", { class: "scroll" })).appendChild(table);
    q.oninput = () => { st.filter = q.value.toLowerCase(); st.page = 0; apply(); };
    ss.onchange = () => { st.status = ss.value; st.page = 0; apply(); };
    ms.onchange = () => { st.method = ms.value; st.page = 0; apply(); };
    prev.onclick = () => { if (st.page > 0) { st.page--; render(); } };
    next.onclick = () => { if ((st.page + 1) * D.page_rows < st.view.length) { st.page++; render(); } };

    function cmp(a, b) {
      const i = idx[st.sortKey];
      const x = rows[a][i], y = rows[b][i];
      const xn = x === null || x === undefined, yn = y === null || y === undefined;
      if (xn || yn) return xn && yn ? a - b : xn ? 1 : -1; // missing values last either way
      const r = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y));
      return (st.asc ? r : -r) || a - b;
    }
    function apply() {
      let v = st.order.filter((i) => {
        const r = rows[i];
        return (!st.filter || String(r[idx.prompt]).toLowerCase().includes(st.filter))
          && (!st.status || r[idx.status] === st.status) && (!st.method || r[idx.method] === st.method);
      });
      if (st.sortKey) v = v.slice().sort(cmp);
      st.view = v;
      htr.querySelectorAll("th").forEach((th) => {
        th.classList.toggle("sorted", th.getAttribute("data-key") === st.sortKey);
        th.setAttribute("aria-sort", th.getAttribute("data-key") === st.sortKey ? (st.asc ? "ascending" : "descending") : "none");
      });
      render();
    }
    function render() {
      tbody.textContent = "";
      const start = st.page * D.page_rows, end = Math.min(st.view.length, start + D.page_rows);
      for (let k = start; k < end; k++) {
        const r = rows[st.view[k]];
        const tr = el("tr", { "data-row": String(st.view[k]), class: "arow" + (r[idx.status] !== "done" ? " bad" : "") });
        cols.forEach((c) => {
          const v = r[idx[c.key]];
          const td = el("td", { class: c.num ? "" : "l" }, c.num ? fmt(v) : v);
          if (c.num && c.floor !== undefined && v !== null && v <= c.floor) td.classList.add("floor");
          if (c.delta && v !== null && v !== undefined) td.classList.add(v < 0 ? "neg" : "pos");
          tr.appendChild(td);
        });
        tr.onclick = () => toggleDetail(tr, r);
        tbody.appendChild(tr);
      }
      info.textContent = ` ${st.view.length ? start + 1 : 0}–${end} of ${st.view.length} assets` +
        (st.view.length < rows.length ? ` (filtered from ${rows.length})` : "") +
        (D.omitted ? `; ${D.omitted} more in ${D.csv}` : "");
    }
    function toggleDetail(tr, r) {
      const nxt = tr.nextSibling;
      if (nxt && nxt.classList && nxt.classList.contains("detail")) { nxt.remove(); return; }
      const det = el("tr", { class: "detail" });
      const td = el("td", { colspan: String(cols.length), class: "l" });
      det.appendChild(td);
      tr.after(det);
      const x = r[idx._extra] || {};
      const links = el("div", { class: "links" });
      for (const [label, href] of x.links || []) {
        const a = el("a", { href, target: "_blank", rel: "noopener" }, label);
        links.appendChild(a);
        links.appendChild(document.createTextNode(" · "));
      }
      td.appendChild(links);
      if (x.error) td.appendChild(el("div", { class: "err mono" }, x.error));
      const wrap = el("div", { class: "dwrap" });
      td.appendChild(wrap);
      if (x.views && x.views.length) {
        const vhost = el("div", { class: "vhost" });
        const b = el("button", { type: "button", class: "open3d" }, x.views.length > 1 ? "3D: tonight | baseline" : "3D view");
        b.onclick = () => openGroup(vhost, x.views);
        vhost.appendChild(b);
        wrap.appendChild(vhost);
      } else if (r[idx.status] === "done") {
        wrap.appendChild(el("div", { class: "muted" }, x.no_view || "no 3D view for this asset"));
      }
      if (x.video) {
        const vid = el("video", { src: x.video, controls: "", loop: "", muted: "", preload: "none", width: "256" });
        wrap.appendChild(vid);
      }
      if (x.curve) {
        const c = el("canvas", { width: "360", height: "170", class: "curve" });
        wrap.appendChild(c);
        drawCurves(c, x.curve);
      }
      if (x.record) {
        const d = el("details");
        d.appendChild(el("summary", {}, "manifest record"));
        d.appendChild(el("pre", { class: "mono" }, JSON.stringify(x.record, null, 1)));
        td.appendChild(d);
      }
    }
    apply();
  }

  // ---------------------------------------------------------------- side-by-side buttons on cards
  function initCards() {
    document.querySelectorAll("button[data-views]").forEach((b) => {
      b.onclick = () => {
        const host = document.getElementById(b.getAttribute("data-host"));
        openGroup(host, JSON.parse(b.getAttribute("data-views")));
      };
    });
  }

  function start() {
    const go = () => { initTable(); initCards(); S.tableReady = true; };
    if (CFG.rows_js) loadScript(CFG.rows_js).then(go, (e) => { S.errors.push(String(e)); go(); });
    else go();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
