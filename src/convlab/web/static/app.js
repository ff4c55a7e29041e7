// convlab teach: the UI. Plain JavaScript over the JSON API documented at /docs.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const state = { project: null, stream: null, previewing: false, recording: null, polling: null,
                info: null, imagenet: false, detecting: 0 };   // detecting: the live loop's number, 0 when off
const FRAME = 256;          // frames are sent as the centre square at 256x256, like stored samples
const RECORD_FPS = 8;
const DETECT_WIDTH = 320;   // the Detect view sends whole frames 320 pixels wide (320x240 at 4:3)
const DETECT_SIZE = 320;    // ... and the network sees them at that size (320x256 after padding)

async function api(method, path, body, raw) {
  const opts = { method, headers: {} };
  if (raw !== undefined) { opts.body = raw; }
  else if (body instanceof FormData) { opts.body = body; }
  else if (body !== undefined) { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  const res = await fetch(path, opts);
  if (res.status === 204) return null;
  const data = await res.json().catch(() => ({ detail: res.statusText }));
  if (!res.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail);
    throw new Error(detail || `${res.status} ${res.statusText}`);
  }
  return data;
}

function say(text, kind = "error") {
  const m = $("#message");
  m.textContent = text || "";
  m.className = text ? `show ${kind === "info" ? "info" : ""}` : "";
  if (text && kind === "info") setTimeout(() => { if (m.textContent === text) say(""); }, 4000);
}

async function guarded(fn) {
  try { return await fn(); } catch (e) { say(e.message); return undefined; }
}

// ------------------------------------------------------------------ projects
async function loadProjects(selectId) {
  const projects = await api("GET", "/api/projects");
  const sel = $("#project");
  sel.innerHTML = "";
  for (const p of projects) {
    const o = document.createElement("option");
    o.value = p.id; o.textContent = `${p.name} (${p.samples} images)`;
    sel.appendChild(o);
  }
  $("#workspace").hidden = projects.length === 0;
  $("#empty").hidden = projects.length !== 0;
  if (!projects.length) { state.project = null; return; }
  const stored = Number(localStorage.getItem("convlab.project"));
  const want = selectId || (projects.some(p => p.id === stored) ? stored : projects[projects.length - 1].id);
  sel.value = want;
  await openProject(Number(sel.value));
}

async function openProject(pid) {
  localStorage.setItem("convlab.project", pid);
  const p = await api("GET", `/api/projects/${pid}`);
  state.project = p;
  $("#backbone").value = p.backbone;
  $("#backbone-name").textContent = p.backbone;
  renderClasses(p.classes);
  showModel(p.model);
  if (p.training && p.training.state === "training") pollTraining();
  else showJob(p.training, p.model);
  clearBars();
  $("#export-result").innerHTML = "";
}

async function newProject() {
  const n = $("#project").options.length + 1;
  const p = await api("POST", "/api/projects", { name: `My project ${n}`, backbone: $("#new-backbone").value });
  await api("POST", `/api/projects/${p.id}/classes`, { name: "Class 1" });
  await api("POST", `/api/projects/${p.id}/classes`, { name: "Class 2" });
  await loadProjects(p.id);
}

// ------------------------------------------------------------------- classes
function renderClasses(classes) {
  const box = $("#classes");
  box.innerHTML = "";
  for (const c of classes) box.appendChild(classCard(c));
}

