// The zoom viewer's page, with one of two engines: scripts/viewer.py's server renders the views
// (`/info` says so), or the browser does, in a Web Worker running liif.js (the static site of
// scripts/export_web.py, or viewer.py with --engine=browser). Geometry is in canvas (device) pixels:
// the whole render at zoom z is H x W = round(h z) x round(w z) (rounded as inference.py rounds) and
// its top-left corner sits at the integer canvas position (ox, oy), so the model's pixels land 1:1.
import { outputSize } from './geometry.js';

const canvas = document.getElementById('view');
const ctx = canvas.getContext('2d');
const divider = document.getElementById('divider');
const $ = id => document.getElementById(id);
const DEBOUNCE_MS = 60;  // ask the server once the wheel or the drag pauses this long
const KEY_STEP = 1.25;  // zoom factor per + / - key press
const TILE = 256;  // the browser engine renders a view in tiles of the whole render's TILE x TILE grid
const MAX_ZOOM = 32;  // as viewer.py's MAX_ZOOM
// Below x1 the browser engine shows the browser's scaling only: a tile there reads (and encodes) an LR
// region of more than its own pixels, up to the whole image at fit.
const MIN_LIIF_ZOOM = 1;

const state = {
  info: null, image: null, zoom: 1, ox: 0, oy: 0, compare: false, split: 0.5,
  tiles: {liif: [], bicubic: []},  // server pixels: {zoom, top, left, height, width, bitmap}
  done: {liif: '', bicubic: ''},  // the view key each mode has fully arrived for
  fetches: {}, error: '', timer: 0,
  worker: null, model: null, modelError: '', pending: new Map(), saving: null, speed: '',  // the browser engine
};

function renderSize(z) {
  return outputSize(state.info.height, state.info.width, {scale: z});
}

function fitZoom() {
  const z = Math.min(canvas.width / state.info.width, canvas.height / state.info.height);
  return Math.min(z, state.info.max_zoom);
}

function fit() {
  if (!state.info) return;
  resize();  // the bar's text may have changed the stage's size
  state.zoom = fitZoom();
  const [H, W] = renderSize(state.zoom);
  state.ox = Math.floor((canvas.width - W) / 2);
  state.oy = Math.floor((canvas.height - H) / 2);
  changed();
}

function zoomAt(z, x, y) {  // z: the new zoom, within [fit, max]; the canvas point (x, y) stays put
  if (!state.info) return;
  z = Math.min(Math.max(z, fitZoom()), state.info.max_zoom);
  const [H, W] = renderSize(state.zoom), [H2, W2] = renderSize(z);
  state.ox = Math.round(x - (x - state.ox) * W2 / W);
  state.oy = Math.round(y - (y - state.oy) * H2 / H);
  state.zoom = z;
  changed();
}

function moveTo(ox, oy) {
  if (!state.info) return;
  state.ox = Math.round(ox);
  state.oy = Math.round(oy);
  changed();
}

function visibleWindow() {  // the part of the render on the canvas, or null
  const [H, W] = renderSize(state.zoom);
  const top = Math.max(0, -state.oy), left = Math.max(0, -state.ox);
  const bottom = Math.min(H, canvas.height - state.oy), right = Math.min(W, canvas.width - state.ox);
  if (bottom <= top || right <= left) return null;
  return {zoom: state.zoom, top, left, height: bottom - top, width: right - left};
}

function viewKey(win) {
  return win ? `${win.zoom} ${win.top} ${win.left} ${win.height} ${win.width}` : '';
}

function modes() {
  return state.compare ? ['liif', 'bicubic'] : ['liif'];
}

function changed() {  // the view moved: draw the preview now, ask for the model's pixels after a pause
  if (!state.info) return;
  updateStatus();
  draw();
  clearTimeout(state.timer);
  state.timer = setTimeout(requestView, DEBOUNCE_MS);
}

function requestView() {
  if (!state.info) return;
  const win = visibleWindow(), key = viewKey(win);
  if (state.worker) {
    if (state.model) renderTiles(win && win.zoom >= MIN_LIIF_ZOOM ? win : null, key);
  } else {
    for (const mode of modes()) {
      if (win && state.done[mode] !== key && state.fetches[mode]?.key !== key) fetchView(mode, win, key);
    }
  }
  updateStatus();
}

