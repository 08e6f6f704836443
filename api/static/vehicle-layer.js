// The vehicles of the live map on one canvas, redrawn at most once per animation frame.
//
// Leaflet's own markers (one DOM node or one canvas path object each, with their events) do not
// keep 10,000 vehicles updating every second smooth; here a vehicle is a row in a Map and a
// redraw projects and paints them all in a few milliseconds. Below `clusterBelowZoom` vehicles
// that fall into the same grid cell on screen are drawn as one cluster with its count and a
// ring of its statuses' shares. The canvas lies above the map's panes and takes no pointer
// events: the page asks hit() what is under the pointer, so that no zone can capture a click.
(function () {
  "use strict";
  const MAX_LAT = 85.0511287798;
  const TAU = Math.PI * 2;

  // Web Mercator world pixels at `scale` (256 · 2^zoom): the same numbers as map.project().
  function worldX(lon, scale) { return ((lon + 180) / 360) * scale; }
  function worldY(lat, scale) {
    const s = Math.sin((Math.max(-MAX_LAT, Math.min(MAX_LAT, lat)) * Math.PI) / 180);
    return (0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)) * scale;
  }

  L.VehicleLayer = L.Layer.extend({
    options: {
      radius: 6,
      cellPx: 44,             // cluster grid cell on screen
      clusterBelowZoom: 15,
      colours: {},
      fallbackColour: "#000",
      // Called at the start of each frame's redraw: the page applies what the stream brought.
      beforeDraw: null,
      visible: () => true,    // the page's filters
      selected: () => null,   // the selected vehicle's ref, drawn ringed and never clustered
    },

    initialize(vehicles, options) {
      L.setOptions(this, options);
      this._vehicles = vehicles;  // ref -> {lat, lon, status, ...}
      this._frame = 0;
      this._hits = { x: new Float32Array(1024), y: new Float32Array(1024), refs: [], n: 0 };
      this._clusters = [];
      this.stats = { draws: 0, lastDrawMs: 0, drawnVehicles: 0, drawnClusters: 0, lastDrawAt: 0 };
    },

    onAdd(map) {
      this._canvas = L.DomUtil.create("canvas", "fg-vehicles", map.getContainer());
      this._canvas.setAttribute("aria-hidden", "true");
      this._ctx = this._canvas.getContext("2d");
      map.on("move zoom resize viewreset moveend zoomend", this.redraw, this);
      // Leaflet animates a zoom with a CSS transform of its panes; this canvas is not one of
      // them, so it steps aside until the zoom ends rather than show vehicles in the wrong place.
      map.on("zoomanim", this._hide, this);
      map.on("zoomend", this._show, this);
      this.redraw();
    },

    onRemove(map) {
      map.off("move zoom resize viewreset moveend zoomend", this.redraw, this);
      map.off("zoomanim", this._hide, this);
      map.off("zoomend", this._show, this);
      if (this._frame) cancelAnimationFrame(this._frame);
      this._frame = 0;
      L.DomUtil.remove(this._canvas);
    },

    _hide() { this._canvas.style.visibility = "hidden"; },
    _show() { this._canvas.style.visibility = ""; this.redraw(); },

    // Ask for a redraw in the next animation frame; any number of calls make one redraw.
    redraw() {
      if (!this._frame && this._map) this._frame = requestAnimationFrame(() => this._draw());
      return this;
    },

    _resize() {
      const size = this._map.getSize();
      const ratio = window.devicePixelRatio || 1;
      const w = Math.round(size.x * ratio), h = Math.round(size.y * ratio);
      if (this._canvas.width !== w || this._canvas.height !== h) {
        this._canvas.width = w; this._canvas.height = h;
        this._canvas.style.width = size.x + "px"; this._canvas.style.height = size.y + "px";
      }
      this._ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      return size;
    },

    _draw() {
      this._frame = 0;
      const started = performance.now();
      if (this.options.beforeDraw) this.options.beforeDraw();
      const map = this._map;
      if (!map) return;
      const size = this._resize();
      const ctx = this._ctx;
      ctx.clearRect(0, 0, size.x, size.y);
      const zoom = map.getZoom();
      const scale = 256 * Math.pow(2, zoom);
      const origin = map.project(map.containerPointToLatLng([0, 0]), zoom);
      const clustering = zoom < this.options.clusterBelowZoom;
      const selectedRef = this.options.selected();
      const cell = this.options.cellPx;
      const margin = 24;
      const byColour = new Map();
      const cells = clustering ? new Map() : null;
      this._hits.n = 0;
      this._clusters = [];
      let selected = null;
      for (const v of this._vehicles.values()) {
        if (v.lat == null || v.lon == null || !this.options.visible(v)) continue;
        const wx = worldX(v.lon, scale), wy = worldY(v.lat, scale);
        const x = wx - origin.x, y = wy - origin.y;
        if (x < -margin || y < -margin || x > size.x + margin || y > size.y + margin) continue;
        if (v.vehicle_ref === selectedRef) { selected = [x, y, v]; continue; }
        if (clustering) {
          const key = Math.floor(wx / cell) * 4194304 + Math.floor(wy / cell);
          let c = cells.get(key);
          if (!c) { c = { n: 0, sx: 0, sy: 0, statuses: {}, first: v, x, y }; cells.set(key, c); }
          c.n += 1; c.sx += x; c.sy += y;
          c.statuses[v.status] = (c.statuses[v.status] || 0) + 1;
        } else {
          this._queue(byColour, v, x, y);
        }
      }
      let clusters = 0;
      if (clustering) {
        for (const c of cells.values()) {
          if (c.n === 1) this._queue(byColour, c.first, c.x, c.y);
          else { this._drawCluster(ctx, c); clusters += 1; }
        }
      }
      this._paint(ctx, byColour);
      if (selected) {
        const [x, y, v] = selected;
        this._queue(new Map(), v, x, y);  // a hit target like the others
        ctx.beginPath(); ctx.arc(x, y, this.options.radius + 5, 0, TAU);
        ctx.lineWidth = 3; ctx.strokeStyle = "#1565c0"; ctx.stroke();
        this._paint(ctx, new Map([[this._colour(v), [x, y]]]));
      }
      const now = performance.now();
      Object.assign(this.stats, {
        draws: this.stats.draws + 1, lastDrawMs: now - started, lastDrawAt: now,
        drawnVehicles: this._hits.n, drawnClusters: clusters,
      });
      this.fire("drawn", { at: now });
    },

    _colour(v) { return this.options.colours[v.status] || this.options.fallbackColour; },

    _queue(byColour, v, x, y) {
      const colour = this._colour(v);
      let list = byColour.get(colour);
      if (!list) { list = []; byColour.set(colour, list); }
      list.push(x, y);
      const hits = this._hits;
      if (hits.n === hits.x.length) {
        const grow = (a) => { const b = new Float32Array(a.length * 2); b.set(a); return b; };
        hits.x = grow(hits.x); hits.y = grow(hits.y);
      }
      hits.x[hits.n] = x; hits.y[hits.n] = y; hits.refs[hits.n] = v.vehicle_ref; hits.n += 1;
    },

    // One path per colour: a few fill() calls for thousands of vehicles.
    _paint(ctx, byColour) {
      const r = this.options.radius;
      ctx.lineWidth = 1; ctx.strokeStyle = "#222";
      for (const [colour, xy] of byColour) {
        ctx.beginPath();
        for (let i = 0; i < xy.length; i += 2) {
          ctx.moveTo(xy[i] + r, xy[i + 1]);
          ctx.arc(xy[i], xy[i + 1], r, 0, TAU);
        }
        ctx.fillStyle = colour; ctx.fill(); ctx.stroke();
      }
    },

    _drawCluster(ctx, c) {
      const x = c.sx / c.n, y = c.sy / c.n;
      const r = 11 + 4 * Math.log10(c.n);
      let angle = -Math.PI / 2;
      ctx.lineWidth = 5;
      for (const [status, n] of Object.entries(c.statuses)) {
        const sweep = (TAU * n) / c.n;
        ctx.beginPath(); ctx.arc(x, y, r, angle, angle + sweep);
        ctx.strokeStyle = this.options.colours[status] || this.options.fallbackColour; ctx.stroke();
        angle += sweep;
      }
      ctx.beginPath(); ctx.arc(x, y, r - 2.5, 0, TAU); ctx.fillStyle = "rgba(255,255,255,0.92)"; ctx.fill();
      ctx.fillStyle = "#1f2933"; ctx.font = "bold 11px system-ui, sans-serif";
      ctx.textAlign = "center"; ctx.textBaseline = "middle";
      ctx.fillText(String(c.n), x, y);
      this._clusters.push({ x, y, r, n: c.n, statuses: c.statuses });
    },

    // What is drawn under a container point: {ref} for a vehicle, {cluster} for a cluster, or null.
    hit(point, slop = 4) {
      const hits = this._hits;
      const reach = this.options.radius + slop;
      let best = -1, bestD = reach * reach;
      for (let i = 0; i < hits.n; i++) {
        const dx = hits.x[i] - point.x, dy = hits.y[i] - point.y;
        const d = dx * dx + dy * dy;
        if (d <= bestD) { bestD = d; best = i; }
      }
      if (best >= 0) return { ref: hits.refs[best] };
      for (const c of this._clusters) {
        if ((c.x - point.x) ** 2 + (c.y - point.y) ** 2 <= (c.r + 2) ** 2) return { cluster: c };
      }
      return null;
    },

    // Where a vehicle is drawn (container point), or null when it is not drawn on its own.
    drawnAt(ref) {
      const hits = this._hits;
      for (let i = 0; i < hits.n; i++) if (hits.refs[i] === ref) return L.point(hits.x[i], hits.y[i]);
      return null;
    },

    clusters() { return this._clusters.map((c) => ({ x: c.x, y: c.y, n: c.n })); },
  });
})();
