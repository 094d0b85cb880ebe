// The cope web page: upload a video, show what the model reads, chat with streamed answers.
// Vanilla JS, no build step, no network access beyond this server.
"use strict";

const state = {
  model: null, // id from GET /v1/models
  fileId: null, // id from POST /v1/files
  messages: [], // the OpenAI-style conversation so far
  busy: false,
};

const $ = (id) => document.getElementById(id);

// A server started with --api-key wants "Authorization: Bearer KEY" on every API call. The page
// asks for the key when the server answers 401 and keeps it in this origin's localStorage.
const KEY_STORAGE = "cope-api-key";

function authHeaders(extra = {}) {
  const key = localStorage.getItem(KEY_STORAGE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

function setupKey() {
  $("key-form").hidden = localStorage.getItem(KEY_STORAGE) === null;
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    $("api-key").value = "";
    setStatus("");
    loadModel().catch((error) => setStatus(`Cannot reach the server: ${error.message}`, true));
  });
}

function setStatus(text, isError = false) {
  const el = $("upload-status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    return body.error ? body.error.message : JSON.stringify(body);
  } catch {
    return `HTTP ${response.status}`;
  }
}

async function loadModel() {
  const response = await fetch("/v1/models", { headers: authHeaders() });
  if (response.status === 401) {
    $("key-form").hidden = false;
    setStatus("This server needs an API key: enter it above.", true);
    return;
  }
  const body = await response.json();
  state.model = body.data[0].id;
  $("model-name").textContent = state.model;
}

// ----- video: pick or drop, preview, upload, summary ---------------------------------------------

function showPreview(file) {
  const video = $("preview");
  if (video.src) URL.revokeObjectURL(video.src);
  video.src = URL.createObjectURL(file);
  video.hidden = false;
}

async function uploadVideo(file) {
  resetConversation();
  setChatEnabled(false);
  $("summary").hidden = true;
  showPreview(file);
  setStatus(`Uploading ${file.name} (${(file.size / 1e6).toFixed(1)} MB) and reading its GOPs…`);
  const form = new FormData();
  form.append("purpose", "user_data");
  form.append("file", file, file.name);
  const response = await fetch("/v1/files", { method: "POST", body: form, headers: authHeaders() });
  if (!response.ok) {
    state.fileId = null;
    setStatus(`Upload failed: ${await errorMessage(response)}`, true);
    return;
  }
  const body = await response.json();
  state.fileId = body.id;
  setStatus(`${body.filename}: ready (${body.id})`);
  showSummary(body.video);
  setChatEnabled(true);
  $("question").focus();
}

function showSummary(video) {
  const c = video.canonical;
  const s = video.source;
  $("summary-stream").textContent =
    `Source ${s.codec} ${s.width}×${s.height}, ${s.duration_s.toFixed(1)} s, ${s.frames} frames → ` +
    `canonical ${c.codec} ${c.width}×${c.height}: ${c.frame_types.I} I-frames, ` +
    `${c.frame_types.P} P-frames in ${c.gops} GOPs.`;
  const dense = video.plans.dense64.visual_tokens || 1;
  const rows = Object.entries(video.plans).map(([name, plan]) => {
    const tr = document.createElement("tr");
    tr.dataset.plan = name;
    const cells = [name, plan.rgb_frames, plan.delta_frames, plan.visual_tokens,
      ((100 * plan.visual_tokens) / dense).toFixed(1), plan.model_tokens];
    cells.forEach((value, i) => {
      const cell = document.createElement(i === 0 ? "th" : "td");
      if (i === 0) cell.scope = "row";
      cell.textContent = value;
      tr.appendChild(cell);
    });
    return tr;
  });
  $("plans-table").querySelector("tbody").replaceChildren(...rows);
  $("summary").hidden = false;
}

function setupVideoInput() {
  const zone = $("drop-zone");
  $("file-input").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) uploadVideo(file);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file-input").click();
    }
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) uploadVideo(file);
  });
}

