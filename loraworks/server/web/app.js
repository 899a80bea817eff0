// loraworks web UI: plain JS over the HTTP API (/docs). No framework, nothing fetched from
// outside this server.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const $ = (sel) => document.querySelector(sel);

const state = {
  settings: null,
  mains: [],        // main model records
  loras: [],        // LoRA records
  embeddings: [],   // textual-inversion embedding records
  stack: [],        // [{key, name, weight (null: sent without, the preset's or default), used,
                    //   fewstep, fewstep_steps}]
  galleryOffset: 0,
  images: new Map(), // id -> gallery item (with recipe)
  selected: null,   // selected image id
  current: null,    // queue item id being followed
  events: null,     // its EventSource
};

// --- API helpers --------------------------------------------------------------------------

function withToken(url) {
  if (!TOKEN) return url;
  return url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN);
}

async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  if (TOKEN) headers.Authorization = "Bearer " + TOKEN;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function notice(message, ok = false) {
  const box = $("#notice");
  box.textContent = message;
  box.classList.toggle("ok", ok);
  box.hidden = !message;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

// the hash A1111 and Civitai show for it: a LoRA's AutoV3, other files' AutoV2 (none: folders)
const shortHash = (m) => {
  const kind = m.type === "lora" ? "AutoV3" : "AutoV2";
  return m.hashes && m.hashes[kind] ? `${kind} ${m.hashes[kind]}` : "";
};

const BASE_LABEL = { sd1: "SD1", sd2: "SD2", sdxl: "SDXL" };
const baseLabel = (base) => BASE_LABEL[base] || base || "unknown base";
const fitsLabel = (m) => m.compatible_bases.map(baseLabel).join(", ") || "no known base";
// the key family and, for a LoRA, its layer kinds: "kohya (loha ×120)"
const formatLabel = (m) => {
  const kinds = Object.entries(m.layer_kinds || {}).map(([kind, n]) => `${kind} ×${n}`).join(", ");
  return kinds ? `${m.format} (${kinds})` : m.format;
};

// --- models and settings ------------------------------------------------------------------

async function loadSettings() {
  state.settings = await api("/api/settings");
  const gen = state.settings.generation;
  const select = $("#scheduler");
  select.replaceChildren(el("option", { value: "" }, `default (${gen.scheduler})`));
  for (const name of state.settings.schedulers) select.append(el("option", { value: name }, name));
  $("#spacing").replaceChildren(el("option", { value: "" }, "preset / model's own"),
    ...state.settings.spacings.map((name) => el("option", { value: name }, name)));
  $("#width").placeholder = gen.width || "native";
  $("#height").placeholder = gen.height || "native";
  $("#steps").placeholder = gen.steps;
  $("#cfg").placeholder = gen.cfg;
  $("#compute").textContent = `runs on ${state.settings.compute}`;
}

async function loadModels() {
  const all = await api("/api/models");
  state.mains = all.filter((m) => m.type === "main");
  state.loras = all.filter((m) => m.type === "lora");
  state.embeddings = all.filter((m) => m.type === "embedding");
  const select = $("#model");
  const previous = select.value;
  select.replaceChildren(
    ...state.mains.map((m) =>
      el("option", { value: m.key, disabled: m.status !== "ok" },
         `${m.name} (${baseLabel(m.base)})${m.status === "ok" ? "" : " — " + m.status}`)),
  );
  if (!state.mains.length) select.append(el("option", { value: "" }, "no main model installed"));
  if (state.mains.some((m) => m.key === previous)) select.value = previous;
  renderCards();
  renderEmbeddingCards();
  renderStack();
  renderModelsTable(all);
}

const currentModel = () => state.mains.find((m) => m.key === $("#model").value);

function incompatibility(lora) {
  const model = currentModel();
  if (lora.status !== "ok") return lora.error || `file is ${lora.status}`;
  if (!model) return "pick a main model first";
  // compatible_bases: the engine's rule (a CLIP-L-only LoRA fits SD1 and SDXL)
  if (!lora.compatible_bases.includes(model.base)) {
    const kind = lora.type === "embedding" ? "embedding" : "LoRA";
    return `${baseLabel(lora.base)} ${kind}; the model is ${baseLabel(model.base)}`;
  }
  return null;
}

// --- LoRA cards and stack -----------------------------------------------------------------

function insertTrigger(word, field = "#prompt") {
  const prompt = $(field);
  const text = prompt.value;
  if (text.split(/[\s,]+/).includes(word)) return;
  const at = prompt.selectionStart ?? text.length;
  const before = text.slice(0, at).replace(/[\s,]*$/, "");
  const after = text.slice(at).replace(/^[\s,]*/, "");
  prompt.value = [before, word, after].filter(Boolean).join(", ");
  prompt.focus();
}

function triggerChips(lora) {
  return el("div", { class: "triggers" },
    ...lora.trigger_words.map((word) =>
      el("button", { type: "button", class: "trigger", title: "insert into the prompt",
                     "data-testid": "trigger-word", onclick: () => insertTrigger(word) }, word)));
}

function renderCards() {
  const query = $("#lora-search").value.trim().toLowerCase();
  const matches = state.loras.filter((l) =>
    !query || l.name.toLowerCase().includes(query) ||
    l.trigger_words.some((w) => w.toLowerCase().includes(query)));
  // compatible first, then by name
  matches.sort((a, b) => (!!incompatibility(a) - !!incompatibility(b)) || a.name.localeCompare(b.name));
  const cards = matches.map((lora) => {
    const reason = incompatibility(lora);
    const picked = state.stack.some((s) => s.key === lora.key);
    const thumb = lora.preview_url
      ? el("img", { src: withToken(lora.preview_url), alt: "", loading: "lazy" })
      : document.createTextNode("◇");
    return el("div", {
      class: "card" + (reason ? " incompatible" : "") + (picked ? " picked" : ""),
      "data-testid": "lora-card", dataset: { key: lora.key, name: lora.name },
      title: reason || lora.description || lora.name,
    },
      el("div", { class: lora.preview_url ? "thumb" : "thumb empty" }, thumb),
      el("div", { class: "body" },
        el("div", { class: "title" }, lora.name),
        el("div", { class: "badges" },
          el("span", { class: "badge", title: "fits " + fitsLabel(lora) }, baseLabel(lora.base)),
          el("span", { class: "badge", title: formatLabel(lora) }, lora.format),
          fewstepBadge(lora),
          lora.status !== "ok" ? el("span", { class: "badge error" }, lora.status) : null),
        reason ? el("div", { class: "reason", "data-testid": "incompatible-reason" }, reason) : null,
        triggerChips(lora),
        el("button", { type: "button", "data-testid": "add-lora", disabled: !!reason || picked,
                       onclick: () => addLora(lora) }, picked ? "Added" : "Add")));
  });
  const container = $("#lora-cards");
  container.replaceChildren(...cards);
  if (!cards.length) {
    container.append(el("p", { class: "muted" },
      state.loras.length ? "No LoRA matches the search." : "No LoRA installed yet: drop files into autoimport/lora."));
  }
}

// --- embedding cards: their trigger goes into the prompt or the negative prompt -----------

function renderEmbeddingCards() {
  const cards = [...state.embeddings]
    .sort((a, b) => (!!incompatibility(a) - !!incompatibility(b)) || a.name.localeCompare(b.name))
    .map((emb) => {
      const reason = incompatibility(emb);
      const word = emb.trigger_words[0] || `embedding:${emb.name}`;
      const insert = (field, label, testid) =>
        el("button", { type: "button", "data-testid": testid, disabled: !!reason,
                       title: `insert ${word} into the ${label}`,
                       onclick: () => insertTrigger(word, field) }, label);
      return el("div", {
        class: "card" + (reason ? " incompatible" : ""),
        "data-testid": "embedding-card", dataset: { key: emb.key, name: emb.name },
        title: reason || emb.description || emb.name,
      },
        el("div", { class: "body" },
          el("div", { class: "title" }, emb.name),
          el("div", { class: "badges" },
            el("span", { class: "badge", title: "fits " + fitsLabel(emb) }, baseLabel(emb.base)),
            el("span", { class: "badge" }, `${emb.vectors ?? "?"} vectors`),
            emb.status !== "ok" ? el("span", { class: "badge error" }, emb.status) : null),
          reason ? el("div", { class: "reason" }, reason) : null,
          el("div", { class: "triggers" }, word),
          insert("#prompt", "prompt", "embedding-to-prompt"),
          insert("#negative", "negative prompt", "embedding-to-negative")));
    });
  const container = $("#embedding-cards");
  container.replaceChildren(...cards);
  if (!cards.length) {
    container.append(el("p", { class: "muted" },
      "No embedding installed yet: drop files into autoimport/embedding."));
  }
}

// The few-step family whose preset applies (the engine's rule: the first LoRA that has one).
function stackFamily() {
  return state.stack.find((s) => s.fewstep && s.fewstep !== "none")?.fewstep ?? null;
}

// What the fields left empty will get (generation.fewstep): the stack family's preset, with
// the step count its file states and that count's overrides, else the config's defaults.
function plannedSampling() {
  const gen = state.settings.generation;
  const family = stackFamily();
  const preset = family && state.settings.fewstep[family];
  if (!preset) return { family: null, scheduler: gen.scheduler, spacing: null, eta: null, steps: gen.steps, cfg: gen.cfg };
  const steps = state.stack.find((s) => s.fewstep === family).fewstep_steps ?? preset.steps;
  const over = preset.by_steps[steps] || {};
  return { family, scheduler: over.scheduler ?? preset.scheduler, spacing: over.spacing ?? preset.spacing,
           eta: over.eta ?? preset.eta, steps, cfg: over.cfg ?? preset.cfg };
}

// The weight a LoRA sent without one gets (presets.resolve): the preset's, else its own
// preferred weight, else the config's.
function expectedWeight(entry) {
  const family = stackFamily();
  const preset = family && state.settings.fewstep[family];
  if (preset) return entry.fewstep === family ? preset.lora_weight : preset.other_lora_weight;
  const lora = state.loras.find((l) => l.key === entry.key);
  return lora?.default_weight ?? state.settings.generation.lora_weight;
}

function fewstepBadge(record, inline = false) {
  if (!record.fewstep || record.fewstep === "none") return null;
  const steps = record.fewstep_steps ? ` ${record.fewstep_steps}-step` : "";
  return el("span", { class: "badge fewstep" + (inline ? " inline" : ""), "data-testid": "fewstep-badge",
                      title: "few-step LoRA: its preset (config.toml) fills the fields left empty" },
            record.fewstep.toUpperCase() + steps);
}

function addLora(lora) {
  if (state.stack.some((s) => s.key === lora.key)) return;
  for (const entry of state.stack) delete entry.used;  // the presets in play may change
  state.stack.push({ key: lora.key, name: lora.name, weight: null, fewstep: lora.fewstep,
                     fewstep_steps: lora.fewstep_steps });
  renderStack();
  renderCards();
}

function removeLora(key) {
  state.stack = state.stack.filter((s) => s.key !== key);
  for (const entry of state.stack) delete entry.used;
  renderStack();
  renderCards();
}

function renderStack() {
  // A LoRA that no longer fits the chosen model (or was deleted) leaves the stack, with a note.
  const dropped = state.stack.filter((s) => {
    const lora = state.loras.find((l) => l.key === s.key);
    return !lora || incompatibility(lora);
  });
  if (dropped.length) {
    state.stack = state.stack.filter((s) => !dropped.includes(s));
    notice(`Removed from the stack (does not fit this model): ${dropped.map((s) => s.name).join(", ")}`);
  }
  const rows = state.stack.map((entry) => {
    // untouched: the weight the last image used, else the one generation will give it
    const shown = entry.weight ?? entry.used ?? expectedWeight(entry);
    const slider = el("input", { type: "range", min: -2, max: 2, step: 0.05, value: shown,
                                 "aria-label": `${entry.name} weight`, "data-testid": "weight-slider" });
    const number = el("input", { type: "number", step: "any", value: shown,
                                 "aria-label": `${entry.name} weight value`, "data-testid": "weight-number" });
    slider.addEventListener("input", () => { entry.weight = Number(slider.value); number.value = slider.value; });
    number.addEventListener("input", () => {
      if (number.value === "" || Number.isNaN(Number(number.value))) return;
      entry.weight = Number(number.value);
      slider.value = Math.max(-2, Math.min(2, entry.weight));
    });
    // block weights (docs/lora-control.md): the LoRA Block Weight extension's presets and the user's
    const lbw = el("select", { "aria-label": `${entry.name} block weights`, "data-testid": "lbw-preset",
                               title: "block weights: a LoRA Block Weight preset (lbw=)" },
      el("option", { value: "" }, "all blocks"),
      ...(state.settings.lbw_presets || []).map((name) => el("option", { value: name }, `lbw ${name}`)));
    lbw.value = entry.lbw || "";
    lbw.addEventListener("change", () => { entry.lbw = lbw.value || null; });
    return el("div", { class: "stack-row", "data-testid": "stack-row", dataset: { key: entry.key, name: entry.name } },
      el("span", { class: "name", title: entry.name }, entry.name,
         fewstepBadge(entry, true),
         entry.weight === null
           ? el("span", { class: "muted auto", "data-testid": "weight-auto",
                          title: "from the preset or the default until you move the slider" }, "auto")
           : null),
      slider, number, lbw,
      el("button", { type: "button", title: "remove", "data-testid": "remove-lora",
                     onclick: () => removeLora(entry.key) }, "✕"));
  });
  const stack = $("#lora-stack");
  stack.replaceChildren(...rows);
  if (!rows.length) stack.append(el("p", { class: "muted empty" }, "No LoRA picked. Add one from the cards below."));
  showPlannedSampling();
}

function showPlannedSampling() {
  const plan = plannedSampling();
  const sampler = plan.scheduler + (plan.spacing ? ` ${plan.spacing}` : "");
  $("#scheduler").options[0].textContent = `${plan.family ? `${plan.family} preset` : "default"} (${sampler})`;
  $("#steps").placeholder = plan.steps;
  $("#cfg").placeholder = plan.cfg;
  $("#eta").placeholder = plan.eta ?? "";
  $("#fewstep-offer").hidden = !plan.family;
  if (plan.family) {
    $("#fewstep-offer-text").textContent = `A ${plan.family} LoRA is in the stack: the fields left ` +
      `empty get its preset (${sampler}${plan.eta !== null ? `, eta ${plan.eta}` : ""}, ${plan.steps} steps, CFG ${plan.cfg}).`;
  }
}

// Empty what the preset fills, so that it applies (weights too: sent without one).
function usePreset() {
  for (const id of ["#scheduler", "#spacing", "#eta", "#steps", "#cfg"]) $(id).value = "";
  for (const entry of state.stack) entry.weight = null;
  renderStack();
}

// After an image: untouched sliders show the weight it used.
function showUsedWeights(id) {
  const recipe = state.images.get(id)?.recipe;
  if (!recipe) return;
  for (const entry of state.stack) {
    const used = (recipe.loras || []).find((l) => l.key === entry.key);
    const held = used && stackWeight(used.weight);  // a block preset's weight too
    if (held && held.weight !== null) entry.used = held.weight;
  }
  renderStack();
}

// --- generation and progress --------------------------------------------------------------

function numberField(id) {
  const value = $(id).value;
  return value === "" ? undefined : Number(value);
}

// A stack entry as the request's LoRA: a block preset makes its weight a mapping (without a
// number of its own, the preset's or the record's default weight fills it in).
function loraRequest(s) {
  if (!s.lbw) return s.weight === null ? { name: s.key } : { name: s.key, weight: s.weight };
  const every = s.weight === null ? {} : { unet: s.weight, text_encoder: s.weight, text_encoder_2: s.weight };
  return { name: s.key, weight: { ...every, block_weights: s.lbw } };
}

// A recipe's weight as the stack can hold it: a number, or one number for every component with a
// block preset ({weight, lbw}); null for anything else (per-component weights, windows, vectors).
function stackWeight(weight) {
  if (typeof weight === "number") return { weight, lbw: null };
  if (!weight || typeof weight.block_weights !== "string" || "start" in weight || "stop" in weight) return null;
  const parts = ["unet", "text_encoder", "text_encoder_2"].map((c) => weight[c]);
  if (parts.every((w) => w === undefined)) return { weight: null, lbw: weight.block_weights };
  return parts.every((w) => w === parts[0]) ? { weight: parts[0], lbw: weight.block_weights } : null;
}

function buildRequest() {
  const request = {
    model: $("#model").value,
    prompt: $("#prompt").value,
    batch_size: numberField("#batch") ?? 1,
    loras: state.stack.map(loraRequest),
    append_trigger_words: $("#append-triggers").checked,
  };
  const optional = {
    negative_prompt: $("#negative").value || undefined,
    width: numberField("#width"), height: numberField("#height"), steps: numberField("#steps"),
    cfg: numberField("#cfg"), seed: numberField("#seed"), scheduler: $("#scheduler").value || undefined,
    spacing: $("#spacing").value || undefined, eta: numberField("#eta"),
  };
  for (const [key, value] of Object.entries(optional)) if (value !== undefined) request[key] = value;
  return request;
}

function setProgress(fraction, text) {
  const bar = $("#progress-bar");
  const percent = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  bar.style.width = percent + "%";
  bar.setAttribute("aria-valuenow", percent);
  $("#progress-text").textContent = text;
}

async function submit(event) {
  event.preventDefault();
  notice("");
  try {
    const item = await api("/api/queue", { method: "POST", body: buildRequest() });
    follow(item.id);
  } catch (error) {
    notice(error.message);
  }
}

function follow(itemId) {
  if (state.events) state.events.close();
  state.current = itemId;
  setProgress(0, "Queued…");
  $("#cancel").hidden = false;
  const source = new EventSource(withToken(`/api/queue/${itemId}/events`));
  state.events = source;
  const finish = () => {
    source.close();
    state.events = null;
    $("#cancel").hidden = true;
    $("#progress-preview").hidden = true;
    refreshQueueStatus();
  };
  source.addEventListener("queued", () => { setProgress(0, "Queued…"); refreshQueueStatus(); });
  source.addEventListener("started", () => { setProgress(0, "Started…"); refreshQueueStatus(); });
  source.addEventListener("loading", (e) => {
    const data = JSON.parse(e.data);
    setProgress(0, `${data.message} (${data.step}/${data.total})`);
  });
  source.addEventListener("step", (e) => {
    const data = JSON.parse(e.data);
    setProgress(data.step / data.total, `step ${data.step}/${data.total}`);
    $("#progress-bar").dataset.step = data.step;
    if (data.preview) { $("#progress-preview").src = data.preview; $("#progress-preview").hidden = false; }
  });
  source.addEventListener("done", async (e) => {
    const data = JSON.parse(e.data);
    finish();
    setProgress(1, `Done: ${data.images.length} image(s).`);
    for (const warning of data.warnings) notice(warning, true);
    await loadGallery(true);
    if (data.images.length) { selectImage(data.images[0].id); showUsedWeights(data.images[0].id); }
  });
  source.addEventListener("failed", (e) => {
    finish();
    const data = JSON.parse(e.data);
    setProgress(0, "Failed.");
    notice(data.message);
  });
  source.addEventListener("cancelled", () => { finish(); setProgress(0, "Cancelled."); });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) { finish(); notice("Lost the connection to the server."); }
  };
}

