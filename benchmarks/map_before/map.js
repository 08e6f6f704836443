// fleetgate live map: vehicles coloured by status, zones, live updates over the SSE stream.
// The API key comes from #key=... in the URL (never sent to the server) or the form, and is
// kept in sessionStorage; every data call sends it as a Bearer token.
(function () {
  "use strict";
  const CONFIG = window.FLEETGATE_MAP || {};
  const COLOURS = { available: "#2e7d32", on_trip: "#1565c0", low_battery: "#f9a825",
                    offline: "#9e9e9e", immobilised: "#c62828" };
  const api = CONFIG.api_base || "";
  const vehicles = new Map();          // vehicle_ref -> latest known state, with or without a position
  const markers = new Map();           // vehicle_ref -> marker, for the vehicles with a position
  const state = {
    key: null, updates: 0, ready: false,
    // Read-only views for tests and curious operators.
    positions: () => Object.fromEntries([...markers].map(([ref, m]) => [ref, [m.getLatLng().lat, m.getLatLng().lng]])),
    statuses: () => Object.fromEntries([...markers.keys()].map((ref) => [ref, vehicles.get(ref).status])),
    zones: () => zoneLayer.getLayers().length,
    // Where a vehicle's marker is on the page (CSS pixels from the viewport's top left).
    pointOf: (ref) => {
      const p = map.latLngToContainerPoint(markers.get(ref).getLatLng());
      const box = map.getContainer().getBoundingClientRect();
      return [box.left + p.x, box.top + p.y];
    },
  };
  window.fleetgateMap = state;

  const map = L.map("map", { preferCanvas: true, zoomControl: true })
    .setView(CONFIG.center || [52.52, 13.40], CONFIG.zoom || 12);
  if (CONFIG.tiles_url) {  // optional: without tiles the map still shows zones and vehicles
    L.tileLayer(CONFIG.tiles_url, { attribution: CONFIG.attribution || "", maxZoom: 19 }).addTo(map);
  }
  const zoneLayer = L.layerGroup().addTo(map);
  const legend = document.getElementById("legend");
  legend.innerHTML = Object.entries(COLOURS)
    .map(([s, c]) => `<span><i style="background:${c}"></i>${s.replace("_", " ")}</span>`).join("");

  function keyFromPage() {
    const m = location.hash.match(/key=([^&]+)/);
    if (m) { sessionStorage.setItem("fleetgate-key", decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
    return sessionStorage.getItem("fleetgate-key");
  }

  async function call(path, options = {}) {
    const res = await fetch(api + path, { ...options, headers: { ...(options.headers || {}),
      Authorization: "Bearer " + state.key, "Content-Type": "application/json" } });
    if (res.status === 401) { askForKey("the key was refused"); throw new Error("unauthorised"); }
    return res;
  }

  function setConn(up, text) {
    const el = document.getElementById("conn");
    el.className = up ? "up" : "down"; el.textContent = text;
  }

  function askForKey(reason) {
    setConn(false, reason || "API key needed");
    const form = document.getElementById("keyform");
    form.hidden = false;
    form.onsubmit = (e) => { e.preventDefault(); sessionStorage.setItem("fleetgate-key", document.getElementById("key").value); form.hidden = true; start(); };
  }

  function popupHtml(v) {
    const rows = [["status", v.status], ["type", v.vehicle_type], ["charge", v.soc_pct == null ? "–" : v.soc_pct.toFixed(0) + " %"],
      ["range", v.range_m == null ? "–" : (v.range_m / 1000).toFixed(1) + " km"], ["speed", v.speed_kmh == null ? "–" : v.speed_kmh.toFixed(0) + " km/h"],
      ["locked", v.locked == null ? "–" : v.locked ? "yes" : "no"], ["zones", (v.zones || []).join(", ") || "–"], ["seen", v.time || "–"]];
    return `<div class="vehicle-popup" data-ref="${v.vehicle_ref}"><strong>${v.vehicle_ref}</strong><table>` +
      rows.map(([k, x]) => `<tr><td>${k}</td><td>${x}</td></tr>`).join("") + "</table>" +
      `<button data-cmd="unlock">Unlock</button><button data-cmd="lock">Lock</button><div class="result"></div></div>`;
  }

  function show(update) {
    const ref = update.vehicle_ref;
    const v = { ...vehicles.get(ref), ...update };
    vehicles.set(ref, v);
    if (v.lat == null || v.lon == null) return;  // registered, no fix yet: counted, not drawn
    const colour = COLOURS[v.status] || "#000";
    let marker = markers.get(ref);
    if (!marker) {
      // Added after the zones or not, a marker is drawn above them (zones go to the back).
      marker = L.circleMarker([v.lat, v.lon], { radius: 6, weight: 1, color: "#222", fillColor: colour, fillOpacity: 0.9 });
      marker.bindPopup(() => popupHtml(vehicles.get(ref)));
      marker.addTo(map);
      markers.set(ref, marker);
    } else {
      marker.setLatLng([v.lat, v.lon]);
      marker.setStyle({ fillColor: colour });
    }
  }

  function counts() {
    const unplaced = vehicles.size - markers.size;
    document.getElementById("counts").textContent = `${vehicles.size} vehicles` +
      (unplaced ? ` · ${unplaced} without a position yet` : "") + ` · ${state.updates} live updates`;
  }

  async function loadVehicles() {
    let url = "/v1/vehicles?limit=1000";
    while (url) {
      const page = await (await call(url)).json();
      page.items.forEach(show);
      url = page.next ? page.next.replace(/^https?:\/\/[^/]+/, "") : null;
    }
  }

  async function loadZones() {
    const zones = await (await call("/v1/zones")).json();
    zoneLayer.clearLayers();
    for (const z of zones.items) {
      const style = { color: z.kind === "no_ride" ? "#c62828" : z.kind === "slow" ? "#f9a825" : "#3949ab", weight: 1, fillOpacity: 0.08 };
      const layer = z.geometry.type === "Circle"
        ? L.circle([z.geometry.coordinates[1], z.geometry.coordinates[0]], { ...style, radius: z.geometry.radius_m })
        : L.geoJSON(z.geometry, { style });
      layer.bindTooltip(`${z.name || z.id} (${z.kind})`).addTo(zoneLayer);
      // The canvas hands a click to the topmost shape under it: a zone drawn over the markers
      // (its response came last) would take every click on the vehicles inside it.
      layer.bringToBack();
    }
  }

  async function follow() {
    // EventSource cannot send headers, so the stream is read with fetch.
    for (;;) {
      try {
        const res = await call("/v1/stream");
        setConn(true, "live");
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
            const name = (block.match(/^event: (.*)$/m) || [])[1];
            const data = (block.match(/^data: (.*)$/m) || [])[1];
            if (name === "positions" && data) { const list = JSON.parse(data); list.forEach(show); state.updates += list.length; counts(); }
          }
        }
      } catch (e) { if (String(e).includes("unauthorised")) return; }
      setConn(false, "reconnecting…");
      await new Promise((r) => setTimeout(r, 2000));
    }
  }

  function idempotencyKey() {
    // Not crypto.randomUUID: it exists only in secure contexts (HTTPS or localhost), and the
    // map is also opened over plain HTTP by host name inside an operator's network.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return "map-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function sendCommand(root, type) {
    const out = root.querySelector(".result");
    const buttons = root.querySelectorAll("button[data-cmd]");
    buttons.forEach((b) => { b.disabled = true; });  // one command per click, not one per double click
    out.textContent = type + "…";
    try {
      const res = await call(`/v1/vehicles/${encodeURIComponent(root.dataset.ref)}/commands?wait=10`, {
        method: "POST", headers: { "Idempotency-Key": idempotencyKey() },
        body: JSON.stringify({ type }) });
      const body = await res.json().catch(() => ({}));
      out.textContent = res.ok ? `${body.type}: ${body.state}`
        : `${type} refused: ${body.detail || body.title || "HTTP " + res.status}`;
    } catch (e) {
      out.textContent = `${type} failed: ${e.message || e}`;
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  map.on("popupopen", (e) => {
    const root = e.popup.getElement().querySelector(".vehicle-popup");
    root.querySelectorAll("button[data-cmd]").forEach((b) =>
      b.addEventListener("click", () => sendCommand(root, b.dataset.cmd)));
  });

  async function start() {
    state.key = keyFromPage();
    if (!state.key) return askForKey();
    try { await Promise.all([loadVehicles(), loadZones()]); counts(); follow(); state.ready = true; }
    catch (e) { if (!String(e).includes("unauthorised")) setConn(false, "API error: " + e); }
  }
  start();
})();
