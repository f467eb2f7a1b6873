// Fused kernels for one decode step (`T = 1`); see src/model/fused_decode.rs.
// Compiled to PTX by build.rs (cudaforge, nvcc) with the `cuda` feature and
// embedded in the binary. No headers: half precision is held as 16-bit words
// and converted with PTX instructions; every kernel computes in f32.
struct f16_t { unsigned short bits; };
struct bf16_t { unsigned short bits; };

__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ float load(f16_t v) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v.bits)); return f;
}
__device__ __forceinline__ float load(bf16_t v) {
    return __uint_as_float(((unsigned int)v.bits) << 16);
}
__device__ __forceinline__ void store(float* p, float f) { *p = f; }
__device__ __forceinline__ void store(f16_t* p, float f) {
    unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); p->bits = h;
}
__device__ __forceinline__ void store(bf16_t* p, float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) { p->bits = (unsigned short)((u >> 16) | 0x40u); return; }
    u += 0x7fffu + ((u >> 16) & 1u);
    p->bits = (unsigned short)(u >> 16);
}
// `f` rounded to T's precision (what storing and loading again gives).
template <typename T> __device__ __forceinline__ float rounded(float f) {
    T t; store(&t, f); return load(t);
}

template <typename T>
__device__ void bias_gelu(const T* y, const T* bias, T* out, unsigned int n, unsigned int width) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = rounded<T>(load(y[i]) + load(bias[i % width]));
    const float c = 0.7978845608028654f;
    float x_cube = x * x * x;
    float alpha = x + 0.044715f * x_cube;
    store(&out[i], 0.5f * x * (1.0f + tanhf(c * alpha)));
}

// One thread per (row, head, d): the key and the value of the new token.
template <typename T>
__device__ void cache_write(T* kv, const T* qkv, const unsigned int* index,
                            unsigned int b, unsigned int h, unsigned int s, unsigned int hd) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= b * h * hd) return;
    unsigned int row = i / (h * hd), head = (i / hd) % h, d = i % hd;
    unsigned int col = index[i];
    if (col >= s) return;
    unsigned int c = h * hd;
    size_t dst = ((size_t)(row * h + head) * s + col) * hd + d;
    size_t src = (size_t)row * 3 * c + head * hd + d;
    kv[dst] = qkv[src + c];
    kv[(size_t)b * h * s * hd + dst] = qkv[src + 2 * c];
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// The block's max (is_max) or sum of `v`; every thread gets it. `red` holds 32 floats.
__device__ float block_reduce(float v, float* red, bool is_max) {
    const float none = is_max ? __int_as_float(0xff800000) : 0.0f;
    unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = is_max ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < warps ? red[lane] : none;
        w = is_max ? warp_max(w) : warp_sum(w);
        if (lane == 0) red[0] = w;
    }
    __syncthreads();
    return red[0];
}

// One block per row; blockDim.x a multiple of 32. `out` is (2, m, n): the
// stream x + (y + bias), then its layer norm; params (3, n): bias, weight, norm bias.
template <typename T>
__device__ void bias_residual_norm(const T* y, const T* params, const T* x, T* out,
                                   unsigned int m, unsigned int n, float eps) {
    __shared__ float red[32];
    const unsigned int row = blockIdx.x;
    const size_t at = (size_t)row * n;
    T* stream = out + at;
    T* normed = out + (size_t)m * n + at;
    float sum = 0.0f, sq = 0.0f;
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = rounded<T>(load(x[at + i]) + rounded<T>(load(y[at + i]) + load(params[i])));
        store(&stream[i], v);
        sum += v;
        sq += v * v;
    }
    sum = block_reduce(sum, red, false);
    sq = block_reduce(sq, red, false);
    const float mean = sum / n;
    const float inv_std = rsqrtf(sq / n - mean * mean + eps);
    // Each thread reads back only the values it wrote.
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) {
        float v = load(stream[i]);
        store(&normed[i], (v - mean) * inv_std * load(params[n + i]) + load(params[2 * n + i]));
    }
}