async function cancelCurrent() {
  if (!state.current) return;
  try { await api(`/api/queue/${state.current}/cancel`, { method: "POST" }); }
  catch (error) { notice(error.message); }
}

async function refreshQueueStatus() {
  try {
    const items = await api("/api/queue");
    const queued = items.filter((i) => i.status === "queued").length;
    const running = items.some((i) => i.status === "running");
    $("#queue-status").textContent = running || queued ? `${running ? "1 running" : "idle"} · ${queued} queued` : "";
  } catch { /* the next refresh will tell */ }
}

// --- gallery and recipes ------------------------------------------------------------------

async function loadGallery(reset) {
  if (reset) { state.galleryOffset = 0; state.images.clear(); $("#gallery").replaceChildren(); }
  const page = await api(`/api/images?offset=${state.galleryOffset}&limit=24`);
  state.galleryOffset += page.items.length;
  for (const image of page.items) {
    state.images.set(image.id, image);
    $("#gallery").append(el("button", {
      type: "button", "data-testid": "gallery-item", dataset: { id: image.id },
      title: image.recipe.prompt || "", onclick: () => selectImage(image.id),
    }, el("img", { src: withToken(image.url), alt: image.recipe.prompt || "image", loading: "lazy" })));
  }
  $("#gallery-more").hidden = !page.has_more;
  if (!state.images.size) $("#gallery").append(el("p", { class: "muted" }, "No images yet."));
}