function classCard(c) {
  const card = $("#class-template").content.firstElementChild.cloneNode(true);
  card.dataset.classId = c.id;
  card.dataset.testid = `class-${c.name}`;
  const name = $(".class-name", card);
  name.value = c.name;
  name.addEventListener("change", () => guarded(async () => {
    const r = await api("PATCH", `/api/classes/${c.id}`, { name: name.value });
    c.name = r.name; name.value = r.name; card.dataset.testid = `class-${r.name}`;
    say(`renamed to ${r.name}`, "info");
  }).then(v => { if (v === undefined) name.value = c.name; }));
  name.addEventListener("keydown", e => { if (e.key === "Enter") name.blur(); });
  $(".delete-class", card).addEventListener("click", () => guarded(async () => {
    if (!confirm(`Delete class "${c.name}" and its ${c.samples} images?`)) return;
    await api("DELETE", `/api/classes/${c.id}`);
    card.remove();
  }));
  const rec = $(".record", card);
  const start = e => {
    e.preventDefault();
    if (e.pointerId !== undefined) rec.setPointerCapture(e.pointerId);  // layout may move under the pointer
    startRecording(c, card, rec);
  };
  const stop = () => stopRecording(rec);
  rec.addEventListener("pointerdown", start);
  rec.addEventListener("pointerup", stop);
  rec.addEventListener("pointercancel", stop);
  rec.addEventListener("keydown", e => { if (e.key === " " && !e.repeat) start(e); });
  rec.addEventListener("keyup", e => { if (e.key === " ") stop(); });
  $(".upload", card).addEventListener("change", e => {
    uploadFiles(c, card, [...e.target.files]); e.target.value = "";
  });
  card.addEventListener("dragover", e => { e.preventDefault(); card.classList.add("drag"); });
  card.addEventListener("dragleave", () => card.classList.remove("drag"));
  card.addEventListener("drop", e => {
    e.preventDefault(); card.classList.remove("drag");
    uploadFiles(c, card, [...e.dataTransfer.files]);
  });
  setCount(card, c.samples);
  loadThumbs(c, card);
  return card;
}

function setCount(card, n) {
  card.dataset.count = n;
  $(".count", card).textContent = `${n} image${n === 1 ? "" : "s"}`;
}

async function loadThumbs(c, card) {
  const samples = await api("GET", `/api/classes/${c.id}/samples?limit=48`);
  const box = $(".thumbs", card);
  box.innerHTML = "";
  for (const s of samples) box.appendChild(thumb(s, card));
}

function thumb(s, card) {
  const t = document.createElement("div");
  t.className = "thumb";
  const img = document.createElement("img");
  img.src = `/api/images/${s.sha}`; img.alt = "sample";
  const del = document.createElement("button");
  del.textContent = "×"; del.title = "Delete this image";
  del.addEventListener("click", () => guarded(async () => {
    await api("DELETE", `/api/samples/${s.id}`);
    t.remove(); setCount(card, Number(card.dataset.count) - 1);
  }));
  t.append(img, del);
  return t;
}

function addThumbs(card, samples) {
  const box = $(".thumbs", card);
  for (const s of samples) box.prepend(thumb(s, card));
  while (box.children.length > 48) box.lastChild.remove();
  setCount(card, Number(card.dataset.count) + samples.length);
}

async function sendSamples(c, card, blobs, source) {
  const form = new FormData();
  blobs.forEach((b, i) => form.append("files", b, b.name || `frame${i}.jpg`));
  const added = await api("POST", `/api/classes/${c.id}/samples?source=${source}`, form);
  addThumbs(card, added);
  loadProjectList();
  return added.length;
}

async function uploadFiles(c, card, files) {
  if (!files.length) return;
  await guarded(async () => {
    let done = 0;
    for (let i = 0; i < files.length; i += 16) {         // 16 files per request
      done += await sendSamples(c, card, files.slice(i, i + 16), "upload");
      say(`uploaded ${done} of ${files.length}`, "info");
    }
  });
}

// ------------------------------------------------------------------- webcam
async function startWebcam() {
  if (state.stream) return true;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    say("This browser gives no webcam here (the page must be opened as http://127.0.0.1 or " +
        "http://localhost, or over https). Uploads still work.");
    return false;
  }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (e) {
    say(`Cannot open the webcam: ${e.message}`);
    return false;
  }
  const v = $("#video");
  v.srcObject = state.stream;
  await v.play();
  $("#webcam-off").hidden = true; v.hidden = false;
  const dv = $("#detect-video");
  dv.srcObject = state.stream;
  await dv.play();
  $("#detect-off").hidden = true; dv.hidden = false;
  $("#webcam-toggle").textContent = "Stop webcam";
  $("#webcam-toggle").classList.add("active");
  return true;
}

function stopWebcam() {
  if (!state.stream) return;
  for (const t of state.stream.getTracks()) t.stop();
  state.stream = null;
  state.previewing = false;
  state.detecting = 0;
  $("#preview-toggle").classList.remove("active");
  $("#video").hidden = true; $("#webcam-off").hidden = false;
  $("#detect-video").hidden = true; $("#detect-off").hidden = false;
  $("#webcam-toggle").textContent = "Start webcam";
  $("#webcam-toggle").classList.remove("active");
}

