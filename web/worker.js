// The page's renderer, off the main thread: it decodes the image, holds the model (liif.js) and renders
// views and saves window by window, one graph run at a time; a job the page cancels stops at the next run.
import { loadModel } from './liif.js';
import { PngWriter } from './png.js';

const MAX_PIXELS = 50_000_000;  // the largest input opened (200 MB of pixels; each graph run gets a crop of them)
const MAX_SIDE = 16384;  // a canvas side every browser draws
const BAND_PIXELS = 1 << 24;  // a save renders bands of whole rows of at most this many pixels (64 MB)

let model = null, image = null, queue = Promise.resolve();
const jobs = new Map();  // id -> AbortController of a render or save in progress

function exclusive(job) {  // graph runs one after another: one session runs one graph at a time
  const done = queue.then(job);
  queue = done.catch(() => {});
  return done;
}

// [width, height] as a PNG, JPEG or WebP header declares it, or null for another kind of file
function declaredSize(bytes) {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength), text = (at, n) =>
    String.fromCharCode(...bytes.subarray(at, at + n));
  if (bytes.length >= 24 && text(1, 3) === 'PNG') return [v.getUint32(16), v.getUint32(20)];
  if (bytes.length >= 30 && text(0, 4) === 'RIFF' && text(8, 4) === 'WEBP') {
    const kind = text(12, 4);
    if (kind === 'VP8 ') return [v.getUint16(26, true) & 0x3fff, v.getUint16(28, true) & 0x3fff];
    if (kind === 'VP8L') {
      const b = bytes.subarray(21, 25);
      return [1 + (b[0] | (b[1] & 0x3f) << 8), 1 + (b[1] >> 6 | b[2] << 2 | (b[3] & 0xf) << 10)];
    }
    if (kind === 'VP8X') return [1 + (v.getUint32(24, true) & 0xffffff), 1 + (v.getUint32(27, true) & 0xffffff)];
  }
  if (bytes.length >= 4 && bytes[0] === 0xff && bytes[1] === 0xd8) {  // JPEG: the frame header's size
    for (let i = 2; i + 9 < bytes.length && bytes[i] === 0xff;) {
      const marker = bytes[i + 1];
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return [v.getUint16(i + 7), v.getUint16(i + 5)];
      }
      i += 2 + v.getUint16(i + 2);
    }
  }
  return null;
}

async function open({file, name}) {
  const bytes = new Uint8Array(await file.arrayBuffer());
  if (!bytes.length) throw new Error(`${name} is empty`);
  const size = declaredSize(bytes);
  if (!size) throw new Error(`${name} is not a PNG, JPEG or WebP image`);
  const [w, h] = size;
  if (w * h > MAX_PIXELS || Math.max(w, h) > MAX_SIDE) {
    throw new Error(`${name} is ${w} x ${h} pixels: at most ${MAX_PIXELS / 1e6} megapixels and ${MAX_SIDE} a side open here`);
  }
  let bitmap;
  try {  // EXIF orientation applied; the samples as stored (no colour conversion, alpha not premultiplied)
    bitmap = await createImageBitmap(file, {imageOrientation: 'from-image', premultiplyAlpha: 'none',
                                            colorSpaceConversion: 'none'});
  } catch {
    throw new Error(`${name} could not be decoded as an image`);
  }
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  ctx.drawImage(bitmap, 0, 0);
  image = ctx.getImageData(0, 0, bitmap.width, bitmap.height, {colorSpace: 'srgb'});
  let alpha = false;
  for (let i = 3; i < image.data.length && !alpha; i += 4) alpha = image.data[i] !== 255;
  image.alpha = alpha;
  return {bitmap, height: image.height, width: image.width, alpha, transfer: [bitmap]};
}

async function render({id, size, window}) {  // one view piece, as an ImageData
  const signal = jobs.get(id).signal;
  return exclusive(async () => {
    signal.throwIfAborted();
    const start = performance.now();
    const out = await model.render(image, {size, window, signal});
    return {image: out, seconds: (performance.now() - start) / 1000, transfer: [out.data.buffer]};
  });
}

async function save({id, size, window}) {  // a PNG of the window, band by band, with progress
  const signal = jobs.get(id).signal;
  const [top, left, height, width] = window;
  const rows = Math.max(1, Math.min(height, Math.floor(BAND_PIXELS / width)));
  const png = new PngWriter(width, height, image.alpha), start = performance.now();
  try {
    for (let r = 0; r < height; r += rows) {
      const band = [top + r, left, Math.min(rows, height - r), width];
      const onProgress = done => postMessage({type: 'progress', id, done: r * width + done, total: height * width});
      const out = await exclusive(() => { signal.throwIfAborted(); return model.render(image, {size, window: band, signal, onProgress}); });
      await png.addRows(out);
    }
    return {blob: await png.finish(), seconds: (performance.now() - start) / 1000};
  } catch (e) {
    png.abort();
    throw e;
  }
}

async function load({url, backend}) {
  model = await loadModel(url || undefined, backend ? {backend} : {});
  return {backend: model.backend, threads: model.threads, fallback: model.fallback};
}

const handlers = {load, open, render, save};

onmessage = async ({data}) => {
  if (data.type === 'cancel') return jobs.get(data.id)?.abort();
  jobs.set(data.id, new AbortController());
  try {
    const {transfer = [], ...result} = await handlers[data.type](data);
    postMessage({id: data.id, ok: true, ...result}, transfer);
  } catch (e) {
    postMessage({id: data.id, ok: false, cancelled: e.name === 'AbortError', message: e.message || String(e)});
  } finally {
    jobs.delete(data.id);
  }
};