function loraWeightText(weight) {
  if (typeof weight === "number") return String(weight);
  return Object.entries(weight).map(([part, w]) => `${part} ${w}`).join(", ");
}

const recipeModelName = (recipe) =>
  typeof recipe.model === "object" && recipe.model ? recipe.model.name : recipe.model;

function selectImage(id) {
  const image = state.images.get(id);
  if (!image) return;
  state.selected = id;
  for (const button of $("#gallery").children) button.classList.toggle("selected", button.dataset.id === String(id));
  const recipe = image.recipe;
  $("#image-detail").hidden = false;
  $("#detail-id").textContent = `#${id}`;
  $("#detail-img").src = withToken(image.url);
  const rows = [
    ["model", recipeModelName(recipe)], ["prompt", recipe.prompt], ["negative", recipe.negative_prompt],
    ["seed", recipe.seed], ["steps", recipe.steps], ["CFG", recipe.cfg], ["scheduler", recipe.scheduler],
    ["spacing", recipe.spacing], ["eta", recipe.eta],
    ["size", recipe.width && `${recipe.width}×${recipe.height}`], ["created", image.created_at],
  ];
  $("#recipe").replaceChildren(...rows.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .flatMap(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { field: k } }, String(v))]));
  $("#recipe-loras").replaceChildren(...(recipe.loras || []).map((l) =>
    el("li", { "data-testid": "recipe-lora", dataset: { name: l.name, weight: JSON.stringify(l.weight) } },
       `${l.name} @ ${loraWeightText(l.weight)}`)));
}

