/**
 * tfjs has no uint8 dtype, so packed bytes (NF4 nibbles, 8-bit absmax codes) travel as int32
 * tensors: 4 bytes per word, little-endian, the last word padded with zero bytes.
 *   byte j = (words[j >> 2] >>> (8 · (j & 3))) & 0xff
 * For NF4, element i of a packed stream is in byte i >> 1: the high nibble for even i, the low
 * nibble for odd i, i.e. code(i) = (byte >> (4 · (1 - (i & 1)))) & 0xf.
 */
export function bytesToInt32Words(bytes: Uint8Array): Int32Array {
  const words = new Int32Array(Math.ceil(bytes.length / 4));
  for (let j = 0; j < bytes.length; ++j) words[j >> 2] |= bytes[j] << (8 * (j & 3));
  return words;
}

/** The first `byteLength` bytes of little-endian int32 words. */
export function int32WordsToBytes(words: Int32Array, byteLength: number): Uint8Array {
  if (!Number.isInteger(byteLength) || byteLength < 0 || byteLength > 4 * words.length) {
    throw new RangeError(`int32WordsToBytes: byteLength ${byteLength} must be an integer in [0, ${4 * words.length}]`);
  }
  const bytes = new Uint8Array(byteLength);
  for (let j = 0; j < byteLength; ++j) bytes[j] = (words[j >> 2] >>> (8 * (j & 3))) & 0xff;
  return bytes;
}
