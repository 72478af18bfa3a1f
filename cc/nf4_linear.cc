// NF4 grouped GEMM: the float GEMM of gemm/driver.h with a B packer that decodes NF4 codes.
#include "nf4_linear.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm/driver.h"

#if !defined(MOE_GENERIC_ONLY)
#include <immintrin.h>
#endif

namespace moe {
namespace {

// bitsandbytes' NF4 code (get_4bit_type('nf4')), the float32 values of src/quant/nf4_code.ts.
constexpr float kNf4Code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// One expert's codes and scales.
struct Nf4Expert {
  const uint8_t* bytes;
  const float* absmax;
  int64_t blocksize;
};

// out[j] = NF4[code(i)] · absmax[i / blocksize] for i = start + j, j < count, where code(i) is
// the high nibble of byte i/2 for even i, the low one for odd i. Within a block the 16 products
// NF4[c] · absmax are the same float32 values for every i, so they are made once per block
// (exactly the product dequantiseNf4 rounds) and the codes index them.
void decode_scalar(const Nf4Expert& w, int64_t start, int64_t count, float* out) {
  for (int64_t i = start, end = start + count; i < end;) {
    const int64_t block = i / w.blocksize, stop = std::min(end, (block + 1) * w.blocksize);
    float lut[16];
    for (int c = 0; c < 16; ++c) lut[c] = kNf4Code[c] * w.absmax[block];
    if (i & 1) *out++ = lut[w.bytes[i >> 1] & 15], ++i;
    for (; i + 1 < stop; i += 2, out += 2) {
      const uint8_t b = w.bytes[i >> 1];
      out[0] = lut[b >> 4], out[1] = lut[b & 15];
    }
    if (i < stop) *out++ = lut[w.bytes[i >> 1] >> 4], ++i;
  }
}

#if !defined(MOE_GENERIC_ONLY)
// The same, 16 values at a time: 8 bytes split into nibbles (high first) and widened to 16 lane
// indices into the scaled code, which fits one register (vpermps).
__attribute__((target("avx512f"))) void decode_avx512(const Nf4Expert& w, int64_t start, int64_t count,
                                                      float* out) {
  const __m512 code = _mm512_loadu_ps(kNf4Code);
  const __m128i low4 = _mm_set1_epi8(0x0f);
  for (int64_t i = start, end = start + count; i < end;) {
    const int64_t block = i / w.blocksize, stop = std::min(end, (block + 1) * w.blocksize);
    if (i & 1) decode_scalar(w, i, 1, out++), ++i;
    const __m512 lut = _mm512_mul_ps(code, _mm512_set1_ps(w.absmax[block]));
    for (; i + 16 <= stop; i += 16, out += 16) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(w.bytes + (i >> 1)));
      const __m128i nibbles = _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), low4), _mm_and_si128(b, low4));
      _mm512_storeu_ps(out, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(nibbles), lut));
    }
    if (i < stop) decode_scalar(w, i, stop - i, out), out += stop - i, i = stop;
  }
}
#endif

using DecodeFn = void (*)(const Nf4Expert&, int64_t, int64_t, float*);

// The decoder of the instruction set the GEMM kernels use (so set_isa lowers both).
DecodeFn decoder(const GemmKernels& k) {
#if !defined(MOE_GENERIC_ONLY)
  if (std::strcmp(k.name, "avx512") == 0) return decode_avx512;
#endif
  return decode_scalar;
}

}  // namespace

std::string check_nf4_weight(int64_t packed_words, int64_t absmax_len, int64_t E, int64_t N, int64_t K,
                             int64_t blocksize) {
  if (blocksize < 32 || blocksize > 4096 || (blocksize & (blocksize - 1)) != 0)
    return "blocksize " + std::to_string(blocksize) + " is not one of 32, 64, 128, 256, 512, 1024, 2048, 4096";
  if (N < 1 || K < 1 || N > (int64_t{1} << 40) / K)
    return "the weight's N = " + std::to_string(N) + " and K = " + std::to_string(K) + " must be positive (and not huge)";
  const int64_t values = N * K;
  if (E > 1 && values % 2 != 0)
    return "stacked NF4 experts need an even N·K (got " + std::to_string(N) + "·" + std::to_string(K) + ")";
  const int64_t bytes = (values + 1) / 2, blocks = (values + blocksize - 1) / blocksize;
  if (E > (int64_t{1} << 40) / bytes) return "E = " + std::to_string(E) + " experts are too many";
  const int64_t words = (E * bytes + 3) / 4;
  if (packed_words != words)
    return "packed has " + std::to_string(packed_words) + " int32 words, expected " + std::to_string(words) +
           " (" + std::to_string(E) + " experts of " + std::to_string(bytes) + " bytes)";
  if (absmax_len != E * blocks)
    return "absmax has " + std::to_string(absmax_len) + " values, expected " + std::to_string(E * blocks) + " (" +
           std::to_string(E) + " experts of " + std::to_string(blocks) + " blocks of " + std::to_string(blocksize) + ")";
  return "";
}

void moe_nf4_linear(const float* x, const uint8_t* packed, const float* absmax, const int32_t* group_sizes,
                    float* y, int64_t M, int64_t N, int64_t K, int64_t E, int64_t blocksize, bool transpose_weight) {
  if (M == 0) return;
  const GemmKernels& k = active_kernels();
  const DecodeFn decode = decoder(k);
  const int64_t bytes = (N * K + 1) / 2, blocks = (N * K + blocksize - 1) / blocksize;
  const std::vector<int64_t> off = row_offsets(group_sizes, E);
  // Forward: y_e = x_e · W_eᵀ, a reduction over k into N columns; dX: y_e = x_e · W_e, over n into K.
  const int64_t depth = transpose_weight ? N : K, cols = transpose_weight ? K : N;
  auto rows_of = [&](int64_t e) { return off[e + 1] - off[e]; };
  run_tasks(make_tasks(E, rows_of, [&](int64_t) { return depth; }, cols, kRowBlock), [&](const Task& t) {
    const Nf4Expert w{packed + t.expert * bytes, absmax + t.expert * blocks, blocksize};
    PackB pack_b;
    if (transpose_weight) {  // B(p, j) = W[p, col0 + j]: rows of W decode straight into the chunks
      pack_b = [&](int64_t p0, int64_t d, float* dst) {
        for (int64_t p = 0; p < d; ++p)
          for (int64_t j = 0; j < t.cols; j += kChunk)
            decode(w, (p0 + p) * K + t.col0 + j, std::min(kChunk, t.cols - j), dst + (j * d + p * kChunk));
      };
    } else {  // B(p, j) = W[col0 + j, p]: decode kChunk rows of W, then transpose them into a chunk
      pack_b = [&](int64_t p0, int64_t d, float* dst) {
        thread_local std::vector<float> rows_buffer;
        float* rows = scratch(rows_buffer, kChunk * d);
        for (int64_t j = 0; j < t.cols; j += kChunk) {
          const int64_t n = std::min(kChunk, t.cols - j);
          for (int64_t r = 0; r < n; ++r) decode(w, (t.col0 + j + r) * K + p0, d, rows + r * d);
          k.pack_transposed(d, n, rows, d, dst + j * d);
        }
      };
    }
    const int64_t row = off[t.expert] + t.row0;
    outer_gemm(k, t.rows, t.cols, depth, View{x + row * depth, depth, 1}, pack_b, y + row * cols + t.col0, cols);
  });
}

}  // namespace moe