const canvas = document.createElement("canvas");
canvas.width = canvas.height = FRAME;

function grabFrame() {
  // The centre square of the video, scaled to 256x256, as a JPEG blob.
  const v = $("#video");
  const s = Math.min(v.videoWidth, v.videoHeight);
  if (!s) return Promise.resolve(null);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(v, (v.videoWidth - s) / 2, (v.videoHeight - s) / 2, s, s, 0, 0, FRAME, FRAME);
  return new Promise(resolve => canvas.toBlob(resolve, "image/jpeg", 0.9));
}

async function startRecording(c, card, button) {
  if (state.recording) return;
  // The record object exists from the press on, so a release while the webcam is still
  // starting is not lost.
  const rec = { frames: [], timer: null, sending: Promise.resolve(), held: true, button };
  state.recording = rec;
  button.classList.add("recording");
  button.textContent = "● Recording…";
  rec.flush = () => {
    const batch = rec.frames.splice(0);
    if (!batch.length) return;
    rec.sending = rec.sending.then(() => guarded(() => sendSamples(c, card, batch, "webcam")));
  };
  if (!(await startWebcam()) || !rec.held) { finishRecording(rec); return; }
  rec.timer = setInterval(async () => {
    const b = await grabFrame();
    if (b) rec.frames.push(b);
    if (rec.frames.length >= 4) rec.flush();
  }, 1000 / RECORD_FPS);
}

async function stopRecording(button) {
  const rec = state.recording;
  if (!rec || rec.button !== button) return;
  rec.held = false;
  if (rec.timer !== null) await finishRecording(rec);
}

async function finishRecording(rec) {
  clearInterval(rec.timer);
  if (state.recording === rec) state.recording = null;
  await new Promise(r => setTimeout(r, 150));   // the last grab in flight
  rec.flush();
  rec.button.classList.remove("recording");
  rec.button.textContent = "● Hold to record";
  await rec.sending;
}

// ------------------------------------------------------------------ training
function trainOptions() {
  const head = $("#head").value;
  return {
    head,
    epochs: Number($("#epochs").value),
    lr: Number($("#lr").value),
    k: Number($("#k").value),
    augment: $("#augment").checked,
  };
}

function syncHeadFields() {
  const head = $("#head").value;
  document.querySelectorAll(".dense").forEach(e => { e.hidden = head !== "mlp"; });
  document.querySelectorAll(".knn").forEach(e => { e.hidden = head !== "knn"; });
}

async function train() {
  const pid = state.project.id;
  await guarded(async () => {
    await api("POST", `/api/projects/${pid}/train`, trainOptions());
    pollTraining();
  });
}

function pollTraining() {
  clearTimeout(state.polling);
  const pid = state.project.id;
  const tick = async () => {
    if (!state.project || state.project.id !== pid) return;
    const r = await guarded(() => api("GET", `/api/projects/${pid}/training`));
    if (!r) return;
    showJob(r.job, r.model);
    if (r.job && r.job.state === "training") state.polling = setTimeout(tick, 400);
    else { showModel(r.model); loadProjectList(); }
  };
  tick();
}

async function loadProjectList() {
  const sel = $("#project"); const cur = sel.value;
  const projects = await api("GET", "/api/projects");
  for (const p of projects) {
    const o = [...sel.options].find(o => Number(o.value) === p.id);
    if (o) o.textContent = `${p.name} (${p.samples} images)`;
  }
  sel.value = cur;
}

const STAGES = { starting: "Starting", embedding: "Computing features", augmenting: "Features of augmented copies",
                 fitting: "Fitting the head", evaluating: "Measuring held-out accuracy", saving: "Saving", done: "Done" };

function showJob(job, model) {
  const bar = $("#progress"), status = $("#train-status"), btn = $("#train");
  if (!job) {
    bar.hidden = true;
    status.textContent = model ? `Model ${model.id} ready (${model.options.head}).` : "Not trained yet.";
    btn.disabled = false;
    return;
  }
  if (job.state === "training") {
    bar.hidden = false; btn.disabled = true;
    const frac = job.total ? job.done / job.total : 0;
    $("#progress-bar").style.width = `${Math.round(100 * frac)}%`;
    status.textContent = `${STAGES[job.stage] || job.stage}` + (job.total ? ` ${job.done} / ${job.total}` : "") + "…";
  } else if (job.state === "failed") {
    bar.hidden = true; btn.disabled = false;
    status.textContent = `Training failed: ${job.message}`;
  } else {
    bar.hidden = true; btn.disabled = false;
    const secs = ((job.finished - job.started) || 0).toFixed(1);
    status.textContent = `Trained model ${job.model_id} in ${secs} s. Try it in the preview.`;
  }
}