async function fetchView(mode, win, key) {
  // the window in bands within the server's pixel cap, one after another, each drawn as it arrives
  state.fetches[mode]?.controller.abort();
  const fetching = {key, controller: new AbortController()};
  state.fetches[mode] = fetching;
  const rows = Math.max(1, Math.floor(state.info.max_view_pixels / win.width));
  try {
    for (let top = win.top; top < win.top + win.height; top += rows) {
      const band = {...win, top, height: Math.min(rows, win.top + win.height - top)};
      const query = new URLSearchParams({mode, zoom: band.zoom, top: band.top, left: band.left,
                                         height: band.height, width: band.width});
      const response = await fetch('/render?' + query, {signal: fetching.controller.signal});
      if (response.status === 409) return;  // superseded: a newer view is on its way
      if (!response.ok) throw new Error((await response.json()).error);
      const bitmap = await createImageBitmap(await response.blob(),
                                             {colorSpaceConversion: 'none', premultiplyAlpha: 'none'});
      addTile(mode, {...band, bitmap});
    }
    state.done[mode] = key;
    state.error = '';
  } catch (e) {
    if (e.name !== 'AbortError') state.error = `${mode}: ${e.message}`;
  } finally {
    if (state.fetches[mode] === fetching) delete state.fetches[mode];
    updateStatus();
  }
}

// ------------------------------------------------------------------ the browser engine (worker.js)

let jobs = 0;
const replies = new Map();  // job id -> {resolve, reject, progress}

function call(type, data = {}, transfer = [], progress = null) {  // a worker job: {id, done: a promise}
  const id = ++jobs;
  const done = new Promise((resolve, reject) => replies.set(id, {resolve, reject, progress}));
  state.worker.postMessage({type, id, ...data}, transfer);
  return {id, done};
}

function onWorkerMessage({data}) {
  const reply = replies.get(data.id);
  if (!reply) return;
  if (data.type === 'progress') return reply.progress?.(data.done, data.total);
  replies.delete(data.id);
  if (data.ok) reply.resolve(data);
  else reply.reject(Object.assign(new Error(data.message), {cancelled: data.cancelled}));
}

function gridTiles(win) {  // the TILE grid's cells of the whole render that the window touches
  const [H, W] = renderSize(win.zoom), cells = [];
  for (let top = Math.floor(win.top / TILE) * TILE; top < win.top + win.height; top += TILE) {
    for (let left = Math.floor(win.left / TILE) * TILE; left < win.left + win.width; left += TILE) {
      cells.push({zoom: win.zoom, top, left, height: Math.min(TILE, H - top), width: Math.min(TILE, W - left)});
    }
  }
  return cells;
}

function renderTiles(win, key) {  // render the view's missing tiles; cancel those it no longer needs
  const cells = win ? gridTiles(win) : [], wanted = new Set(cells.map(viewKey));
  for (const [k, id] of state.pending) {
    if (!wanted.has(k)) {
      state.worker.postMessage({type: 'cancel', id});
      state.pending.delete(k);
    }
  }
  const have = new Set(state.tiles.liif.map(viewKey));
  const missing = cells.filter(c => !have.has(viewKey(c)));
  if (!missing.length) state.done.liif = key;  // also below MIN_LIIF_ZOOM: the preview is the view
  for (const cell of missing.filter(c => !state.pending.has(viewKey(c)))) renderTile(cell, key);
}

async function renderTile(cell, key) {
  const {id, done} = call('render', {size: renderSize(cell.zoom), window: [cell.top, cell.left, cell.height, cell.width]});
  state.pending.set(viewKey(cell), id);
  try {
    const reply = await done;
    state.speed = `${(cell.height * cell.width / 1e6 / reply.seconds).toFixed(3)} MP/s`;
    addTile('liif', {...cell, bitmap: await createImageBitmap(reply.image)});
    const now = visibleWindow(), have = new Set(state.tiles.liif.map(viewKey));
    if (now && viewKey(now) === key && gridTiles(now).every(c => have.has(viewKey(c)))) state.done.liif = key;
  } catch (e) {
    if (!e.cancelled) state.error = e.message;
  } finally {
    if (state.pending.get(viewKey(cell)) === id) state.pending.delete(viewKey(cell));
    updateStatus();
  }
}

async function startWorker(info) {  // the model in a worker; an image from the server when it has one
  state.worker = new Worker(new URL('worker.js', import.meta.url), {type: 'module'});
  state.worker.onmessage = onWorkerMessage;
  for (const e of document.querySelectorAll('.browser')) e.hidden = false;
  $('compare').hidden = true;  // bicubic beside LIIF is the server's (PIL's own resize)
  const params = new URLSearchParams(location.search);
  const loading = call('load', {url: params.get('model') || '', backend: params.get('backend') || ''}).done;
  if (info) await openFile(await (await fetch('image.png')).blob(), info.name);
  else {
    $('hint').hidden = false;
    setStatus('empty');
  }
  try {
    state.model = await loading;
  } catch (e) {
    state.modelError = e.message;
  }
  updateStatus();
  requestView();
}