// Fill the form from request-shaped settings (`model` a main model's key); `loras` are
// {key, name, weight}. Returns the LoRAs it could not put in the stack.
function fillForm(settings, model, loras) {
  if (model) $("#model").value = model.key;
  $("#prompt").value = settings.prompt ?? "";
  $("#negative").value = settings.negative_prompt ?? "";
  for (const [id, key] of [["#width", "width"], ["#height", "height"], ["#steps", "steps"], ["#cfg", "cfg"], ["#seed", "seed"]]) {
    $(id).value = settings[key] ?? "";
  }
  $("#scheduler").value = settings.scheduler ?? "";
  $("#spacing").value = settings.spacing ?? "";
  $("#eta").value = settings.eta ?? "";
  const missing = [];
  state.stack = [];
  for (const used of loras) {
    const lora = state.loras.find((l) => l.key === used.key) || state.loras.find((l) => l.name === used.name);
    const held = stackWeight(used.weight);
    if (!lora || !held) { missing.push(lora?.name || used.name); continue; }
    state.stack.push({ key: lora.key, name: lora.name, weight: held.weight, lbw: held.lbw, fewstep: lora.fewstep,
                       fewstep_steps: lora.fewstep_steps });
  }
  renderStack();
  renderCards();
  return missing;
}