function showModel(model) {
  const box = $("#results");
  if (!model) { box.hidden = true; return; }
  box.hidden = false;
  const m = model.metrics;
  $("#accuracy").textContent = `${(100 * m.accuracy).toFixed(1)}% on ${m.held_out} images`;
  const per = $("#per-class");
  per.innerHTML = "<tr><th>class</th><th>held out</th><th>accuracy</th></tr>";
  model.classes.forEach((c, i) => {
    const tr = document.createElement("tr");
    const n = m.confusion[i].reduce((a, b) => a + b, 0);
    for (const v of [c, n, `${(100 * m.per_class[c]).toFixed(1)}%`]) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    per.appendChild(tr);
  });
  const conf = $("#confusion");
  conf.innerHTML = "";
  const head = document.createElement("tr");
  head.appendChild(document.createElement("th"));
  for (const c of model.classes) { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); }
  conf.appendChild(head);
  m.confusion.forEach((row, i) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th"); th.textContent = model.classes[i]; tr.appendChild(th);
    row.forEach((v, j) => {
      const td = document.createElement("td"); td.textContent = v;
      td.className = i === j ? "diag" : (v ? "off" : ""); tr.appendChild(td);
    });
    conf.appendChild(tr);
  });
}

// ------------------------------------------------------------------- preview
function clearBars() {
  $("#bars").innerHTML = ""; $("#prediction").textContent = ""; $("#rate").textContent = "";
  $("#preview-note").textContent = "";
}

async function loadBackbones() {
  state.info = await api("GET", "/api/info");
  for (const sel of [$("#new-backbone"), $("#backbone")]) {
    sel.innerHTML = "";
    for (const b of state.info.backbones) {
      const o = document.createElement("option");
      o.value = b.name;
      o.textContent = `${b.name} (${b.input_size} px` + (b.top1 ? `, ImageNet top-1 ${b.top1.toFixed(1)}%)` : ")");
      sel.appendChild(o);
    }
  }
  $("#new-backbone").value = state.info.backbone;
}

async function switchBackbone() {
  const backbone = $("#backbone").value;
  state.project = { ...state.project, ...(await api("PATCH", `/api/projects/${state.project.id}`, { backbone })) };
  $("#backbone-name").textContent = backbone;
  say(`The next training uses ${backbone} (its features are computed then); trained models keep theirs.`, "info");
}

// With no trained model yet, the preview shows ImageNet's top-5 labels from MobileNetV2
// (the lecture's Cozmo demo) instead of the project's classes.
async function hasModel() {
  return Boolean(state.project.model || (await api("GET", `/api/projects/${state.project.id}/training`)).model);
}

function predictPath(pid) { return state.imagenet ? "/api/imagenet" : `/api/projects/${pid}/predict`; }

function imagenetNote() {
  $("#preview-note").textContent = state.imagenet ?
    `No model trained yet: ImageNet's top-5 labels from ${state.info ? state.info.imagenet_model : "MobileNetV2"}.` : "";
}

function showPrediction(r) {
  const box = $("#bars");
  if (box.children.length !== r.classes.length) {
    box.innerHTML = "";
    for (const c of r.classes) {
      const b = document.createElement("div");
      b.className = "bar";
      b.innerHTML = '<div class="label"><span></span><span class="pct"></span></div><div class="track"><div class="fill"></div></div>';
      $(".label span", b).textContent = c;
      box.appendChild(b);
    }
  }
  r.probs.forEach((p, i) => {
    const b = box.children[i];
    $(".label span", b).textContent = r.classes[i];   // ImageNet's top-5 change from frame to frame
    b.classList.toggle("top", r.classes[i] === r.top);
    $(".fill", b).style.width = `${(100 * p).toFixed(1)}%`;
    $(".pct", b).textContent = `${(100 * p).toFixed(0)}%`;
  });
  $("#prediction").textContent = r.top;
}

