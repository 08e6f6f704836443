// fleetgate live map for dispatchers: every vehicle on one canvas (vehicle-layer.js), filters and
// search, zones by kind, a vehicle panel with the commands the key may send, track replay, and
// a live list of alarms and events. The API key comes from #key=... in the URL (never sent to
// the server) or the form, and is kept in sessionStorage; every data call sends it as a Bearer
// token. The view (position, filters, selection, base map) lives in the URL's query string, so
// a link can be shared (without the key).
(function () {
  "use strict";
  const CONFIG = window.FLEETGATE_MAP || {};
  const STATUSES = ["available", "on_trip", "low_battery", "offline", "immobilised"];
  const COLOURS = { available: "#2e7d32", on_trip: "#1565c0", low_battery: "#f9a825",
                    offline: "#9e9e9e", immobilised: "#c62828" };
  const ZONE_KINDS = {
    operating_area: { label: "operating area", color: "#3949ab", fillOpacity: 0.03, dashArray: "6 4" },
    no_parking: { label: "no parking", color: "#8e24aa", fillOpacity: 0.1 },
    slow: { label: "slow", color: "#f9a825", fillOpacity: 0.1 },
    no_ride: { label: "no ride", color: "#c62828", fillOpacity: 0.14 },
    station: { label: "station", color: "#00897b", fillOpacity: 0.2 },
    other: { label: "other", color: "#616e7c", fillOpacity: 0.06 },
  };
  // Commands the panel offers, with the scope they need; the guarded ones ask first.
  const COMMANDS = [
    { type: "unlock", label: "Unlock" }, { type: "lock", label: "Lock" },
    { type: "locate", label: "Locate" },
    { type: "immobilise", label: "Immobilise", confirm: true },
    { type: "mobilise", label: "Mobilise", confirm: true },
  ];
  // Events a dispatcher does not need to see by default ("also routine events" shows them);
  // every other type is listed, including types this page has never heard of (new alarms).
  const ROUTINE = new Set(["zone_enter", "zone_exit", "charging_start", "charging_end",
    "command_queued", "command_sent", "command_acknowledged", "command_succeeded",
    "command_cancelled", "vehicle.online"]);
  const WARNINGS = new Set(["left_operating_area", "speeding_in_zone", "ride_through_forbidden",
    "battery_low", "aux_battery_at_risk", "command_failed", "command_timed_out"]);
  const MAX_EVENTS = 300;         // kept for the list: a day-long tab must not grow
  const MAX_DELAY_SAMPLES = 2000;
  const api = CONFIG.api_base || "";
  const $ = (id) => document.getElementById(id);

  const vehicles = new Map();     // vehicle_ref -> latest known state, with or without a position
  const pending = new Map();      // vehicle_ref -> [newest update from the stream, received at]
  const byDevice = new Map();     // device_id -> vehicle_ref, for the search
  const events = [];              // newest last, at most MAX_EVENTS
  const zones = [];               // {row, layer}
  const commandsShown = new Map(); // command id -> {li, type} in the panel's recent list
  // The newest progress the stream brought per command id, kept for a while because the stream
  // can bring a command's progress before the POST that created it has answered (the command
  // runs while the answer is on its way); without it the panel would stay at the POST's state.
  const progressSeen = new Map(); // command id -> {to_state, reason, requested_by}
  const PROGRESS_REMEMBERED = 200;
  const url = new URLSearchParams(location.search);
  const filters = {
    type: url.get("type") || "",
    statuses: new Set((url.get("status") || "").split(",").filter((s) => STATUSES.includes(s))),
    socBelow: Number.isFinite(parseFloat(url.get("soc_below"))) ? parseFloat(url.get("soc_below")) : null,
    zone: url.get("zone") || "",
    online: url.get("online") || "",
  };
  const hiddenKinds = new Set((url.get("hide_zones") || "").split(",").filter(Boolean));
  const view = { selected: url.get("vehicle") || null, base: url.get("base") || "plain",
                 allEvents: url.get("events") === "all" };
  const delays = { sampleToDrawnMs: [], receivedToDrawnMs: [] };
  const state = {
    key: null, scopes: [], updates: 0, droppedEvents: 0, ready: false, countsDirty: true,
    delays, filters, view,
    // Read-only views for tests, the benchmark and curious operators.
    positions: () => Object.fromEntries([...vehicles.values()].filter((v) => v.lat != null)
      .map((v) => [v.vehicle_ref, [v.lat, v.lon]])),
    statuses: () => Object.fromEntries([...vehicles.values()].filter((v) => v.lat != null)
      .map((v) => [v.vehicle_ref, v.status])),
    zones: () => zones.length,
    shown: () => [...vehicles.values()].filter((v) => v.lat != null && visible(v)).map((v) => v.vehicle_ref),
    events: () => events.slice(),
    vehicle: (ref) => ({ ...vehicles.get(ref) }),
    // Where a vehicle is drawn on the page (CSS pixels from the viewport's top left), or null
    // when it is hidden or inside a cluster.
    pointOf: (ref) => {
      const p = layer.drawnAt(ref);
      if (!p) return null;
      const box = map.getContainer().getBoundingClientRect();
      return [box.left + p.x, box.top + p.y];
    },
    clusters: () => layer.clusters(),
    stats: () => ({ ...layer.stats, vehicles: vehicles.size }),
    baseLayer: () => baseLayer,
  };
  window.fleetgateMap = state;

  // --- the map and its base layers -----------------------------------------------------------

  const map = L.map("map", { zoomControl: true, keyboard: true, zoomSnap: 1, worldCopyJump: false })
    .setView([Number(url.get("lat")) || (CONFIG.center || [52.52, 13.40])[0],
              Number(url.get("lon")) || (CONFIG.center || [52.52, 13.40])[1]],
             Number(url.get("z")) || CONFIG.zoom || 12);
  map.createPane("zones").style.zIndex = 350;
  const zoneRenderer = L.svg({ pane: "zones" });
  state.leaflet = map;
  const trackLayer = L.layerGroup().addTo(map);

  const BASEMAPS = {
    plain: { label: "Plain (offline)", make: async () => null },
    tiles: { label: "Raster tiles", available: !!CONFIG.tiles_url,
             make: async () => L.tileLayer(CONFIG.tiles_url, { attribution: CONFIG.attribution || "", maxZoom: 19 }) },
    vector: { label: "Vector style", available: !!CONFIG.style_url, make: vectorBase },
  };
  let baseLayer = null;

  function loadOnce(tag, url) {
    // MapLibre (about 1 MB) is loaded only when its base map is chosen.
    const existing = document.querySelector(`[data-vendor="${url}"]`);
    if (existing) return existing.loaded;
    const el = document.createElement(tag);
    el.dataset.vendor = url;
    el.loaded = new Promise((resolve, reject) => { el.onload = resolve; el.onerror = () => reject(new Error("could not load " + url)); });
    if (tag === "link") { el.rel = "stylesheet"; el.href = url; } else { el.src = url; el.async = false; }
    document.head.appendChild(el);
    return el.loaded;
  }

  async function vectorBase() {
    const probe = document.createElement("canvas");
    if (!(probe.getContext("webgl2") || probe.getContext("webgl"))) throw new Error("this browser has no WebGL, which a vector style needs");
    await Promise.all([loadOnce("link", "vendor/maplibre/maplibre-gl.css"), loadOnce("script", "vendor/maplibre/maplibre-gl.js")]);
    await loadOnce("script", "vendor/maplibre/leaflet-maplibre-gl.js");
    return L.maplibreGL({ style: CONFIG.style_url, attribution: CONFIG.attribution || "", interactive: false });
  }

  async function setBase(name) {
    if (!BASEMAPS[name] || (name !== "plain" && !BASEMAPS[name].available)) name = "plain";
    const note = $("basemap-note");
    note.textContent = "";
    let next = null;
    try { next = await BASEMAPS[name].make(); }
    catch (e) { note.textContent = `${BASEMAPS[name].label}: ${e.message || e}`; name = "plain"; }
    if (baseLayer) map.removeLayer(baseLayer);
    baseLayer = next;
    if (baseLayer) baseLayer.addTo(map);
    view.base = name;
    const radio = document.querySelector(`#basemaps input[value="${name}"]`);
    if (radio) radio.checked = true;
    saveView();
  }

  function buildBasemapControls() {
    const box = $("basemaps");
    for (const [name, b] of Object.entries(BASEMAPS)) {
      const label = document.createElement("label");
      const off = name !== "plain" && !b.available;
      label.innerHTML = `<input type="radio" name="basemap" value="${name}"${off ? " disabled" : ""}> ${b.label}` +
        (off ? ` <small>(${name === "tiles" ? "FLEETGATE_MAP_TILES_URL" : "FLEETGATE_MAP_STYLE_URL"} not set)</small>` : "");
      label.querySelector("input").addEventListener("change", () => setBase(name));
      box.appendChild(label);
    }
    box.insertAdjacentHTML("beforeend", '<div id="basemap-note" role="status"></div>');
  }

  // --- vehicles: one canvas layer, updates applied once per animation frame ------------------

  function visible(v) {
    if (filters.type && v.vehicle_type !== filters.type) return false;
    if (filters.statuses.size && !filters.statuses.has(v.status)) return false;
    if (filters.socBelow != null && !(v.soc_pct != null && v.soc_pct < filters.socBelow)) return false;
    if (filters.zone && !(v.zones || []).includes(filters.zone)) return false;
    if (filters.online && String(!!v.online) !== filters.online) return false;
    return true;
  }

  const layer = new L.VehicleLayer(vehicles, {
    colours: COLOURS, visible, selected: () => view.selected, beforeDraw: applyPending,
  }).addTo(map);

  function remember(v) {
    const known = vehicles.get(v.vehicle_ref);
    const merged = known ? Object.assign(known, v) : { ...v };
    vehicles.set(v.vehicle_ref, merged);
    if (merged.device_id) byDevice.set(merged.device_id, merged.vehicle_ref);
    return merged;
  }

  function record(list, value) {
    list.push(value);  // trimmed now and then, not at every push
    if (list.length > 2 * MAX_DELAY_SAMPLES) list.splice(0, list.length - MAX_DELAY_SAMPLES);
  }

  // Everything the stream brought since the last frame, in one go (the layer calls this at the
  // start of its redraw, so what is applied is drawn in the same frame).
  function applyPending() {
    if (pending.size) {
      const now = Date.now(), perfNow = performance.now();
      let sampled = 0;
      for (const [update, receivedAt] of pending.values()) {
        remember(update);
        if (sampled < 50 && update.time) {  // a sample of each frame's delays, not all of them
          record(delays.sampleToDrawnMs, now - Date.parse(update.time));
          record(delays.receivedToDrawnMs, perfNow - receivedAt);
          sampled += 1;
        }
      }
      if (view.selected && pending.has(view.selected)) renderPanelState();
      pending.clear();
      state.countsDirty = true;
    }
    if (state.countsDirty) { state.countsDirty = false; renderCounts(); }
  }

  function renderCounts() {
    const perStatus = Object.fromEntries(STATUSES.map((s) => [s, 0]));
    let unplaced = 0, shown = 0;
    for (const v of vehicles.values()) {
      perStatus[v.status] = (perStatus[v.status] || 0) + 1;
      if (v.lat == null) unplaced += 1;
      else if (visible(v)) shown += 1;
    }
    $("counts").textContent = `${vehicles.size} vehicles` +
      (unplaced ? ` · ${unplaced} without a position yet` : "") + ` · ${state.updates} live updates`;
    for (const s of STATUSES) {
      const b = document.querySelector(`#status-counts button[data-status="${s}"] .n`);
      if (b) b.textContent = perStatus[s];
    }
    $("shown").textContent = `(${shown} shown)`;
  }

  function refilter() {
    state.countsDirty = true;
    layer.redraw();
    syncFilterControls();
    saveView();
  }

  // --- filters, search and the status counts ---------------------------------------------------

  function buildFilterControls() {
    const chips = $("status-counts"), boxes = $("f-status");
    for (const s of STATUSES) {
      const chip = document.createElement("button");
      chip.type = "button"; chip.dataset.status = s;
      chip.innerHTML = `<i style="background:${COLOURS[s]}"></i>${s.replace("_", " ")} <span class="n">0</span>`;
      chip.addEventListener("click", () => toggleStatus(s));
      chips.appendChild(chip);
      const label = document.createElement("label");
      label.innerHTML = `<input type="checkbox" value="${s}"><i style="background:${COLOURS[s]}"></i>${s.replace("_", " ")}`;
      label.querySelector("input").addEventListener("change", () => toggleStatus(s));
      boxes.appendChild(label);
    }
    $("f-type").addEventListener("change", (e) => { filters.type = e.target.value; refilter(); });
    $("f-soc").addEventListener("input", (e) => {
      const n = e.target.value === "" ? null : Number(e.target.value);
      filters.socBelow = Number.isFinite(n) ? n : null; refilter();
    });
    $("f-zone").addEventListener("change", (e) => { filters.zone = e.target.value; refilter(); });
    $("f-online").addEventListener("change", (e) => { filters.online = e.target.value; refilter(); });
    $("f-clear").addEventListener("click", () => {
      Object.assign(filters, { type: "", socBelow: null, zone: "", online: "" });
      filters.statuses.clear(); refilter();
    });
    $("all-events").checked = view.allEvents;
    $("all-events").addEventListener("change", (e) => { view.allEvents = e.target.checked; renderEvents(); saveView(); });
    syncFilterControls();
  }

  function toggleStatus(s) {
    if (filters.statuses.has(s)) filters.statuses.delete(s); else filters.statuses.add(s);
    refilter();
  }

  function syncFilterControls() {
    $("f-type").value = filters.type;
    // Not the field being typed in: "5." is no number yet, and must not be wiped.
    if (document.activeElement !== $("f-soc")) $("f-soc").value = filters.socBelow == null ? "" : filters.socBelow;
    $("f-zone").value = filters.zone;
    $("f-online").value = filters.online;
    for (const s of STATUSES) {
      document.querySelector(`#f-status input[value="${s}"]`).checked = filters.statuses.has(s);
      document.querySelector(`#status-counts button[data-status="${s}"]`)
        .setAttribute("aria-pressed", String(filters.statuses.has(s)));
    }
  }

  function setOptions(select, values, keep) {
    const first = select.options[0];
    select.replaceChildren(first, ...values.map(([value, text]) => new Option(text, value)));
    select.value = keep;
    if (select.value !== keep && keep) {  // a link naming what this fleet does not have (yet)
      select.appendChild(new Option(keep, keep)); select.value = keep;
    }
  }

  async function loadVehicleTypes() {
    // The registry of vehicle types (GBFS vehicle_types) where the API has it; else the types
    // the fleet's vehicles have.
    let types = null;
    try {
      const res = await call("/v1/vehicle-types");
      if (res.ok) {
        const body = await res.json();
        types = (Array.isArray(body) ? body : body.items || body.vehicle_types || [])
          .map((t) => [t.id || t.vehicle_type_id, t.name || t.id || t.vehicle_type_id]);
      }
    } catch (e) { if (String(e).includes("unauthorised")) throw e; }
    if (!types) types = [...new Set([...vehicles.values()].map((v) => v.vehicle_type))].sort().map((t) => [t, t]);
    setOptions($("f-type"), types, filters.type);
  }

  function findVehicle(text) {
    const q = text.trim();
    if (!q) return null;
    if (vehicles.has(q)) return q;
    if (byDevice.has(q)) return byDevice.get(q);
    const low = q.toLowerCase();
    const matches = [];
    for (const v of vehicles.values()) {
      if (v.vehicle_ref.toLowerCase().includes(low) || (v.device_id || "").toLowerCase().includes(low)) {
        matches.push(v.vehicle_ref);
        if (matches.length > 1) break;
      }
    }
    return matches.length === 1 ? matches[0] : null;
  }

  function buildSearch() {
    const input = $("q");
    input.addEventListener("input", () => {  // suggestions: a few matches, not 10,000 options
      const low = input.value.trim().toLowerCase();
      const options = [];
      if (low.length >= 2) {
        for (const v of vehicles.values()) {
          if (v.vehicle_ref.toLowerCase().includes(low)) options.push(v.vehicle_ref);
          else if ((v.device_id || "").toLowerCase().includes(low)) options.push(v.device_id);
          if (options.length >= 20) break;
        }
      }
      $("refs").replaceChildren(...options.map((o) => new Option(o)));
    });
    $("search").addEventListener("submit", (e) => {
      e.preventDefault();
      const ref = findVehicle(input.value);
      if (!ref) { $("search-msg").textContent = `no single vehicle matches “${input.value.trim()}”`; return; }
      $("search-msg").textContent = "";
      focusVehicle(ref);
    });
  }

  // Fly to a vehicle and open its panel; a filter that would hide it is cleared first, since the
  // dispatcher asked for that vehicle by name.
  function focusVehicle(ref) {
    const v = vehicles.get(ref);
    if (!v) return;
    if (!visible(v)) {
      Object.assign(filters, { type: "", socBelow: null, zone: "", online: "" });
      filters.statuses.clear(); refilter();
    }
    select(ref);
    if (v.lat != null) map.flyTo([v.lat, v.lon], Math.max(map.getZoom(), layer.options.clusterBelowZoom + 1), { duration: 0.8 });
    else $("p-result").textContent = "no position reported yet";
  }

  // --- the view in the URL ---------------------------------------------------------------------

  let saveTimer = 0;
  function saveView() {
    clearTimeout(saveTimer);
    saveTimer = setTimeout(() => {
      const c = map.getCenter();
      const p = new URLSearchParams({ lat: c.lat.toFixed(5), lon: c.lng.toFixed(5), z: String(map.getZoom()) });
      if (filters.type) p.set("type", filters.type);
      if (filters.statuses.size) p.set("status", [...filters.statuses].join(","));
      if (filters.socBelow != null) p.set("soc_below", String(filters.socBelow));
      if (filters.zone) p.set("zone", filters.zone);
      if (filters.online) p.set("online", filters.online);
      if (view.selected) p.set("vehicle", view.selected);
      if (view.base !== "plain") p.set("base", view.base);
      if (hiddenKinds.size) p.set("hide_zones", [...hiddenKinds].join(","));
      if (view.allEvents) p.set("events", "all");
      history.replaceState(null, "", location.pathname + "?" + p.toString());
    }, 250);
  }
  map.on("moveend", saveView);

  // --- the API and the key ---------------------------------------------------------------------

  function keyFromPage() {
    const m = location.hash.match(/key=([^&]+)/);
    if (m) {
      sessionStorage.setItem("fleetgate-key", decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    return sessionStorage.getItem("fleetgate-key");
  }

  async function call(path, options = {}) {
    const res = await fetch(api + path, { ...options, headers: { ...(options.headers || {}),
      Authorization: "Bearer " + state.key, "Content-Type": "application/json" } });
    if (res.status === 401) { askForKey("the key was refused"); throw new Error("unauthorised"); }
    return res;
  }

  function setConn(up, text) {
    const el = $("conn");
    el.className = up ? "up" : "down"; el.textContent = text;
  }

  function askForKey(reason) {
    setConn(false, reason || "API key needed");
    const form = $("keyform");
    form.hidden = false;
    form.onsubmit = (e) => { e.preventDefault(); sessionStorage.setItem("fleetgate-key", $("key").value); form.hidden = true; start(); };
  }

  function may(scope) { return state.scopes.includes(scope) || state.scopes.includes("admin"); }

  async function loadVehicles() {
    let path = "/v1/vehicles?limit=1000";
    while (path) {
      const page = await (await call(path)).json();
      page.items.forEach(remember);
      path = page.next ? page.next.replace(/^https?:\/\/[^/]+/, "") : null;
    }
    state.countsDirty = true;
    layer.redraw();
  }

  // --- zones: drawn by kind, rules on hover, never in the way of a click ---------------------

  function zoneShape(z) {
    const kind = ZONE_KINDS[z.kind] ? z.kind : "other";
    const style = { ...ZONE_KINDS[kind], weight: 1.5, interactive: false, renderer: zoneRenderer, pane: "zones" };
    delete style.label;
    return z.geometry.type === "Circle"
      ? L.circle([z.geometry.coordinates[1], z.geometry.coordinates[0]], { ...style, radius: z.geometry.radius_m })
      : L.geoJSON(z.geometry, { style: () => style, interactive: false, pane: "zones" });
  }

  async function loadZones() {
    const body = await (await call("/v1/zones")).json();
    for (const z of zones) map.removeLayer(z.layer);
    zones.length = 0;
    for (const row of body.items) {
      const entry = { row, kind: ZONE_KINDS[row.kind] ? row.kind : "other", layer: zoneShape(row) };
      zones.push(entry);
      if (!hiddenKinds.has(entry.kind)) entry.layer.addTo(map);
    }
    buildZoneKindControls();
    setOptions($("f-zone"), body.items.map((z) => [z.id, z.name ? `${z.name} (${z.id})` : z.id]), filters.zone);
  }

  function buildZoneKindControls() {
    const box = $("zone-kinds");
    box.querySelectorAll("label").forEach((l) => l.remove());
    const present = new Set(zones.map((z) => z.kind));
    for (const [kind, k] of Object.entries(ZONE_KINDS)) {
      if (!present.has(kind)) continue;
      const n = zones.filter((z) => z.kind === kind).length;
      const label = document.createElement("label");
      label.innerHTML = `<input type="checkbox" value="${kind}"${hiddenKinds.has(kind) ? "" : " checked"}>` +
        ` <span style="border-bottom:3px solid ${k.color}">${k.label}</span> (${n})`;
      label.querySelector("input").addEventListener("change", (e) => {
        if (e.target.checked) hiddenKinds.delete(kind); else hiddenKinds.add(kind);
        for (const z of zones) if (z.kind === kind) (e.target.checked ? z.layer.addTo(map) : map.removeLayer(z.layer));
        saveView();
      });
      box.appendChild(label);
    }
    if (!present.size) box.insertAdjacentHTML("beforeend", "<label>none defined</label>");
  }

  function insideRing(lon, lat, ring) {
    let inside = false;
    for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
      const [xi, yi] = ring[i], [xj, yj] = ring[j];
      if ((yi > lat) !== (yj > lat) && lon < ((xj - xi) * (lat - yi)) / (yj - yi) + xi) inside = !inside;
    }
    return inside;
  }

  function zoneContains(g, latlng) {
    const { lat, lng } = latlng;
    const polygon = (rings) => insideRing(lng, lat, rings[0]) && !rings.slice(1).some((h) => insideRing(lng, lat, h));
    if (g.type === "Circle") return map.distance(latlng, [g.coordinates[1], g.coordinates[0]]) <= g.radius_m;
    if (g.type === "Polygon") return polygon(g.coordinates);
    if (g.type === "MultiPolygon") return g.coordinates.some(polygon);
    return false;
  }

  function ruleText(rule) {
    const parts = [];
    if (rule.vehicle_type_ids) parts.push(`for ${rule.vehicle_type_ids.join(", ")}`);
    if (rule.ride_through_allowed === false) parts.push("no riding through");
    if (rule.ride_start_allowed === false) parts.push("no ride start");
    if (rule.ride_end_allowed === false) parts.push("no parking (ride end)");
    if (rule.maximum_speed_kph != null) parts.push(`max ${rule.maximum_speed_kph} km/h`);
    if (rule.station_parking) parts.push("park at stations");
    return parts.join(", ") || "no restriction";
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }

  function showZoneTip(e) {
    const tip = $("zone-tip");
    const under = zones.filter((z) => !hiddenKinds.has(z.kind) && zoneContains(z.row.geometry, e.latlng));
    if (!under.length) { tip.hidden = true; return; }
    tip.innerHTML = under.map((z) => `<div><strong>${escapeHtml(z.row.name || z.row.id)}</strong> · ${ZONE_KINDS[z.kind].label}` +
      `<ul>${(z.row.rules.length ? z.row.rules : [{}]).map((r) => `<li>${escapeHtml(ruleText(r))}</li>`).join("")}</ul></div>`).join("");
    tip.hidden = false;
    tip.style.left = e.originalEvent.clientX + 14 + "px";
    tip.style.top = e.originalEvent.clientY + 14 + "px";
  }

  let hoverFrame = 0, hoverEvent = null;
  map.on("mousemove", (e) => {
    hoverEvent = e;
    if (hoverFrame) return;
    hoverFrame = requestAnimationFrame(() => {
      hoverFrame = 0;
      const onVehicle = layer.hit(hoverEvent.containerPoint);
      map.getContainer().classList.toggle("fg-pointer", !!onVehicle);
      if (onVehicle) $("zone-tip").hidden = true; else showZoneTip(hoverEvent);
    });
  });
  map.on("mouseout", () => { $("zone-tip").hidden = true; });

  // A click goes to what is drawn on top: a vehicle, else a cluster (zoom into it).
  map.on("click", (e) => {
    const hit = layer.hit(e.containerPoint);
    if (!hit) return;
    if (hit.ref) select(hit.ref);
    else map.setView(map.containerPointToLatLng([hit.cluster.x, hit.cluster.y]), Math.min(map.getZoom() + 2, layer.options.clusterBelowZoom));
  });

  // --- the vehicle panel ------------------------------------------------------------------------

  const fmt = {
    pct: (x) => (x == null ? "–" : x.toFixed(0) + " %"),
    km: (m) => (m == null ? "–" : (m / 1000).toFixed(1) + " km"),
    v: (x) => (x == null ? "–" : x.toFixed(1) + " V"),
    yes: (b) => (b == null ? "–" : b ? "yes" : "no"),
    time: (t) => (t ? new Date(t).toLocaleTimeString([], { hour12: false }) : "–"),
    ago: (t) => {
      if (!t) return "never";
      const s = Math.round((Date.now() - Date.parse(t)) / 1000);
      return s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : new Date(t).toLocaleString();
    },
  };

  function select(ref) {
    const changed = view.selected !== ref;
    view.selected = ref;
    document.body.classList.add("panel-open");
    $("panel").hidden = false;
    map.invalidateSize({ pan: false });
    layer.redraw();
    saveView();
    if (changed) {
      $("p-result").textContent = "";
      commandsShown.clear();
      clearTrack();
    }
    if (changed || !$("t-from").value) setTrackDefaults();
    renderPanelState();
    renderCommandButtons();
    loadPanelDetails(ref);
  }

  function closePanel() {
    view.selected = null;
    document.body.classList.remove("panel-open");
    $("panel").hidden = true;
    clearTrack();
    map.invalidateSize({ pan: false });
    layer.redraw();
    saveView();
  }

  function renderPanelState() {
    const v = vehicles.get(view.selected);
    if (!v) return;
    $("p-title").textContent = v.vehicle_ref;
    const zonesText = (v.zones || []).map((id) => {
      const z = zones.find((x) => x.row.id === id);
      return z ? `${z.row.name || id} (${ZONE_KINDS[z.kind].label})` : id;
    }).join(", ") || "–";
    const rows = [
      ["status", (v.status || "–").replace("_", " ")], ["type", v.vehicle_type], ["device", v.device_id || "–"],
      ["presence", v.online ? "online" : "offline" + (v.last_seen ? `, last seen ${fmt.ago(v.last_seen)}` : "")],
      ["charge (SoC)", fmt.pct(v.soc_pct)], ["range", fmt.km(v.range_m)], ["state of health", fmt.pct(v.soh_pct)],
      ["12 V battery", fmt.v(v.aux_v) + (v.aux_hours_to_threshold != null ? ` (${v.aux_hours_to_threshold.toFixed(0)} h to threshold)` : "")],
      ["charging", fmt.yes(v.charging)], ["speed", v.speed_kmh == null ? "–" : v.speed_kmh.toFixed(0) + " km/h"],
      ["locked", fmt.yes(v.locked)], ["immobilised", fmt.yes(v.immobilised)], ["zones", zonesText],
      ["position", v.lat == null ? "none yet" : `${v.lat.toFixed(5)}, ${v.lon.toFixed(5)}`], ["last sample", fmt.ago(v.time)],
    ];
    $("p-state").replaceChildren(...rows.map(([k, x]) => {
      const tr = document.createElement("tr");
      tr.innerHTML = `<td>${k}</td><td>${escapeHtml(x)}</td>`;
      return tr;
    }));
  }

  function renderCommandButtons() {
    const box = $("p-commands");
    if (!may("commands:write")) {
      box.innerHTML = "<small>This key cannot send commands (it lacks the scope commands:write).</small>";
      return;
    }
    box.replaceChildren(...COMMANDS.map((c) => {
      const b = document.createElement("button");
      b.type = "button"; b.dataset.cmd = c.type; b.textContent = c.label;
      if (c.confirm) b.className = "danger";
      b.addEventListener("click", () => (c.confirm ? confirmCommand(c) : sendCommand(c.type)));
      return b;
    }));
  }

  function confirmCommand(c) {
    const v = vehicles.get(view.selected);
    const ref = view.selected;
    const dialog = $("confirm");
    $("confirm-text").textContent = `${c.label} ${ref}` + (v ? ` (${v.vehicle_type}, device ${v.device_id || "?"})` : "") + "?" +
      (c.type === "immobilise" ? " A moving vehicle is immobilised once it is safe (stopped)." : "");
    $("confirm-ok").textContent = `${c.label} ${ref}`;
    dialog.returnValue = "";
    dialog.onclose = () => { if (dialog.returnValue === "ok" && view.selected === ref) sendCommand(c.type); };
    dialog.showModal();
    $("confirm-cancel").focus();
  }

  function idempotencyKey() {
    // Not crypto.randomUUID: it exists only in secure contexts (HTTPS or localhost), and the
    // map is also opened over plain HTTP by host name inside an operator's network.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return "map-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function sendCommand(type) {
    const ref = view.selected;
    const out = $("p-result");
    const buttons = $("p-commands").querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });  // one command per click, not one per double click
    out.textContent = type + "…";
    try {
      // No wait: the answer comes at once (202) and the progress arrives on the stream.
      const res = await call(`/v1/vehicles/${encodeURIComponent(ref)}/commands`, {
        method: "POST", headers: { "Idempotency-Key": idempotencyKey() }, body: JSON.stringify({ type }) });
      const body = await res.json().catch(() => ({}));
      if (res.ok) {
        const shown = withProgress(body);
        out.dataset.command = body.id;
        out.textContent = `${shown.type}: ${shown.state}` + (shown.reason ? ` (${shown.reason})` : "");
        if (view.selected === ref) showCommand(shown, true);
      } else {
        out.textContent = `${type} refused: ${body.detail || body.title || "HTTP " + res.status}`;
      }
    } catch (e) {
      out.textContent = `${type} failed: ${e.message || e}`;
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  function showCommand(c, newest) {
    let entry = commandsShown.get(c.id);
    if (!entry) {
      const li = document.createElement("li");
      entry = { li, type: c.type, created: c.created_at };
      commandsShown.set(c.id, entry);
      const list = $("p-recent");
      list.querySelector(".none")?.remove();
      if (newest) list.prepend(li); else list.append(li);
      while (list.children.length > 10) list.lastElementChild.remove();
    }
    entry.li.dataset.command = c.id;
    entry.li.dataset.state = c.state;
    entry.li.textContent = `${fmt.time(entry.created)} ${entry.type}: ${c.state}` +
      (c.reason ? ` (${c.reason})` : "") + (c.requested_by ? ` · ${c.requested_by}` : "");
  }

  // A command as listed, or as the stream has seen it since if that is further along.
  const STATE_ORDER = { queued: 0, waiting_for_safe_state: 1, sent: 2, acknowledged: 3 };  // others: final
  function withProgress(c) {
    const later = progressSeen.get(c.id);
    const rank = (state) => STATE_ORDER[state] ?? 4;
    if (!later || rank(later.to_state) <= rank(c.state)) return c;
    return { ...c, state: later.to_state, reason: later.reason };
  }

  // A command's progress from the stream: `command_<state>` events carry its id.
  function commandProgress(ev) {
    const d = ev.detail || {};
    if (!d.command_id) return;
    progressSeen.delete(d.command_id);  // re-inserted: the Map's order is then oldest first
    progressSeen.set(d.command_id, { to_state: d.to_state, reason: d.reason, requested_by: d.requested_by });
    if (progressSeen.size > PROGRESS_REMEMBERED) progressSeen.delete(progressSeen.keys().next().value);
    const entry = commandsShown.get(d.command_id);
    if (entry) showCommand({ id: d.command_id, state: d.to_state, reason: d.reason, requested_by: d.requested_by }, false);
    const out = $("p-result");
    if (out.dataset.command === d.command_id) out.textContent = `${d.command_type}: ${d.to_state}` + (d.reason ? ` (${d.reason})` : "");
  }

  async function loadPanelDetails(ref) {
    const since = new Date(Date.now() - 2 * 3600e3).toISOString();
    const enc = encodeURIComponent(ref);
    try {
      const [detail, cmds, evs] = await Promise.all([
        call(`/v1/vehicles/${enc}`).then((r) => r.json()),
        call(`/v1/commands?vehicle=${enc}&limit=10`).then((r) => r.json()),
        call(`/v1/events?vehicle=${enc}&from=${encodeURIComponent(since)}&limit=1000`).then((r) => r.json()),
      ]);
      if (view.selected !== ref) return;  // another vehicle was picked meanwhile
      if (detail.vehicle_ref) { remember(detail); renderPanelState(); }
      // Commands sent from this panel while the list was on its way are newer than the list:
      // they stay (at the top), and the stream's progress is newer than the list's states.
      const listed = new Set((cmds.items || []).map((c) => c.id));
      const sentMeanwhile = [...commandsShown.entries()].filter(([id]) => !listed.has(id));
      $("p-recent").replaceChildren();
      commandsShown.clear();
      for (const c of (cmds.items || []).slice().reverse()) showCommand(withProgress(c), true);
      for (const [id, entry] of sentMeanwhile.reverse()) {
        commandsShown.set(id, entry);
        $("p-recent").prepend(entry.li);
      }
      if (!$("p-recent").children.length) $("p-recent").innerHTML = "<li class=\"none\">none</li>";
      $("p-events").replaceChildren();
      for (const ev of (evs.items || []).slice(-10)) panelEvent(ev);
      if (!$("p-events").children.length) $("p-events").innerHTML = "<li class=\"none\">none in the last 2 hours</li>";
    } catch (e) {
      if (!String(e).includes("unauthorised")) $("p-result").textContent = "could not load the vehicle: " + e;
    }
  }

  function panelEvent(ev) {
    const list = $("p-events");
    list.querySelector(".none")?.remove();
    const li = document.createElement("li");
    li.textContent = `${fmt.time(ev.time)} ${ev.type}` + eventSummary(ev);
    list.prepend(li);
    while (list.children.length > 10) list.lastElementChild.remove();
  }

  // --- track replay -----------------------------------------------------------------------------

  let replay = null;  // {points, line, marker, timer}

  function localInput(date) {  // a datetime-local input's value for a Date, in local time
    const off = date.getTimezoneOffset() * 60000;
    return new Date(date.getTime() - off).toISOString().slice(0, 19);
  }

  function setTrackDefaults() {
    const now = new Date();
    $("t-to").value = localInput(now);
    $("t-from").value = localInput(new Date(now.getTime() - 3600e3));
  }

  function clearTrack() {
    if (replay && replay.timer) clearInterval(replay.timer);
    replay = null;
    trackLayer.clearLayers();
    $("replay").hidden = true;
    $("t-play").textContent = "Play";
  }

  async function loadTrack(e) {
    e.preventDefault();
    const ref = view.selected;
    const from = new Date($("t-from").value), to = new Date($("t-to").value);
    if (!(from < to)) { $("t-at").textContent = "the window must start before it ends"; $("replay").hidden = false; return; }
    const bucket = $("t-bucket").value;
    const q = new URLSearchParams({ from: from.toISOString(), to: to.toISOString(), bucket });
    if (bucket === "raw") q.set("include_implausible", "true");
    const res = await call(`/v1/vehicles/${encodeURIComponent(ref)}/track?${q}`);
    const body = await res.json();
    clearTrack();
    $("replay").hidden = false;
    if (!res.ok) { $("t-at").textContent = body.detail || "HTTP " + res.status; return; }
    const points = body.points.filter((p) => p.lat != null);
    if (!points.length) { $("t-at").textContent = "no positions in this window"; return; }
    // A raw implausible fix is a jump the gateway refused to believe: shown as such, left out of
    // the line. A bucket's point is plausible but says how many implausible fixes it hid.
    const rawJump = (p) => bucket === "raw" && p.implausible > 0;
    const line = L.polyline(points.filter((p) => !rawJump(p)).map((p) => [p.lat, p.lon]),
      { color: "#1565c0", weight: 3, opacity: 0.8, interactive: false }).addTo(trackLayer);
    let flagged = 0;
    for (const p of points) {
      if (!(p.implausible > 0)) continue;
      flagged += 1;
      L.circleMarker([p.lat, p.lon], { radius: 7, color: "#c62828", weight: 2, dashArray: "3 2",
        fill: rawJump(p), fillColor: "#c62828", fillOpacity: 0.3, interactive: false, className: "implausible" })
        .addTo(trackLayer);
    }
    const marker = L.circleMarker([points[0].lat, points[0].lon], { radius: 8, color: "#0d47a1", weight: 3,
      fillColor: "#fff", fillOpacity: 1, interactive: false }).addTo(trackLayer);
    replay = { points, line, marker, timer: 0, flagged, truncated: body.truncated };
    const slider = $("t-slider");
    slider.max = String(points.length - 1); slider.value = "0";
    showReplayAt(0);
    map.fitBounds(line.getBounds().pad(0.2), { maxZoom: 17 });
  }

  function showReplayAt(i) {
    if (!replay) return;
    const p = replay.points[i];
    replay.marker.setLatLng([p.lat, p.lon]);
    $("t-at").textContent = `${new Date(p.t).toLocaleString([], { hour12: false })} · ${p.speed_kmh == null ? "–" : p.speed_kmh.toFixed(0) + " km/h"}` +
      ` · ${fmt.pct(p.soc_pct)}` + (p.implausible > 0 ? ` · implausible fix${p.implausible > 1 ? "es: " + p.implausible : ""}` : "") +
      ` · point ${i + 1} of ${replay.points.length}` + (replay.flagged ? ` · ${replay.flagged} marked implausible` : "") +
      (replay.truncated ? " · truncated: pick a shorter window or coarser points" : "");
  }

  function buildTrackControls() {
    $("track-form").addEventListener("submit", (e) => loadTrack(e).catch((err) => { $("t-at").textContent = String(err); }));
    $("t-slider").addEventListener("input", (e) => showReplayAt(Number(e.target.value)));
    $("t-clear").addEventListener("click", clearTrack);
    $("t-play").addEventListener("click", () => {
      if (!replay) return;
      const slider = $("t-slider");
      if (replay.timer) { clearInterval(replay.timer); replay.timer = 0; $("t-play").textContent = "Play"; return; }
      if (Number(slider.value) >= replay.points.length - 1) slider.value = "0";
      $("t-play").textContent = "Pause";
      replay.timer = setInterval(() => {
        const next = Number(slider.value) + 1;
        if (next >= replay.points.length) { clearInterval(replay.timer); replay.timer = 0; $("t-play").textContent = "Play"; return; }
        slider.value = String(next); showReplayAt(next);
      }, 150);
    });
    $("p-close").addEventListener("click", closePanel);
  }

  // --- alarms and events ------------------------------------------------------------------------

  function severity(ev) {
    const t = ev.type || "";
    if (t.startsWith("alarm.") || t.startsWith("alarm_") || ["tamper", "crash", "theft"].includes(t)) return "alarm";
    if (WARNINGS.has(t) || t.endsWith("offline")) return "warning";
    if (ROUTINE.has(t) || (ev.source === "command" && !WARNINGS.has(t))) return "routine";
    return "notice";  // a type this page does not know: shown, not hidden
  }

  function eventSummary(ev) {
    const d = ev.detail || {};
    if (d.command_type) return ` · ${d.command_type}${d.reason ? " (" + d.reason + ")" : ""}`;
    if (d.zone || d.zones) return ` · ${[].concat(d.zone || d.zones).join(", ")}`;
    if (d.soc_pct != null) return ` · ${Number(d.soc_pct).toFixed(0)} %`;
    return "";
  }

  function addEvent(ev, live) {
    events.push(ev);
    if (events.length > MAX_EVENTS) events.splice(0, events.length - MAX_EVENTS);
    if (live) {
      if (ev.source === "command") commandProgress(ev);
      if (ev.vehicle_ref === view.selected) panelEvent(ev);
    }
  }

  let eventsFrame = 0;
  function renderEventsSoon() { if (!eventsFrame) eventsFrame = requestAnimationFrame(() => { eventsFrame = 0; renderEvents(); }); }

  function renderEvents() {
    const list = $("alarm-list");
    const shown = [];
    for (let i = events.length - 1; i >= 0 && shown.length < 100; i--) {
      const ev = events[i], sev = severity(ev);
      if (sev === "routine" && !view.allEvents) continue;
      const li = document.createElement("li");
      li.className = sev; li.dataset.type = ev.type; li.dataset.ref = ev.vehicle_ref;
      const b = document.createElement("button");
      b.type = "button";
      b.innerHTML = `<time>${escapeHtml(fmt.time(ev.time))}</time><strong>${escapeHtml(ev.vehicle_ref)}</strong> ${escapeHtml(ev.type)}${escapeHtml(eventSummary(ev))}`;
      b.addEventListener("click", () => focusVehicle(ev.vehicle_ref));
      li.appendChild(b);
      shown.push(li);
    }
    list.replaceChildren(...shown);
  }

  async function loadRecentEvents() {
    const since = new Date(Date.now() - 30 * 60e3).toISOString();
    const body = await (await call(`/v1/events?from=${encodeURIComponent(since)}&limit=1000`)).json();
    for (const ev of (body.items || []).slice(-MAX_EVENTS)) addEvent(ev, false);
    renderEvents();
  }

  // --- the stream -------------------------------------------------------------------------------

  function onMessage(name, data) {
    if (name === "positions") {
      const list = JSON.parse(data);
      const at = performance.now();
      for (const u of list) pending.set(u.vehicle_ref, [u, at]);
      state.updates += list.length;
      layer.redraw();
    } else if (name === "event") {
      addEvent(JSON.parse(data), true);
      renderEventsSoon();
    } else if (name === "dropped") {
      // The server dropped events this reader was too slow for: the list is not complete.
      state.droppedEvents += JSON.parse(data).events || 0;
      setConn(true, `live · ${state.droppedEvents} events missed (slow connection)`);
    }
  }

  async function follow() {
    // EventSource cannot send headers, so the stream is read with fetch.
    for (let attempt = 0; ; attempt++) {
      try {
        const res = await call("/v1/stream");
        setConn(true, "live");
        if (attempt > 0) loadVehicles().catch(() => {});  // what changed while disconnected
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
            if (name && data) onMessage(name, data);
          }
        }
      } catch (e) { if (String(e).includes("unauthorised")) return; }
      setConn(false, "reconnecting…");
      await new Promise((r) => setTimeout(r, 2000));
    }
  }

  // --- start ------------------------------------------------------------------------------------

  buildBasemapControls();
  buildFilterControls();
  buildSearch();
  buildTrackControls();
  setBase(view.base);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("panel").hidden && !$("confirm").open) closePanel();
  });

  async function start() {
    state.key = keyFromPage();
    if (!state.key) return askForKey();
    try {
      const me = await (await call("/v1/key")).json();
      state.scopes = me.scopes || [];
      await Promise.all([loadVehicles(), loadZones(), loadRecentEvents()]);
      await loadVehicleTypes();
      state.countsDirty = true;
      layer.redraw();
      follow();
      if (view.selected && vehicles.has(view.selected)) select(view.selected);
      else view.selected = null;
      state.ready = true;
    } catch (e) {
      if (!String(e).includes("unauthorised")) setConn(false, "API error: " + e);
    }
  }
  start();
})();