function useSettings() {
  const recipe = state.images.get(state.selected)?.recipe;
  if (!recipe) return;
  const model = state.mains.find((m) => m.key === recipe.model?.key) || state.mains.find((m) => m.name === recipeModelName(recipe));
  const missing = fillForm(recipe, model, recipe.loras || []);
  notice(missing.length ? `Not restored (not installed or per-component weight): ${missing.join(", ")}` : "Settings restored.", !missing.length);
}

// --- settings from any PNG: ours, A1111, InvokeAI, ComfyUI (docs/interop.md) -------------

async function inflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

// A PNG's text chunks (tEXt, zTXt, iTXt) as keyword -> text; the pixels stay here.
async function pngTextChunks(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  if (bytes.length < 8 || latin1.decode(bytes.subarray(1, 4)) !== "PNG") throw new Error("Not a PNG file.");
  const chunks = {};
  for (let pos = 8; pos + 12 <= bytes.length;) {
    const length = view.getUint32(pos);
    const type = latin1.decode(bytes.subarray(pos + 4, pos + 8));
    const data = bytes.subarray(pos + 8, Math.min(pos + 8 + length, bytes.length));
    pos += 12 + length;
    if (type === "IEND") break;
    const nul = data.indexOf(0);
    if (!["tEXt", "zTXt", "iTXt"].includes(type) || nul < 0) continue;
    const key = latin1.decode(data.subarray(0, nul));
    if (type === "tEXt") chunks[key] = latin1.decode(data.subarray(nul + 1));
    else if (type === "zTXt") chunks[key] = latin1.decode(await inflate(data.subarray(nul + 2)));
    else {
      const compressed = data[nul + 1] === 1;
      const language = data.indexOf(0, nul + 3);
      const text = data.subarray(data.indexOf(0, language + 1) + 1);
      chunks[key] = utf8.decode(compressed ? await inflate(text) : text);
    }
  }
  return chunks;
}

