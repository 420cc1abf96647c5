'use strict';
// The zoom viewer's page. Geometry is in canvas (device) pixels: the whole render at zoom z is
// H x W = round(h z) x round(w z) (rounded as the server rounds) and its top-left corner sits at the
// integer canvas position (ox, oy), so the server's pixels land 1:1 on the canvas.

const canvas = document.getElementById('view');
const ctx = canvas.getContext('2d');
const divider = document.getElementById('divider');
const $ = id => document.getElementById(id);
const DEBOUNCE_MS = 60;  // ask the server once the wheel or the drag pauses this long
const KEY_STEP = 1.25;  // zoom factor per + / - key press

const state = {
  info: null, image: null, zoom: 1, ox: 0, oy: 0, compare: false, split: 0.5,
  tiles: {liif: [], bicubic: []},  // server pixels: {zoom, top, left, height, width, bitmap}
  done: {liif: '', bicubic: ''},  // the view key each mode has fully arrived for
  fetches: {}, error: '', timer: 0,
};

function roundHalfEven(x) {  // Python's round(), which the server uses for the render size
  const r = Math.round(x);
  return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

function renderSize(z) {
  return [roundHalfEven(state.info.height * z), roundHalfEven(state.info.width * z)];
}

function fitZoom() {
  const z = Math.min(canvas.width / state.info.width, canvas.height / state.info.height);
  return Math.min(z, state.info.max_zoom);
}

function fit() {
  state.zoom = fitZoom();
  const [H, W] = renderSize(state.zoom);
  state.ox = Math.floor((canvas.width - W) / 2);
  state.oy = Math.floor((canvas.height - H) / 2);
  changed();
}

function zoomAt(z, x, y) {  // z: the new zoom, within [fit, max]; the canvas point (x, y) stays put
  z = Math.min(Math.max(z, fitZoom()), state.info.max_zoom);
  const [H, W] = renderSize(state.zoom), [H2, W2] = renderSize(z);
  state.ox = Math.round(x - (x - state.ox) * W2 / W);
  state.oy = Math.round(y - (y - state.oy) * H2 / H);
  state.zoom = z;
  changed();
}

function moveTo(ox, oy) {
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

function changed() {  // the view moved: draw the preview now, ask the server after a pause
  const key = viewKey(visibleWindow());
  setStatus(modes().every(m => state.done[m] === key) ? 'ready' : 'rendering');
  draw();
  clearTimeout(state.timer);
  state.timer = setTimeout(requestView, DEBOUNCE_MS);
}

function requestView() {
  const win = visibleWindow(), key = viewKey(win);
  for (const mode of modes()) {
    if (win && state.done[mode] !== key && state.fetches[mode]?.key !== key) fetchView(mode, win, key);
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

function addTile(mode, tile) {  // keep the tiles of this zoom that are still in sight
  const win = visibleWindow();
  state.tiles[mode] = state.tiles[mode].filter(t => t.zoom === state.zoom && win &&
    t.top < win.top + win.height && win.top < t.top + t.height &&
    t.left < win.left + win.width && win.left < t.left + t.width);
  if (tile.zoom === state.zoom) state.tiles[mode].push(tile);
  draw();
}

function updateStatus() {
  const key = viewKey(visibleWindow());
  if (state.error) setStatus('error');
  else setStatus(modes().every(m => state.done[m] === key) ? 'ready' : 'rendering');
}

function setStatus(status) {
  document.body.dataset.status = status;
  $('status').textContent = {ready: 'model pixels', rendering: 'rendering\u2026', error: state.error,
                             loading: 'loading\u2026'}[status];
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

function save() {  // the visible part of the render, as shown, as a PNG download
  const win = visibleWindow();
  if (!win) return;
  const out = document.createElement('canvas');
  out.width = win.width;
  out.height = win.height;
  const c = out.getContext('2d');  // painted again without the checkerboard: an alpha stays transparent
  c.translate(-(state.ox + win.left), -(state.oy + win.top));
  paintAll(c, false);
  out.toBlob(blob => {
    const link = document.createElement('a');
    link.href = URL.createObjectURL(blob);
    const stem = state.info.name.replace(/\.[^.]*$/, '');
    link.download = `${stem}_x${state.zoom.toFixed(2)}${state.compare ? '_compare' : ''}.png`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
  }, 'image/png');
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
  if (e.ctrlKey || e.metaKey || e.altKey || e.target.tagName === 'BUTTON') return;
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

async function start() {
  try {
    state.info = await (await fetch('/info')).json();
    state.image = new Image();
    state.image.src = '/image.png';
    await state.image.decode();
  } catch (e) {
    state.error = `could not load the image: ${e.message}`;
    return setStatus('error');
  }
  $('name').textContent = `${state.info.name} (${state.info.height} x ${state.info.width})`;
  resize();
  fit();
}

window.viewer = {state, zoomAt, moveTo, fit, renderSize, visibleWindow};  // for scripts and tests
start();
