// The LIIF engine as an ES module: the exported ONNX graph (scripts/export_onnx.py) in onnxruntime-web,
// on WebGPU or WebAssembly. A render is cut into windows that each fit the backend's memory, and each
// window is one graph run fed only the crop of the image it reads, so any size renders in bounded memory.
//
//   import { loadModel } from './liif.js';
//   const model = await loadModel();   // or loadModel(url, {backend: 'webgpu' | 'wasm'})
//   const out = await model.render(imageData, {size: [H, W], window: [top, left, height, width]});
import * as ort from './ort/ort.webgpu.min.mjs';
import { checkWindow, lrCrop, outputSize, splitWindow } from './geometry.js';

ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
ort.env.logLevel = 'error';

// The graph's widest tensor per output pixel and image: 4 ensemble members x 4 decoder inputs, fp32 (the
// decoder's 256-wide activations are those of one of the run's blocks, a 256th of it).
const BYTES_PER_QUERY = 4 * 4 * 4;
const WASM_QUERIES = 1 << 18;  // onnx_model.WINDOW_QUERIES: 512 x 512 windows
const GPU_BUFFER_SHARE = 0.5;  // a window's activations use at most half of the adapter's largest buffer

export const threadsAvailable = () =>
  globalThis.crossOriginIsolated ? Math.max(1, navigator.hardwareConcurrency || 1) : 1;