function engineName() {
  const m = state.model;
  return !m ? '' : m.backend === 'webgpu' ? 'WebGPU' : `WebAssembly, ${m.threads} thread${m.threads > 1 ? 's' : ''}`;
}

async function openFile(file, name = file.name) {  // decode in the worker; a bad file leaves the page as it was
  try {
    const reply = await call('open', {file, name}).done;
    for (const id of state.pending.values()) state.worker.postMessage({type: 'cancel', id});
    state.pending.clear();
    state.info = {name, height: reply.height, width: reply.width, max_zoom: MAX_ZOOM};
    state.image = reply.bitmap;
    state.tiles.liif = [];
    state.done.liif = '';
    state.error = '';
    $('hint').hidden = true;
    $('name').textContent = `${name} (${reply.height} x ${reply.width})`;
    fit();
  } catch (e) {
    state.error = e.message;
    updateStatus();
  }
}

function saveSize(text) {  // 'x2.5' (a scale) or '1080x1920' (height x width) -> [H, W]
  const scale = text.match(/^\s*x\s*([0-9.]+)\s*$/i), size = text.match(/^\s*(\d+)\s*x\s*(\d+)\s*$/i);
  if (scale && Number(scale[1]) > 0) return outputSize(state.info.height, state.info.width, {scale: Number(scale[1])});
  if (size && Number(size[1]) > 0 && Number(size[2]) > 0) return [Number(size[1]), Number(size[2])];
  throw new Error(`save as: ${JSON.stringify(text)} is neither x<scale> (x2.5) nor <height>x<width> (1080x1920)`);
}

async function saveRender(size, window, filename) {  // render in the worker, as a PNG download, with progress
  if (!state.model || state.saving) return;
  const progress = $('progress');
  const job = call('save', {size, window}, [], (done, total) => { progress.max = total; progress.value = done; });
  state.saving = job.id;
  progress.hidden = $('cancel').hidden = false;
  progress.removeAttribute('value');
  try {
    const reply = await job.done;
    state.speed = `${(window[2] * window[3] / 1e6 / reply.seconds).toFixed(3)} MP/s`;
    download(reply.blob, filename);
  } catch (e) {
    if (!e.cancelled) state.error = `save: ${e.message}`;
  } finally {
    state.saving = null;
    progress.hidden = $('cancel').hidden = true;
    updateStatus();
  }
}

function saveImage() {
  if (!state.info) return;
  try {
    const [H, W] = saveSize($('save-as').value);
    saveRender([H, W], [0, 0, H, W], `${stem()}_${H}x${W}.png`);
  } catch (e) {
    state.error = e.message;
    updateStatus();
  }
}

function cancelSave() {
  if (state.saving) state.worker.postMessage({type: 'cancel', id: state.saving});
}

// ------------------------------------------------------------------ drawing

function addTile(mode, tile) {  // keep the tiles of this zoom that are still in sight
  const win = visibleWindow();
  state.tiles[mode] = state.tiles[mode].filter(t => t.zoom === state.zoom && win &&
    t.top < win.top + win.height && win.top < t.top + t.height &&
    t.left < win.left + win.width && win.left < t.left + t.width);
  if (tile.zoom === state.zoom) state.tiles[mode].push(tile);
  draw();
}

function updateStatus() {
  if (state.error || state.modelError) setStatus('error');
  else if (!state.info) setStatus(state.worker ? 'empty' : 'loading');
  else {
    const key = viewKey(visibleWindow());
    setStatus(modes().every(m => state.done[m] === key) ? 'ready' : 'rendering');
  }
  if (state.model) {
    const note = state.model.fallback ? ` (${state.model.fallback})` : '';
    $('engine').textContent = [engineName() + note, state.speed].filter(Boolean).join(' \u00b7 ');
  }
}

function setStatus(status) {
  document.body.dataset.status = status;
  $('status').textContent = {ready: 'model pixels', rendering: 'rendering\u2026', error: state.error || state.modelError,
                             loading: 'loading\u2026', empty: ''}[status];
}