async function openPng(event) {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  try {
    const chunks = await pngTextChunks(await file.arrayBuffer());
    const found = await api("/api/recall", { method: "POST", body: { chunks, name: file.name } });
    const s = found.settings;
    const model = state.mains.find((m) => m.key === s.model);
    const missing = fillForm(s, model, (s.loras || []).map((l) => ({ key: l.name, name: l.name, weight: l.weight })));
    const unmapped = [...found.unmapped, ...missing.map((name) => `LoRA ${name} (per-component weight)`)];
    notice(unmapped.length ? `${found.source} image; not restored: ${unmapped.join("; ")}` : `${found.source} image: settings restored.`, !unmapped.length);
  } catch (error) {
    notice(error.message);
  }
}

async function deleteSelected() {
  if (state.selected === null) return;
  try {
    await api(`/api/images/${state.selected}`, { method: "DELETE" });
    state.selected = null;
    $("#image-detail").hidden = true;
    await loadGallery(true);
  } catch (error) {
    notice(error.message);
  }
}

// --- models page --------------------------------------------------------------------------

function unsavedEdits() {
  // Inputs the user changed but did not save survive a re-render (another row's save, a rescan).
  const edits = new Map();
  for (const input of document.querySelectorAll("#models-body input[data-dirty]")) {
    edits.set(`${input.closest("tr").dataset.key}/${input.dataset.testid}`, input.value);
  }
  return edits;
}

