// opd gateway page: calls POST /v1/support and draws the answer.
//
// Each token becomes a <span class="tok"> whose background is surpriseColour(-log q) and
// whose data-* attributes carry the API's own values (index, id, surprise, logprob,
// rank), so what is drawn can be checked against the JSON. Hover shows the teacher's
// top-K for that token, a click pins it. On a 401 the page asks for the gateway's token
// once and keeps it in sessionStorage for this browser session. Plain JS, no library.
"use strict";

const SURPRISE_SCALE = 8; // nats at which the colour saturates
const LOW = [255, 247, 214]; // colour at surprise 0
const HIGH = [214, 39, 40]; // colour at surprise >= SURPRISE_SCALE
const TIMEOUT_MS = 60000;
const TOKEN_KEY = "opd-gateway-token";

const $ = (id) => document.getElementById(id);
const state = { result: null, pinned: null, tokenPrompt: null };

// The colour of a token with this surprise; tests/e2e/test_gateway_browser.py mirrors it.
function surpriseColour(surprise) {
  const t = Math.min(Math.max(surprise, 0) / SURPRISE_SCALE, 1);
  const channel = (i) => Math.round(LOW[i] + (HIGH[i] - LOW[i]) * t);
  return `rgb(${channel(0)}, ${channel(1)}, ${channel(2)})`;
}

// How a token string is shown inside a list: visible spaces and line breaks.
function visible(token) {
  if (token === "") return "∅";
  return token.replace(/ /g, "␣").replace(/\n/g, "↵").replace(/\t/g, "⇥");
}

function setStatus(message, kind) {
  const status = $("status");
  status.textContent = message;
  status.dataset.state = kind;
}

function askToken() {
  // One prompt even when several requests get a 401 at once.
  if (!state.tokenPrompt) {
    state.tokenPrompt = Promise.resolve().then(() => {
      const token = window.prompt("This gateway needs a bearer token:");
      state.tokenPrompt = null;
      if (token && token.trim()) {
        sessionStorage.setItem(TOKEN_KEY, token.trim());
        return true;
      }
      return false;
    });
  }
  return state.tokenPrompt;
}

// fetch with the stored token, a timeout, and one token prompt on 401.
async function api(path, options = {}, retried = false) {
  const headers = Object.assign({ "Content-Type": "application/json" }, options.headers || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers["Authorization"] = `Bearer ${token}`;
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers, signal: controller.signal }));
  } catch (error) {
    const why = error.name === "AbortError" ? `no answer in ${TIMEOUT_MS / 1000} s` : "unreachable";
    throw new Error(`The gateway is ${why}.`);
  } finally {
    clearTimeout(timer);
  }
  const body = await response.json().catch(() => ({ detail: response.statusText }));
  if (response.status === 401 && !retried) {
    if (token) sessionStorage.removeItem(TOKEN_KEY);
    if (await askToken()) return api(path, options, true);
  }
  if (!response.ok) {
    const error = new Error(describe(response.status, body));
    error.status = response.status;
    throw error;
  }
  return body;
}

function describe(status, body) {
  const detail = (body && body.detail) || "";
  const prefix = {
    401: "Not authorised",
    413: "Text too large",
    422: "Invalid input",
    429: "Too many requests, try again shortly",
    503: "Teacher unavailable",
    504: "The teacher took too long",
  }[status] || `Error ${status}`;
  return detail ? `${prefix}: ${detail}` : prefix;
}

async function loadInfo() {
  const teacher = $("teacher");
  try {
    const info = await api("/v1/info");
    teacher.textContent = `teacher ${info.model} (${info.backend}) · max K ${info.max_top_k} · ` +
      `max ${info.max_sequence_length} tokens`;
    teacher.dataset.state = "ok";
    $("k").max = String(info.max_top_k);
  } catch (error) {
    teacher.textContent = error.message;
    teacher.dataset.state = "error";
  }
}

function readStudent() {
  const raw = $("student").value.trim();
  if (!raw) return undefined;
  const values = JSON.parse(raw);
  if (!Array.isArray(values)) throw new Error("Student log-probs must be a JSON array.");
  return values;
}

async function submit(event) {
  event.preventDefault();
  const button = $("score");
  button.disabled = true;
  setStatus("scoring…", "busy");
  try {
    const body = { text: $("text").value, top_k: Number($("k").value) };
    const student = readStudent();
    if (student !== undefined) body.student_logprobs = student;
    const result = await api("/v1/support", { method: "POST", body: JSON.stringify(body) });
    render(result);
    const s = result.summary;
    setStatus(`${s.num_tokens} tokens scored`, "ok");
  } catch (error) {
    setStatus(error.message, "error");
  } finally {
    button.disabled = false;
  }
}

function render(result) {
  state.result = result;
  state.pinned = null;
  const chars = Array.from(result.text); // spans count code points, as Python does
  const container = $("tokens");
  container.replaceChildren();
  let shown = 0; // characters already drawn
  for (const token of result.tokens) {
    if (token.start > shown) {
      container.append(chars.slice(shown, token.start).join(""));
      shown = token.start;
    }
    const span = document.createElement("span");
    span.className = "tok";
    // Tokens that share one character (bytes of it) draw it once: the first one does.
    const from = Math.max(token.start, shown);
    span.textContent = chars.slice(from, Math.max(from, token.end)).join("");
    shown = Math.max(shown, token.end);
    span.dataset.index = String(token.index);
    span.dataset.id = String(token.id);
    span.dataset.token = token.token;
    if (token.predicted) {
      span.dataset.surprise = String(token.surprise);
      span.dataset.logprob = String(token.logprob);
      span.dataset.rank = String(token.rank);
      span.style.backgroundColor = surpriseColour(token.surprise);
      if (token.surprise >= SURPRISE_SCALE * 0.6) span.classList.add("hot");
    } else {
      span.classList.add("unscored");
    }
    span.title = "";
    container.append(span);
  }
  if (shown < chars.length) container.append(chars.slice(shown).join(""));
  renderSummary(result);
  $("raw").textContent = JSON.stringify(result, null, 2);
  $("show-json").disabled = false;
  $("topk").hidden = true;
  $("result").hidden = false;
}