// a checkerboard under the image shows its transparency (an alpha channel); Save view leaves it out
const checker = (() => {
  const tile = document.createElement('canvas');
  tile.width = tile.height = 16;
  const c = tile.getContext('2d');
  c.fillStyle = '#999';
  c.fillRect(0, 0, 16, 16);
  c.fillStyle = '#666';
  c.fillRect(0, 0, 8, 8);
  c.fillRect(8, 8, 8, 8);
  return ctx.createPattern(tile, 'repeat');
})();

function paint(mode, c = ctx, backdrop = true) {  // the browser's scaling of the input, then the server's pixels over it
  const win = visibleWindow();
  if (!win) return;
  const [H, W] = renderSize(state.zoom);
  const sy = state.info.height / H, sx = state.info.width / W;
  const under = (x, y, w, h) => {  // what a (transparent) layer is drawn on: the checkerboard, or nothing
    if (backdrop) { c.fillStyle = checker; c.fillRect(x, y, w, h); } else c.clearRect(x, y, w, h);
  };
  under(state.ox + win.left, state.oy + win.top, win.width, win.height);
  c.imageSmoothingEnabled = true;
  c.imageSmoothingQuality = 'high';
  c.drawImage(state.image, win.left * sx, win.top * sy, win.width * sx, win.height * sy,
              state.ox + win.left, state.oy + win.top, win.width, win.height);
  for (const t of state.tiles[mode]) {
    if (t.zoom !== state.zoom) continue;
    under(state.ox + t.left, state.oy + t.top, t.bitmap.width, t.bitmap.height);  // not over the preview
    c.drawImage(t.bitmap, state.ox + t.left, state.oy + t.top);
  }
}

function paintAll(c = ctx, backdrop = true) {  // the LIIF view, and bicubic right of the divider in compare mode
  paint('liif', c, backdrop);
  if (!state.compare) return;
  const x = Math.round(state.split * canvas.width);
  c.save();
  c.beginPath();
  c.rect(x, 0, canvas.width - x, canvas.height);
  c.clip();
  paint('bicubic', c, backdrop);
  c.restore();
}

function draw() {
  ctx.fillStyle = '#1e1e1e';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!state.info) return;
  paintAll();
  divider.hidden = !state.compare;
  if (state.compare) divider.style.left = `${Math.round(state.split * canvas.width) / devicePixelRatio}px`;
  const [H, W] = renderSize(state.zoom);
  $('zoom').textContent = `x${state.zoom.toFixed(2)}`;
  $('size').textContent = `output ${H} x ${W} px (h x w)`;
}

function canvasPoint(e) {
  const rect = canvas.getBoundingClientRect();
  return [(e.clientX - rect.left) * devicePixelRatio, (e.clientY - rect.top) * devicePixelRatio];
}

function resize() {  // the canvas in device pixels, so that one render pixel is one screen pixel
  canvas.width = Math.max(1, Math.round(canvas.clientWidth * devicePixelRatio));
  canvas.height = Math.max(1, Math.round(canvas.clientHeight * devicePixelRatio));
}

function stem() {
  return state.info.name.replace(/\.[^.]*$/, '');
}

function download(blob, filename) {
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  link.click();
  setTimeout(() => URL.revokeObjectURL(link.href), 60000);
}

function save() {  // the visible part of the render as a PNG download: rendered again in the browser, or as shown
  const win = visibleWindow();
  if (!win) return;
  const filename = `${stem()}_x${state.zoom.toFixed(2)}${state.compare ? '_compare' : ''}.png`;
  if (state.worker) return saveRender(renderSize(win.zoom), [win.top, win.left, win.height, win.width], filename);
  const out = document.createElement('canvas');
  out.width = win.width;
  out.height = win.height;
  const c = out.getContext('2d');  // painted again without the checkerboard: an alpha stays transparent
  c.translate(-(state.ox + win.left), -(state.oy + win.top));
  paintAll(c, false);
  out.toBlob(blob => download(blob, filename), 'image/png');
}

// pointers: one drags the image, two pinch; the divider drags on its own
const pointers = new Map();
let drag = null;

function startDrag() {
  const [p] = pointers.values();
  drag = p ? {x: p[0], y: p[1], ox: state.ox, oy: state.oy} : null;
}