function editBox(edits, key, attrs, saved) {
  const id = `${key}/${attrs["data-testid"]}`;
  const input = el("input", { ...attrs, value: edits.has(id) ? edits.get(id) : saved });
  if (edits.has(id)) input.dataset.dirty = "1";
  input.addEventListener("input", () => { input.dataset.dirty = "1"; });
  return input;
}

function renderModelsTable(models) {
  const edits = unsavedEdits();
  const rows = models.map((m) => {
    const triggers = editBox(edits, m.key, { type: "text", "data-testid": "edit-triggers" }, m.trigger_words.join(", "));
    const weight = editBox(edits, m.key, { type: "number", step: "any", "data-testid": "edit-weight" }, m.default_weight ?? "");
    const save = async () => {
      try {
        const words = triggers.value.split(",").map((w) => w.trim()).filter(Boolean);
        const body = { trigger_words: words, default_weight: weight.value === "" ? null : Number(weight.value) };
        await api(`/api/models/${m.key}`, { method: "PATCH", body });
        delete triggers.dataset.dirty;
        delete weight.dataset.dirty;
        $("#models-message").textContent = `Saved ${m.name}.`;
        await loadModels();
      } catch (error) { $("#models-message").textContent = error.message; }
    };
    const remove = async () => {
      if (!confirm(`Remove ${m.name}?`)) return;
      try { await api(`/api/models/${m.key}`, { method: "DELETE" }); await loadModels(); }
      catch (error) { $("#models-message").textContent = error.message; }
    };
    const editable = m.type === "lora";
    return el("tr", { "data-testid": "model-row", dataset: { key: m.key, name: m.name } },
      el("td", { title: m.path }, m.name, fewstepBadge(m, true)),
      el("td", {}, m.type), el("td", {}, baseLabel(m.base)),
      el("td", { title: Object.entries(m.hashes || {}).map(([k, v]) => `${k} ${v}`).join("\n") },
        formatLabel(m), el("div", { class: "muted", "data-testid": "model-hash" }, shortHash(m))),
      el("td", { class: `status-${m.status}`, "data-testid": "model-status" }, m.status === "ok" ? "ok" : `${m.status}: ${m.error || ""}`),
      el("td", {}, editable ? triggers : ""), el("td", {}, editable ? weight : ""),
      el("td", { class: "actions" },
        editable ? el("button", { type: "button", "data-testid": "save-model", onclick: save }, "Save") : null,
        el("button", { type: "button", class: "danger", "data-testid": "delete-model", onclick: remove }, "Remove")));
  });
  $("#models-body").replaceChildren(...rows);
}