// With "where it looks" on, the preview asks /looks: the prediction and a Grad-CAM map,
// drawn over the picture on the part of it the model sees (r.box).
function looksOn() { return $("#looks-toggle").checked && !state.imagenet; }
function previewPath(pid) { return looksOn() ? `/api/projects/${pid}/looks` : predictPath(pid); }

function jet(v) {   // 0 blue .. 1 red, as the CLI's figures
  const f = x => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - x))));
  return [f(3), f(2), f(1)];
}

async function drawLooks(image, r) {
  const c = $("#looks");
  if (!r.map) { c.hidden = true; return; }
  const bmp = await createImageBitmap(image);
  const s = Math.min(bmp.width, bmp.height);   // the centre square, as the server takes it
  const ctx = c.getContext("2d");
  ctx.drawImage(bmp, (bmp.width - s) / 2, (bmp.height - s) / 2, s, s, 0, 0, c.width, c.height);
  const h = r.map.length, w = r.map[0].length;
  const small = document.createElement("canvas");
  small.width = w; small.height = h;
  const cells = small.getContext("2d").createImageData(w, h);
  r.map.forEach((row, y) => row.forEach((v, x) => {
    cells.data.set([...jet(v), 120], 4 * (y * w + x));
  }));
  small.getContext("2d").putImageData(cells, 0, 0);
  const [top, left, bh, bw] = r.box;
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(small, left * c.width, top * c.height, bw * c.width, bh * c.height);
  c.hidden = false;
}

async function previewLoop() {
  // Two requests in flight: the next frame is encoded and sent while the server works on
  // the last one, so the rate is set by the slower side, not by both added up.
  const pid = state.project.id;
  const times = [];
  let sent = 0, shown = 0;
  const worker = async () => {
    while (state.previewing && state.project && state.project.id === pid) {
      const frame = await grabFrame();
      if (!frame) { await new Promise(r => setTimeout(r, 50)); continue; }
      const mine = ++sent;
      try {
        const r = await api("POST", previewPath(pid), undefined, frame);
        if (mine < shown || !state.previewing) continue;   // an older frame answered late
        shown = mine;
        showPrediction(r);
        await drawLooks(frame, r);
        const now = performance.now();
        times.push(now);
        while (times.length && now - times[0] > 2000) times.shift();
        if (times.length > 1) $("#rate").textContent =
          `${((times.length - 1) * 1000 / (now - times[0])).toFixed(1)} predictions/s · ${r.ms} ms on the server`;
      } catch (e) {
        say(e.message); state.previewing = false;
      }
    }
  };
  await Promise.all([worker(), worker()]);
  $("#preview-toggle").classList.remove("active");
}

async function togglePreview() {
  if (state.previewing) { state.previewing = false; return; }
  state.imagenet = !(await hasModel());
  if (!(await startWebcam())) return;
  imagenetNote();
  $("#preview-image").hidden = true;
  state.previewing = true;
  $("#preview-toggle").classList.add("active");
  previewLoop();
}

async function classifyFile(file) {
  if (!file) return;
  state.previewing = false;
  const img = $("#preview-image");
  img.src = URL.createObjectURL(file); img.hidden = false;
  await guarded(async () => {
    state.imagenet = !(await hasModel());
    imagenetNote();
    const form = new FormData();
    form.append("file", file);
    const r = await api("POST", previewPath(state.project.id), form);
    showPrediction(r);
    await drawLooks(file, r);
  });
}

// -------------------------------------------------------------------- detect
// The Detect view: faces on the live webcam (as on the lecture's Cozmo). One request at
// a time: the next frame is grabbed when the last answer is drawn, so the boxes lag the
// video by one round trip and the measured rate is what the whole loop achieves.
const detectFrame = document.createElement("canvas");

function grabDetectFrame() {
  // The whole frame, DETECT_WIDTH pixels wide, as a JPEG blob (the server's boxes are in
  // these pixels).
  const v = $("#detect-video");
  if (!v.videoWidth) return Promise.resolve(null);
  detectFrame.width = DETECT_WIDTH;
  detectFrame.height = Math.round(DETECT_WIDTH * v.videoHeight / v.videoWidth);
  detectFrame.getContext("2d").drawImage(v, 0, 0, detectFrame.width, detectFrame.height);
  return new Promise(resolve => detectFrame.toBlob(resolve, "image/jpeg", 0.85));
}

