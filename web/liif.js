// The LIIF engine as an ES module: the exported ONNX graph (scripts/export_onnx.py) in onnxruntime-web,
// on WebGPU or WebAssembly. A render is cut into windows that each fit the backend's memory, and each
// window is one graph run, so any output size renders in bounded memory.
//
//   import { loadModel } from './liif.js';
//   const model = await loadModel();   // or loadModel(url, {backend: 'webgpu' | 'wasm'})
//   const out = await model.render(imageData, {size: [H, W], window: [top, left, height, width]});
import * as ort from './ort/ort.webgpu.min.mjs';
import { checkWindow, outputSize, splitWindow } from './geometry.js';

ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
ort.env.logLevel = 'error';

// The graph's widest activation per output pixel and image: 4 ensemble members x 256 channels, fp32.
const BYTES_PER_QUERY = 4 * 256 * 4;
const WASM_QUERIES = 1 << 16;  // onnx_model.WINDOW_QUERIES: 256 x 256 windows, ~1 GB of WebAssembly's 4 GB
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

// The model at `url` (default: the site's liif.onnx beside this module) on `backend` ('webgpu' or
// 'wasm'; default WebGPU where there is an adapter). WebGPU that is missing or fails falls back to
// WebAssembly; `fallback` then says why. `threads`: WebAssembly threads (default: all cores when the
// page is cross-origin isolated, else 1; fixed by the first model loaded in a page).
export async function loadModel(url = new URL('./liif.onnx', import.meta.url).href,
                                {backend = 'webgpu', threads = threadsAvailable()} = {}) {
  if (!['webgpu', 'wasm'].includes(backend)) throw new Error(`backend must be 'webgpu' or 'wasm', got ${backend}`);
  ort.env.wasm.numThreads = threads;
  const bytes = await fetchModel(url);
  let fallback = '';
  if (backend === 'webgpu') {
    const [adapter, reason] = await gpuAdapter();
    if (adapter) {
      try {
        const queries = Math.floor(GPU_BUFFER_SHARE * adapter.limits.maxBufferSize / BYTES_PER_QUERY);
        return new Model(await session(bytes, 'webgpu'), 'webgpu', Math.min(WASM_QUERIES, queries), '',
                         adapter.limits.maxStorageBufferBindingSize);
      } catch (e) {
        fallback = e.message;
      }
    } else fallback = reason;
  }
  return new Model(await session(bytes, 'wasm'), 'wasm', WASM_QUERIES, fallback, Infinity);
}

class Model {
  constructor(session, backend, queries, fallback, maxInputBytes) {
    this.session = session;
    this.backend = backend;  // 'webgpu' or 'wasm', whichever runs
    this.queries = queries;  // output pixels per graph run and image
    this.fallback = fallback;  // why WebGPU was asked for and WebAssembly runs, or ''
    this.threads = backend === 'wasm' ? ort.env.wasm.numThreads : 0;
    this.inputs = new WeakMap();  // ImageData -> its graph input, made once
    this.maxInputBytes = maxInputBytes;  // the whole image is one graph input: on a GPU, one buffer binding
  }

  // The window [top, left, height, width] (default: all) of the render at `size` [H, W], or at `scale`
  // (H, W rounded as inference.py rounds them), as an 8-bit RGBA ImageData. An alpha that is not
  // constant is rendered as a gray image in the same graph runs (inference.py's --alpha=model).
  // signal: an AbortSignal checked between graph runs; onProgress(done, total) in output pixels.
  async render(image, {size, scale, window, signal, onProgress} = {}) {
    if (!size && scale === undefined) throw new Error('render needs {size: [H, W]} or {scale: s}');
    const whole = outputSize(image.height, image.width, {scale, size});
    const [top, left, height, width] = checkWindow(window, whole);
    const input = this.input(image);
    const out = new ImageData(width, height);
    const pieces = splitWindow(height, width, Math.max(1, Math.floor(this.queries / input.lr.dims[0])));
    let done = 0;
    for (const [r, c, h, w] of pieces) {
      // a graph run may finish without the event loop turning: give it a turn, so that an abort sent
      // by a message (the page cancelling) lands before the next run
      if (signal) await new Promise(resolve => setTimeout(resolve));
      signal?.throwIfAborted();
      const sr = await this.run(input, whole, [top + r, left + c, h, w]);
      writePiece(out, sr, [r, c, h, w], input.alpha);
      sr.dispose();
      done += h * w;
      onProgress?.(done, height * width);
    }
    return out;
  }

  // One graph run: the float32 tensor `sr` (B, 3, height, width) of `window` in the render at `size`
  async run(input, size, window) {
    const int64 = values => new ort.Tensor('int64', BigInt64Array.from(values, BigInt), [values.length]);
    return (await this.session.run({lr: input.lr, size: int64(size), window: int64(window)})).sr;
  }

  input(image) {  // lr (B, 3, h, w) in [0, 1]: the RGB, and the alpha as gray when it is not constant
    let input = this.inputs.get(image);
    if (input) return input;
    const {data, height: h, width: w} = image, n = h * w;
    let constant = true;
    for (let i = 7; i < data.length && constant; i += 4) constant = data[i] === data[3];
    const bytes = (constant ? 3 : 6) * 4 * n;
    if (bytes > this.maxInputBytes) {
      throw new Error(`a ${w} x ${h} image is a ${Math.round(bytes / 2 ** 20)} MB graph input, more than this GPU binds at once ` +
                      `(${Math.round(this.maxInputBytes / 2 ** 20)} MB): load the model with {backend: 'wasm'}`);
    }
    const lr = new Float32Array(bytes / 4);
    for (let i = 0; i < n; i++) {
      for (let k = 0; k < 3; k++) lr[k * n + i] = data[4 * i + k] / 255;
      if (!constant) lr[3 * n + i] = lr[4 * n + i] = lr[5 * n + i] = data[4 * i + 3] / 255;
    }
    input = {lr: new ort.Tensor('float32', lr, [constant ? 1 : 2, 3, h, w]), alpha: constant ? data[3] : null};
    this.inputs.set(image, input);
    return input;
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