canvas.addEventListener('pointerdown', e => {
  canvas.setPointerCapture(e.pointerId);
  canvas.classList.add('dragging');
  pointers.set(e.pointerId, [e.clientX, e.clientY]);
  startDrag();
});
canvas.addEventListener('pointermove', e => {
  const old = pointers.get(e.pointerId);
  if (!old) return;
  pointers.set(e.pointerId, [e.clientX, e.clientY]);
  if (pointers.size === 1) {
    moveTo(drag.ox + (e.clientX - drag.x) * devicePixelRatio, drag.oy + (e.clientY - drag.y) * devicePixelRatio);
  } else if (pointers.size === 2) {
    const [other] = [...pointers].filter(([id]) => id !== e.pointerId).map(([, p]) => p);
    const before = Math.hypot(old[0] - other[0], old[1] - other[1]);
    const after = Math.hypot(e.clientX - other[0], e.clientY - other[1]);
    const [x, y] = canvasPoint({clientX: (e.clientX + other[0]) / 2, clientY: (e.clientY + other[1]) / 2});
    if (before > 0) zoomAt(state.zoom * after / before, x, y);
  }
});
for (const type of ['pointerup', 'pointercancel']) {
  canvas.addEventListener(type, e => {
    pointers.delete(e.pointerId);
    startDrag();
    if (!pointers.size) canvas.classList.remove('dragging');
  });
}
canvas.addEventListener('wheel', e => {
  e.preventDefault();
  const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? canvas.clientHeight : 1;
  const speed = e.ctrlKey ? 0.01 : 0.002;  // ctrlKey: a trackpad pinch, whose steps are small
  const [x, y] = canvasPoint(e);
  zoomAt(state.zoom * Math.exp(-e.deltaY * unit * speed), x, y);
}, {passive: false});

divider.addEventListener('pointerdown', e => divider.setPointerCapture(e.pointerId));
divider.addEventListener('pointermove', e => {
  if (!divider.hasPointerCapture(e.pointerId)) return;
  state.split = Math.min(1, Math.max(0, canvasPoint(e)[0] / canvas.width));
  draw();
});

window.addEventListener('keydown', e => {
  if (e.ctrlKey || e.metaKey || e.altKey || ['BUTTON', 'INPUT'].includes(e.target.tagName) || !state.info) return;
  const centre = [canvas.width / 2, canvas.height / 2];
  if (e.key === '+' || e.key === '=') zoomAt(state.zoom * KEY_STEP, ...centre);
  else if (e.key === '-' || e.key === '_') zoomAt(state.zoom / KEY_STEP, ...centre);
  else if (e.key === '0') fit();
  else return;
  e.preventDefault();
});
window.addEventListener('resize', () => { resize(); changed(); });
$('fit').addEventListener('click', fit);
$('save').addEventListener('click', save);
$('compare').addEventListener('click', () => {
  state.compare = !state.compare;
  $('compare').setAttribute('aria-pressed', String(state.compare));
  changed();
});

$('open').addEventListener('click', () => $('file').click());
$('file').addEventListener('change', () => $('file').files[0] && openFile($('file').files[0]));
$('save-image').addEventListener('click', saveImage);
$('cancel').addEventListener('click', cancelSave);
document.addEventListener('dragover', e => {
  e.preventDefault();
  document.body.classList.toggle('dropping', Boolean(state.worker));
});
document.addEventListener('dragleave', () => document.body.classList.remove('dropping'));
document.addEventListener('drop', e => {
  e.preventDefault();
  document.body.classList.remove('dropping');
  const file = e.dataTransfer.files[0];
  if (file && state.worker) openFile(file);
});

async function isolate() {  // true when the page reloads under sw.js to become cross-origin isolated
  if (crossOriginIsolated || !navigator.serviceWorker || sessionStorage.getItem('isolating')) return false;
  sessionStorage.setItem('isolating', '1');  // once: a browser that keeps it off still gets the page
  try {
    await navigator.serviceWorker.register('sw.js');
    await navigator.serviceWorker.ready;
  } catch {
    return false;
  }
  location.reload();
  return true;
}

async function serverInfo() {  // viewer.py's /info; null on a static host
  try {
    const response = await fetch('info');
    return response.ok && response.headers.get('Content-Type') === 'application/json' ? await response.json() : null;
  } catch {
    return null;
  }
}

async function start() {
  const info = await serverInfo();
  if (info?.engine !== 'server') {
    if (await isolate()) return;
    sessionStorage.removeItem('isolating');
    return startWorker(info);
  }
  try {
    state.image = new Image();
    state.image.src = 'image.png';
    await state.image.decode();
  } catch (e) {
    state.error = `could not load the image: ${e.message}`;
    return setStatus('error');
  }
  state.info = info;
  $('name').textContent = `${state.info.name} (${state.info.height} x ${state.info.width})`;
  fit();
}

window.viewer = {state, zoomAt, moveTo, fit, renderSize, visibleWindow, requestView, openFile, saveImage, cancelSave};  // for scripts and tests
start();