function drawBoxes(r) {
  // The canvas lies over the video at twice the frame's resolution, for sharp labels.
  const c = $("#detect-canvas");
  const k = c.width / r.width;
  if (Math.round(r.height * k) !== c.height) {
    c.height = Math.round(r.height * k);
    $("#detect-stage").style.aspectRatio = `${r.width} / ${r.height}`;
  }
  const ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  ctx.lineWidth = 3;
  ctx.font = "bold 20px system-ui, sans-serif";
  ctx.textBaseline = "bottom";
  for (const b of r.boxes) {
    const [x1, y1, x2, y2] = b.box.map(v => v * k);
    ctx.strokeStyle = "#ffd400";
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${b.label} ${b.score.toFixed(2)}`;
    const w = ctx.measureText(text).width + 8;
    const top = y1 >= 24 ? y1 - 24 : y2;           // above the box, or below it at the top edge
    const left = Math.max(0, Math.min(x1 - 1.5, c.width - w));   // inside at the sides
    ctx.fillStyle = "#ffd400";
    ctx.fillRect(left, top, w, 24);
    ctx.fillStyle = "#111";
    ctx.fillText(text, left + 4, top + 22);
  }
}

function clearDetect() {
  const c = $("#detect-canvas");
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
  const stage = $("#detect-stage");
  stage.dataset.boxes = "[]"; stage.dataset.fps = "0"; stage.dataset.ms = ""; stage.dataset.frames = "0";
  $("#detect-faces").textContent = ""; $("#detect-rate").textContent = "";
}

let detectRuns = 0;

async function detectLoop(run) {
  // `run` ends when state.detecting changes: stopped, or stopped and started again (a
  // loop still waiting for its last answer then ends instead of running beside the new one)
  const stage = $("#detect-stage");
  const times = [];
  let frames = 0;
  while (state.detecting === run && state.stream) {
    const frame = await grabDetectFrame();
    if (!frame) { await new Promise(r => setTimeout(r, 50)); continue; }
    const score = Number($("#detect-score").value);
    try {
      const r = await api("POST", `/api/detect?score=${score}&size=${DETECT_SIZE}`, undefined, frame);
      if (state.detecting !== run) break;
      drawBoxes(r);
      const now = performance.now();
      times.push(now);
      while (times.length && now - times[0] > 2000) times.shift();   // the rate over the last 2 s
      const fps = times.length > 1 ? (times.length - 1) * 1000 / (now - times[0]) : 0;
      stage.dataset.boxes = JSON.stringify(r.boxes);
      stage.dataset.frames = String(++frames);
      stage.dataset.ms = String(r.ms);
      stage.dataset.fps = fps.toFixed(1);
      const n = r.boxes.length;
      $("#detect-faces").textContent = `${n} face${n === 1 ? "" : "s"}`;
      if (times.length > 1) $("#detect-rate").textContent =
        `${fps.toFixed(1)} frames/s · ${r.ms} ms on the server (${r.engine})`;
    } catch (e) {
      if (state.detecting === run) { say(e.message); state.detecting = 0; }
    }
  }
  if (state.detecting === run) state.detecting = 0;
  if (!state.detecting) {   // stopped: no boxes over the live video (the numbers stay)
    const c = $("#detect-canvas");
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
    $("#detect-toggle").textContent = "Start detecting";
    $("#detect-toggle").classList.remove("active");
  }
}

async function toggleDetect() {
  if (state.detecting) { state.detecting = 0; return; }
  if (!(await startWebcam())) return;
  state.previewing = false;   // one live loop at a time: the teach preview stops
  clearDetect();
  state.detecting = ++detectRuns;
  $("#detect-toggle").textContent = "Stop detecting";
  $("#detect-toggle").classList.add("active");
  detectLoop(state.detecting);
}

function showView(view) {
  const detect = view === "detect";
  $("#teach-view").hidden = detect;
  $("#projectbar").hidden = detect;
  $("#detect-view").hidden = !detect;
  $("#tab-teach").setAttribute("aria-selected", String(!detect));
  $("#tab-detect").setAttribute("aria-selected", String(detect));
  if (!detect) state.detecting = 0;
  else state.previewing = false;
  history.replaceState(null, "", detect ? "#detect" : location.pathname + location.search);
}

// -------------------------------------------------------------------- export
async function exportProject() {
  const box = $("#export-result");
  box.textContent = "Exporting…";
  const r = await guarded(() => api("POST", `/api/projects/${state.project.id}/export`));
  if (!r) { box.textContent = ""; return; }
  box.innerHTML = "";
  const p = document.createElement("p");
  p.innerHTML = "Written to <code></code>. Use it with <code></code>";
  p.querySelectorAll("code")[0].textContent = r.dir;
  p.querySelectorAll("code")[1].textContent = `convlab predict ${r.run} IMAGE`;
  box.appendChild(p);
  for (const [label, href] of Object.entries(r.downloads)) {
    const a = document.createElement("a");
    a.href = href; a.textContent = label; a.setAttribute("download", "");
    box.appendChild(a);
  }
}

// --------------------------------------------------------------------- setup
function setup() {
  $("#project").addEventListener("change", e => openProject(Number(e.target.value)));
  $("#new-project").addEventListener("click", () => guarded(newProject));
  $("#first-project").addEventListener("click", () => guarded(newProject));
  $("#rename-project").addEventListener("click", () => guarded(async () => {
    const name = prompt("Project name", state.project.name);
    if (name === null) return;
    await api("PATCH", `/api/projects/${state.project.id}`, { name });
    await loadProjects(state.project.id);
  }));
  $("#delete-project").addEventListener("click", () => guarded(async () => {
    if (!confirm(`Delete project "${state.project.name}" with all its images and models?`)) return;
    await api("DELETE", `/api/projects/${state.project.id}`);
    localStorage.removeItem("convlab.project");
    await loadProjects();
  }));
  $("#add-class").addEventListener("click", () => guarded(async () => {
    const names = new Set(state.project.classes.map(c => c.name));
    [...document.querySelectorAll(".class-name")].forEach(i => names.add(i.value));
    let n = names.size + 1;
    while (names.has(`Class ${n}`)) n++;
    const c = await api("POST", `/api/projects/${state.project.id}/classes`, { name: `Class ${n}` });
    state.project.classes.push(c);
    const card = classCard(c);
    $("#classes").appendChild(card);
    $(".class-name", card).select();
  }));
  $("#import-folder").addEventListener("change", e => guarded(async () => {
    const files = [...e.target.files].filter(f => f.type.startsWith("image/"));
    e.target.value = "";
    const added = {};
    for (let i = 0; i < files.length; i += 32) {
      const form = new FormData();
      for (const f of files.slice(i, i + 32)) {
        const parts = (f.webkitRelativePath || f.name).split("/");
        form.append("files", f, parts.slice(1).join("/"));   // drop the picked folder's own name
      }
      const r = await api("POST", `/api/projects/${state.project.id}/import`, form);
      for (const [k, v] of Object.entries(r.added)) added[k] = (added[k] || 0) + v;
      say(`imported ${i + Math.min(32, files.length - i)} of ${files.length}`, "info");
    }
    await openProject(state.project.id);
  }));
  $("#webcam-toggle").addEventListener("click", () => state.stream ? stopWebcam() : startWebcam());
  $("#head").addEventListener("change", syncHeadFields);
  $("#backbone").addEventListener("change", () => guarded(switchBackbone));
  $("#train").addEventListener("click", train);
  $("#preview-toggle").addEventListener("click", togglePreview);
  const drop = $("#preview-drop");
  drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("drag"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("drag"));
  drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("drag"); classifyFile(e.dataTransfer.files[0]); });
  $("#preview-file").addEventListener("change", e => { classifyFile(e.target.files[0]); e.target.value = ""; });
  $("#export").addEventListener("click", exportProject);
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => showView(tab.dataset.view));
  }
  $("#detect-toggle").addEventListener("click", toggleDetect);
  $("#detect-score").addEventListener("input", e => {
    $("#detect-score-value").textContent = Number(e.target.value).toFixed(2);
  });
  const viewOfUrl = () => showView(location.hash === "#detect" ? "detect" : "teach");
  window.addEventListener("hashchange", viewOfUrl);
  viewOfUrl();
  $("#video").hidden = true;
  syncHeadFields();
  guarded(async () => { await loadBackbones(); await loadProjects(); });
}

setup();