// One block per (head, row); blockDim.x a multiple of 32. Shared memory:
// q (hd) | scores (s) | reduction (32) | partial outputs (max(blockDim.x, hd)).
template <typename T>
__device__ void attention(const T* qkv, const T* kv, const T* mask, T* out,
                          unsigned int b, unsigned int h, unsigned int s, unsigned int hd,
                          float scale) {
    extern __shared__ float sh[];
    float* q = sh;
    float* p = q + hd;
    float* red = p + s;
    float* part = red + 32;
    const unsigned int head = blockIdx.x, row = blockIdx.y;
    const unsigned int c = h * hd, tid = threadIdx.x, nt = blockDim.x;
    const unsigned int lane = tid & 31u, warp = tid >> 5, warps = nt >> 5;
    for (unsigned int d = tid; d < hd; d += nt) q[d] = load(qkv[(size_t)row * 3 * c + head * hd + d]);
    __syncthreads();
    const size_t base = (size_t)(row * h + head) * s * hd;
    const T* k = kv + base;
    const T* v = kv + (size_t)b * h * s * hd + base;
    const T* m = mask + (size_t)row * s;
    // Scores: one warp per column, lanes over the head's dimensions.
    float local_max = __int_as_float(0xff800000);
    for (unsigned int j = warp; j < s; j += warps) {
        float dot = 0.0f;
        for (unsigned int d = lane; d < hd; d += 32) dot += q[d] * load(k[(size_t)j * hd + d]);
        dot = warp_sum(dot);
        float score = dot * scale + load(m[j]);
        if (lane == 0) p[j] = score;
        local_max = fmaxf(local_max, score);
    }
    const float mx = block_reduce(local_max, red, true);
    float local_sum = 0.0f;
    for (unsigned int j = tid; j < s; j += nt) {
        float e = expf(p[j] - mx);
        p[j] = e;
        local_sum += e;
    }
    const float sum = block_reduce(local_sum, red, false);
    // Weighted values: `groups` sets of threads split the columns, one thread per d.
    const unsigned int groups = hd <= nt ? nt / hd : 1;
    for (unsigned int t = tid; t < groups * hd; t += nt) {
        unsigned int d = t % hd, g = t / hd;
        float acc = 0.0f;
        for (unsigned int j = g; j < s; j += groups) acc += p[j] * load(v[(size_t)j * hd + d]);
        part[t] = acc;
    }
    __syncthreads();
    for (unsigned int d = tid; d < hd; d += nt) {
        float y = 0.0f;
        for (unsigned int g = 0; g < groups; ++g) y += part[g * hd + d];
        store(&out[(size_t)row * c + head * hd + d], y / sum);
    }
}

#define FUSED_DECODE(T, SUFFIX)                                                              \
extern "C" __global__ void versifier_bias_residual_norm_##SUFFIX(                            \
    const T* y, const T* params, const T* x, T* out, unsigned int m, unsigned int n,         \
    float eps) {                                                                             \
    bias_residual_norm<T>(y, params, x, out, m, n, eps); }                                   \
extern "C" __global__ void versifier_bias_gelu_##SUFFIX(                                     \
    const T* y, const T* bias, T* out, unsigned int n, unsigned int width) {                 \
    bias_gelu<T>(y, bias, out, n, width); }                                                  \
extern "C" __global__ void versifier_cache_write_##SUFFIX(                                   \
    T* kv, const T* qkv, const unsigned int* index,                                          \
    unsigned int b, unsigned int h, unsigned int s, unsigned int hd) {                       \
    cache_write<T>(kv, qkv, index, b, h, s, hd); }                                           \
extern "C" __global__ void versifier_attention_##SUFFIX(                                     \
    const T* qkv, const T* kv, const T* mask, T* out,                                        \
    unsigned int b, unsigned int h, unsigned int s, unsigned int hd, float scale) {          \
    attention<T>(qkv, kv, mask, out, b, h, s, hd, scale); }

FUSED_DECODE(float, f32)
FUSED_DECODE(f16_t, f16)
FUSED_DECODE(bf16_t, bf16)