function fmt(x, digits = 3) {
  return x === null || x === undefined ? "—" : Number(x).toFixed(digits);
}

function renderSummary(result) {
  const s = result.summary;
  const box = $("summary");
  box.replaceChildren();
  const dl = document.createElement("dl");
  const row = (name, value) => {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    if (value instanceof Node) dd.append(value); else dd.textContent = value;
    dl.append(dt, dd);
  };
  row("mean surprise", `${fmt(s.mean_surprise)} nats (perplexity ${fmt(s.perplexity, 2)})`);
  row("max surprise", `${fmt(s.max_surprise)} nats`);
  row(`above ${s.surprise_threshold} nats`, `${s.above_threshold} of ${s.num_predicted} scored tokens`);
  if (s.mean_log_ratio !== null && s.mean_log_ratio !== undefined) {
    row("mean log π − log q", fmt(s.mean_log_ratio));
  }
  const worst = document.createElement("span");
  worst.id = "worst";
  for (const w of s.worst) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.index = String(w.index);
    const code = document.createElement("code");
    code.textContent = visible(w.token);
    button.append(code, ` ${fmt(w.surprise, 2)}`);
    button.addEventListener("click", () => pin(w.index));
    worst.append(button);
  }
  row("worst tokens", worst);
  box.append(dl);
}

function tokenSpan(index) {
  return $("tokens").querySelector(`.tok[data-index="${index}"]`);
}

function showTopK(index, pinned) {
  const token = state.result.tokens[index];
  const span = tokenSpan(index);
  const box = $("topk");
  box.replaceChildren();
  box.dataset.index = String(index);
  box.classList.toggle("pinned", pinned);
  const title = document.createElement("h2");
  const code = document.createElement("code");
  code.textContent = visible(token.token);
  title.append(`token ${index} `, code, ` (id ${token.id})`);
  box.append(title);
  const facts = document.createElement("div");
  facts.className = "facts";
  if (!token.predicted) {
    facts.textContent = index === 0
      ? "first token: nothing precedes it, so the teacher makes no prediction"
      : "before score_from: not scored";
    box.append(facts);
  } else {
    let text = `log q ${fmt(token.logprob)} · p ${fmt(Math.exp(token.logprob))} · ` +
      `rank ${token.rank} · top-K entropy ${fmt(token.entropy)}`;
    if (token.log_ratio !== null && token.log_ratio !== undefined) {
      text += ` · log π − log q ${fmt(token.log_ratio)}`;
    }
    facts.textContent = text;
    const list = document.createElement("ol");
    const top = token.top; // three parallel lists: ids, tokens, logprobs
    top.ids.forEach((id, k) => {
      const logprob = top.logprobs[k];
      const item = document.createElement("li");
      item.dataset.id = String(id);
      item.dataset.token = top.tokens[k];
      item.dataset.logprob = String(logprob);
      if (id === token.id) item.classList.add("actual");
      const name = document.createElement("code");
      name.textContent = visible(top.tokens[k]);
      const p = document.createElement("span");
      p.textContent = `p ${fmt(Math.exp(logprob))} (${fmt(logprob, 2)})`;
      item.append(name, p);
      list.append(item);
    });
    box.append(facts, list);
  }
  const area = $("result").getBoundingClientRect();
  const rect = span.getBoundingClientRect();
  box.style.left = `${Math.max(0, Math.min(rect.left - area.left, area.width - 300))}px`;
  box.style.top = `${rect.bottom - area.top + 6}px`;
  box.hidden = false;
}

function pin(index) {
  if (state.pinned !== null) tokenSpan(state.pinned)?.classList.remove("pinned");
  if (state.pinned === index) {
    state.pinned = null;
    $("topk").hidden = true;
    return;
  }
  state.pinned = index;
  tokenSpan(index).classList.add("pinned");
  showTopK(index, true);
}

function unpin() {
  if (state.pinned === null) return;
  tokenSpan(state.pinned)?.classList.remove("pinned");
  state.pinned = null;
  $("topk").hidden = true;
}

function tokenOf(event) {
  const span = event.target.closest && event.target.closest(".tok");
  return span ? Number(span.dataset.index) : null;
}

function wire() {
  $("form").addEventListener("submit", submit);
  $("show-json").addEventListener("click", () => {
    const raw = $("raw");
    raw.hidden = !raw.hidden;
    $("show-json").textContent = raw.hidden ? "Show JSON" : "Hide JSON";
  });
  const tokens = $("tokens");
  tokens.addEventListener("mouseover", (event) => {
    const index = tokenOf(event);
    if (index !== null && state.pinned === null) showTopK(index, false);
  });
  tokens.addEventListener("mouseleave", () => {
    if (state.pinned === null) $("topk").hidden = true;
  });
  tokens.addEventListener("click", (event) => {
    const index = tokenOf(event);
    if (index !== null) pin(index);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") unpin();
  });
  document.addEventListener("click", (event) => {
    if (!event.target.closest(".tok, #topk, #summary")) unpin();
  });
  loadInfo();
}

wire();