async function fetchModel(url) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`could not load the model ${url}: ${e.message}`);
  }
  if (!response.ok) throw new Error(`could not load the model ${url}: HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

async function gpuAdapter() {  // the adapter, or the reason there is none
  if (!globalThis.navigator?.gpu) return [null, 'this browser has no WebGPU'];
  try {
    const adapter = await navigator.gpu.requestAdapter();
    return adapter ? [adapter, ''] : [null, 'no WebGPU adapter'];
  } catch (e) {
    return [null, `WebGPU failed: ${e.message}`];
  }
}

async function session(bytes, backend) {
  try {
    return await ort.InferenceSession.create(bytes, {executionProviders: [backend], graphOptimizationLevel: 'all'});
  } catch (e) {
    throw new Error(`the model does not load in onnxruntime-web (${backend}): ${String(e.message || e).slice(0, 300)}`);
  }
}

// The ONNX file's metadata (ModelProto's metadata_props, field 14: entries of key 1 and value 2), read
// from its protobuf encoding: onnxruntime-web does not expose it
function onnxMetadata(bytes) {
  const text = new TextDecoder(), props = {};
  const fields = (start, end, visit) => {  // visit(field, start, end) for each length-delimited field
    let at = start;
    const varint = () => {
      let value = 0, unit = 1, b;
      do { b = bytes[at++]; value += (b & 127) * unit; unit *= 128; } while (b >= 128);
      return value;
    };
    while (at < end) {
      const key = varint(), type = key % 8;
      if (type === 2) {
        const n = varint();
        visit(Math.floor(key / 8), at, at + n);
        at += n;
      } else if (type === 0) varint();
      else if (type === 1 || type === 5) at += type === 1 ? 8 : 4;
      else break;  // not protobuf: the caller finds no entries
    }
  };
  fields(0, bytes.length, (field, start, end) => {
    if (field !== 14) return;
    const entry = {};
    fields(start, end, (f, a, b) => { entry[f] = text.decode(bytes.subarray(a, b)); });
    props[entry[1]] = entry[2];
  });
  return props;
}

// The model at `url` (default: the site's liif.onnx beside this module) on `backend` ('webgpu' or
// 'wasm'; default WebGPU where there is an adapter). WebGPU that is missing or fails falls back to
// WebAssembly; `fallback` then says why. `threads`: WebAssembly threads (default: all cores when the
// page is cross-origin isolated, else 1; fixed by the first model loaded in a page).
export async function loadModel(url = new URL('./liif.onnx', import.meta.url).href,
                                {backend = 'webgpu', threads = threadsAvailable()} = {}) {
  if (!['webgpu', 'wasm'].includes(backend)) throw new Error(`backend must be 'webgpu' or 'wasm', got ${backend}`);
  ort.env.wasm.numThreads = threads;
  const bytes = await fetchModel(url);
  let fallback = '', made = null;
  if (backend === 'webgpu') {
    const [adapter, reason] = await gpuAdapter();
    if (adapter) {
      try {
        const queries = Math.floor(GPU_BUFFER_SHARE * adapter.limits.maxBufferSize / BYTES_PER_QUERY);
        made = new Model(await session(bytes, 'webgpu'), 'webgpu', Math.min(WASM_QUERIES, queries), '',
                         adapter.limits.maxStorageBufferBindingSize);
      } catch (e) {
        fallback = e.message;
      }
    } else fallback = reason;
  }
  made ??= new Model(await session(bytes, 'wasm'), 'wasm', WASM_QUERIES, fallback, Infinity);
  const reach = Number(onnxMetadata(bytes).liif_reach);
  if (!Number.isInteger(reach)) {
    throw new Error(`the model ${url} was not written by this version of scripts/export_onnx.py: export it again`);
  }
  made.reach = reach;
  return made;
}

class Model {
  constructor(session, backend, queries, fallback, maxInputBytes) {
    this.session = session;
    this.backend = backend;  // 'webgpu' or 'wasm', whichever runs
    this.queries = queries;  // output pixels per graph run and image
    this.fallback = fallback;  // why WebGPU was asked for and WebAssembly runs, or ''
    this.threads = backend === 'wasm' ? ort.env.wasm.numThreads : 0;
    this.gray = new WeakMap();  // ImageData -> whether its alpha is rendered too (not constant)
    this.maxInputBytes = maxInputBytes;  // a graph run's LR crop: on a GPU, one buffer binding
    this.reach = 0;  // LR pixels a window reads beyond its scaled extent (the file's liif_reach)
  }

  // The window [top, left, height, width] (default: all) of the render at `size` [H, W], or at `scale`
  // (H, W rounded as inference.py rounds them), as an 8-bit RGBA ImageData. An alpha that is not
  // constant is rendered as a gray image in the same graph runs (inference.py's --alpha=model).
  // signal: an AbortSignal checked between graph runs; onProgress(done, total) in output pixels.
  async render(image, {size, scale, window, signal, onProgress} = {}) {
    if (!size && scale === undefined) throw new Error('render needs {size: [H, W]} or {scale: s}');
    const whole = outputSize(image.height, image.width, {scale, size});
    const [top, left, height, width] = checkWindow(window, whole);
    const gray = this.alphaRendered(image), batch = gray ? 2 : 1;
    const out = new ImageData(width, height);
    // pieces within the queries and, at down-scales, with an LR crop well within the input limit
    const lrPerPixel = Math.max(1, image.height / whole[0] * image.width / whole[1]);
    const pixels = Math.min(this.queries, this.maxInputBytes / (2 * 12 * lrPerPixel)) / batch;
    let done = 0;
    for (const [r, c, h, w] of splitWindow(height, width, Math.max(1, Math.floor(pixels)))) {
      // a graph run may finish without the event loop turning: give it a turn, so that an abort sent
      // by a message (the page cancelling) lands before the next run
      if (signal) await new Promise(resolve => setTimeout(resolve));
      signal?.throwIfAborted();
      const sr = await this.run(image, whole, [top + r, left + c, h, w]);
      writePiece(out, sr, [r, c, h, w], gray ? null : image.data[3]);
      sr.dispose();
      done += h * w;
      onProgress?.(done, height * width);
    }
    return out;
  }

  // One graph run: the float32 tensor `sr` (B, 3, height, width) of `window` in the render at `size`,
  // fed the crop of the image it reads (B = 2 when the alpha is rendered too)
  async run(image, size, window) {
    const int64 = values => new ort.Tensor('int64', BigInt64Array.from(values, BigInt), [values.length]);
    const box = lrCrop(size, window, [image.height, image.width], this.reach);
    const feeds = {lr: this.crop(image, this.alphaRendered(image), box), lr_frame: int64([box[0], box[1], image.height, image.width]),
                   size: int64(size), window: int64(window)};
    return (await this.session.run(feeds)).sr;
  }

  alphaRendered(image) {
    let gray = this.gray.get(image);
    if (gray === undefined) {
      const data = image.data;
      gray = false;
      for (let i = 7; i < data.length && !gray; i += 4) gray = data[i] !== data[3];
      this.gray.set(image, gray);
    }
    return gray;
  }

  // lr (B, 3, bottom - top, right - left) in [0, 1]: the RGB of the box, and its alpha as gray when `gray`
  crop(image, gray, [top, left, bottom, right]) {
    const h = bottom - top, w = right - left, n = h * w, bytes = (gray ? 6 : 3) * 4 * n;
    if (bytes > this.maxInputBytes) {
      throw new Error(`this window reads a ${w} x ${h} region of the image, a ${Math.round(bytes / 2 ** 20)} MB graph ` +
                      `input, more than this GPU binds at once (${Math.round(this.maxInputBytes / 2 ** 20)} MB)`);
    }
    const lr = new Float32Array(bytes / 4), data = image.data;
    for (let y = 0; y < h; y++) {
      for (let x = 0, i = y * w, o = 4 * ((top + y) * image.width + left); x < w; x++, i++, o += 4) {
        for (let k = 0; k < 3; k++) lr[k * n + i] = data[o + k] / 255;
        if (gray) lr[3 * n + i] = lr[4 * n + i] = lr[5 * n + i] = data[o + 3] / 255;
      }
    }
    return new ort.Tensor('float32', lr, [gray ? 2 : 1, 3, h, w]);
  }
}
const toByte = v => Math.floor(Math.min(1, Math.max(0, v)) * 255 + 0.5);  // imgproc.to_integer

// Graph output `sr` (B, 3, h, w) into `out` at (r, c); the alpha: constant, or the mean of image 2's channels
function writePiece(out, sr, [r, c, h, w], alpha) {
  const v = sr.data, n = h * w, stride = out.width;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x, o = 4 * ((r + y) * stride + c + x);
      out.data[o] = toByte(v[i]);
      out.data[o + 1] = toByte(v[n + i]);
      out.data[o + 2] = toByte(v[2 * n + i]);
      out.data[o + 3] = alpha === null ? toByte((v[3 * n + i] + v[4 * n + i] + v[5 * n + i]) / 3) : alpha;
    }
  }
}