const STAGES = { download: "downloading", hash: "hashing", copy: "copying", probe: "reading" };

// "hashing x.safetensors: 1.2 of 6.9 GB" from GET /api/models/install/{id} (null: not started)
function installStep(step) {
  if (!step.stage) return "Installing…";
  const gb = (n) => (n / 1e9).toFixed(n >= 1e10 ? 0 : 1);
  const amount = step.total ? `${gb(step.done)} of ${gb(step.total)} GB` : `${gb(step.done)} GB`;
  return `${STAGES[step.stage] ?? step.stage} ${step.name}: ${amount}`;
}

async function install(event) {
  event.preventDefault();
  const message = $("#models-message");
  message.textContent = "Installing…";
  const progressId = `ui-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  let running = true;
  const poll = async () => {  // where the install is, until its answer comes
    while (running) {
      await new Promise((resolve) => setTimeout(resolve, 500));
      try {
        const step = await api(`/api/models/install/${progressId}`);
        if (running) message.textContent = installStep(step);
      } catch { /* not started yet, or just ended */ }
    }
  };
  poll();
  try {
    const record = await api("/api/models/install", {
      method: "POST",
      body: { source: $("#install-source").value.trim(), copy_into_root: $("#install-copy").checked,
              progress_id: progressId },
    });
    running = false;
    message.textContent = `Installed ${record.name} (${record.type}, ${baseLabel(record.base)}, ${record.format}).`;
    await loadModels();
  } catch (error) { running = false; message.textContent = error.message; }
}

async function rescan() {
  const message = $("#models-message");
  message.textContent = "Scanning…";
  try {
    const report = await api("/api/models/scan", { method: "POST" });
    const parts = [
      report.added.length && `added ${report.added.join(", ")}`,
      report.missing.length && `missing ${report.missing.join(", ")}`,
      ...report.duplicates, ...report.errors.map((e) => `error: ${e}`),
    ].filter(Boolean);
    message.textContent = parts.length ? parts.join("; ") : `Nothing changed (${report.unchanged} files unchanged).`;
    await loadModels();
  } catch (error) { message.textContent = error.message; }
}

// --- wiring -------------------------------------------------------------------------------

function showPage(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.page === name);
  $("#page-generate").hidden = name !== "generate";
  $("#page-models").hidden = name !== "models";
  loadModels().catch((error) => notice(error.message));
}

async function start() {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showPage(tab.dataset.page));
  $("#gen-form").addEventListener("submit", submit);
  $("#model").addEventListener("change", () => { renderCards(); renderEmbeddingCards(); renderStack(); });
  $("#lora-search").addEventListener("input", renderCards);
  $("#use-preset").addEventListener("click", usePreset);
  $("#cancel").addEventListener("click", cancelCurrent);
  $("#use-settings").addEventListener("click", useSettings);
  $("#open-png").addEventListener("change", openPng);
  $("#delete-image").addEventListener("click", deleteSelected);
  $("#gallery-more").addEventListener("click", () => loadGallery(false));
  $("#install-form").addEventListener("submit", install);
  $("#rescan").addEventListener("click", rescan);
  try {
    await loadSettings();
    await loadModels();
    await loadGallery(true);
    await refreshQueueStatus();
    document.body.dataset.ready = "1";
  } catch (error) {
    notice(error.message);
  }
}

start();
