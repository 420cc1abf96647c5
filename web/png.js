// A PNG encoder that takes an image band by band: rows go through the browser's deflate stream as they
// come, so a large image is never whole in memory, only its compressed bytes (kept as a Blob's parts).

const CRC_TABLE = Array.from({length: 256}, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes, crc = 0xffffffff) {
  for (const b of bytes) crc = CRC_TABLE[(crc ^ b) & 0xff] ^ (crc >>> 8);
  return crc;
}

function chunk(type, data) {  // length, type, data, CRC of type and data
  const head = new Uint8Array(8), tail = new Uint8Array(4), name = new TextEncoder().encode(type);
  new DataView(head.buffer).setUint32(0, data.length);
  head.set(name, 4);
  new DataView(tail.buffer).setUint32(0, (crc32(data, crc32(name)) ^ 0xffffffff) >>> 0);
  return [head, data, tail];
}

export class PngWriter {
  // width x height, 8 bits per sample, RGBA (alpha true) or RGB
  constructor(width, height, alpha) {
    this.width = width;
    this.channels = alpha ? 4 : 3;
    const header = new Uint8Array(13), view = new DataView(header.buffer);
    view.setUint32(0, width);
    view.setUint32(4, height);
    header.set([8, alpha ? 6 : 2, 0, 0, 0], 8);  // bit depth, colour type, deflate, no filter, no interlace
    this.parts = [new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]), ...chunk('IHDR', header)];
    const stream = new CompressionStream('deflate');  // zlib format, as IDAT wants
    this.writer = stream.writable.getWriter();
    this.collected = this.collect(stream.readable.getReader());
  }

  async collect(reader) {  // each piece of compressed output as one IDAT chunk
    for (let r = await reader.read(); !r.done; r = await reader.read()) this.parts.push(...chunk('IDAT', r.value));
  }

  // the next rows, from an ImageData (RGBA) as wide as the image
  async addRows(image) {
    const c = this.channels, line = 1 + this.width * c, rows = new Uint8Array(line * image.height);
    for (let y = 0; y < image.height; y++) {  // filter type 0 (none) per row, then the samples
      for (let x = 0; x < this.width; x++) {
        const i = 4 * (y * this.width + x), o = y * line + 1 + x * c;
        for (let k = 0; k < c; k++) rows[o + k] = image.data[i + k];
      }
    }
    await this.writer.write(rows);
  }

  async finish() {  // the file as a Blob
    await this.writer.close();
    await this.collected;
    return new Blob([...this.parts, ...chunk('IEND', new Uint8Array(0))], {type: 'image/png'});
  }

  abort() {
    this.writer.abort().catch(() => {});
  }
}