// ----- chat: streamed answers over server-sent events --------------------------------------------

function setChatEnabled(enabled) {
  $("question").disabled = !enabled;
  $("ask-button").disabled = !enabled;
  $("new-chat").disabled = !enabled;
  $("question").placeholder = enabled ? "Ask about the video…" : "Upload a video first";
}

function resetConversation() {
  state.messages = [];
  $("chat-log").replaceChildren();
}

function addBubble(role, text) {
  const item = document.createElement("li");
  item.className = `bubble ${role}`;
  const body = document.createElement("p");
  body.className = "text";
  body.textContent = text;
  item.appendChild(body);
  $("chat-log").appendChild(item);
  return item;
}

function userMessage(question) {
  // The video travels with the first question only; later turns reuse the server's encoded video.
  if (state.messages.length > 0) return { role: "user", content: question };
  return {
    role: "user",
    content: [
      { type: "video_url", video_url: { url: `cope-file://${state.fileId}` } },
      { type: "text", text: question },
    ],
  };
}

// Yields the parsed JSON of each `data:` event of an SSE response body, until `[DONE]`.
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function ask(question) {
  state.busy = true;
  setChatEnabled(false);
  addBubble("user", question);
  const message = userMessage(question);
  const answer = addBubble("assistant", "");
  answer.classList.add("streaming");
  answer.setAttribute("aria-busy", "true");
  const text = answer.querySelector(".text");
  const meta = document.createElement("p");
  meta.className = "meta muted";
  meta.textContent = "waiting for the first token…";
  answer.appendChild(meta);

  const started = performance.now();
  let firstTokenMs = null;
  let reply = "";
  let chunks = 0;
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: authHeaders({ "Content-Type": "application/json" }),
      body: JSON.stringify({
        model: state.model,
        messages: [...state.messages, message],
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: Number($("max-tokens").value) || 64,
        mode: $("mode").value,
        keyframes_per_gop: Number($("keyframes").value),
      }),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const chunk of sseEvents(response)) {
      if (chunk.error) throw new Error(chunk.error.message);
      const delta = chunk.choices && chunk.choices[0] ? chunk.choices[0].delta.content : null;
      if (delta) {
        if (firstTokenMs === null) {
          firstTokenMs = performance.now() - started;
          meta.textContent = `streaming… first token after ${(firstTokenMs / 1000).toFixed(2)} s`;
        }
        reply += delta;
        chunks += 1;
        answer.dataset.chunks = chunks;
        text.textContent = reply;
      }
      if (chunk.usage) {
        const u = chunk.usage;
        answer.dataset.ttft = u.ttft_s;
        meta.textContent =
          `TTFT ${u.ttft_s.toFixed(3)} s (server) · ${((firstTokenMs ?? 0) / 1000).toFixed(2)} s (browser) · ` +
          `${u.visual_tokens} visual / ${u.prompt_tokens} prompt / ${u.completion_tokens} generated tokens · ` +
          (u.encoded_video_cached ? "video embeddings reused" : "video encoded") +
          (u.kv_cache_reused ? ", KV cache reused" : "");
        meta.classList.add("ttft");
      }
    }
    state.messages.push(message, { role: "assistant", content: reply });
  } catch (error) {
    answer.classList.add("error");
    meta.textContent = `Error: ${error.message}`;
  } finally {
    answer.classList.remove("streaming");
    answer.removeAttribute("aria-busy");
    state.busy = false;
    setChatEnabled(state.fileId !== null);
    $("question").focus();
  }
}

function setupChat() {
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const question = $("question").value.trim();
    if (!question || state.busy || !state.fileId) return;
    $("question").value = "";
    ask(question);
  });
  $("new-chat").addEventListener("click", resetConversation);
}

document.addEventListener("DOMContentLoaded", () => {
  setupKey();
  setupVideoInput();
  setupChat();
  loadModel().catch((error) => setStatus(`Cannot reach the server: ${error.message}`, true));
});
