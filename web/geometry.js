// Sizes and windows of a render, as the Python side defines them (render.output_size, check_window,
// onnx_model.split_window, onnx_model.lr_crop): the page and the engine both use these, so they agree with inference.py.

export function roundHalfEven(x) {  // Python's round(): halves go to the even integer
  const r = Math.round(x);
  return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

// [H, W] of an h x w image rendered at `scale` (a number or [height factor, width factor]), or `size`
export function outputSize(height, width, {scale, size} = {}) {
  if (size) return [size[0], size[1]];
  const [sh, sw] = Array.isArray(scale) ? scale : [scale, scale];
  const out = [roundHalfEven(height * sh), roundHalfEven(width * sw)];
  if (!out.every(n => Number.isSafeInteger(n) && n >= 1)) {
    throw new RangeError(`a ${height}x${width} image at x${sh} by x${sw} has no output size of at least 1 pixel`);
  }
  return out;
}

export const MAX_SIDE = 1 << 24;  // render.MAX_SIDE: pixel centres are float32

// [top, left, height, width] after checking it is a non-empty rectangle inside an output of `size`
export function checkWindow(window, [H, W]) {
  if (!(Number.isInteger(H) && Number.isInteger(W) && H > 0 && W > 0 && H <= MAX_SIDE && W <= MAX_SIDE)) {
    throw new RangeError(`output size must be two integers in 1..${MAX_SIDE}, got ${H}x${W}`);
  }
  if (!window) return [0, 0, H, W];
  const [top, left, height, width] = window;
  if (window.length !== 4 || !window.every(Number.isInteger) || top < 0 || left < 0 || height < 1 || width < 1 ||
      top + height > H || left + width > W) {
    throw new RangeError(`window must be [top, left, height, width] inside the ${H}x${W} output, got [${window}]`);
  }
  return [top, left, height, width];
}

// [top, left, height, width] pieces tiling a height x width window, at most `pixels` each, as square
// as the window allows (the LR margin each piece encodes is then smallest)
export function splitWindow(height, width, pixels) {
  const cols = Math.min(width, Math.max(1, Math.floor(Math.sqrt(pixels))));
  const rows = Math.min(height, Math.max(1, Math.floor(pixels / cols)));
  const pieces = [];
  for (let r = 0; r < height; r += rows) {
    for (let c = 0; c < width; c += cols) pieces.push([r, c, Math.min(rows, height - r), Math.min(cols, width - c)]);
  }
  return pieces;
}

// [top, left, bottom, right]: the LR rows and columns a graph run of `window` in the `size` render of an
// `lrSize` image reads, widened by the file's `reach` (onnx_model.lr_crop; exact in doubles below 2^53)
export function lrCrop([H, W], [top, left, rows, cols], [h, w], reach) {
  return [Math.max(0, Math.floor(top * h / H) - reach), Math.max(0, Math.floor(left * w / W) - reach),
          Math.min(h, Math.ceil((top + rows) * h / H) + reach), Math.min(w, Math.ceil((left + cols) * w / W) + reach)];
}
