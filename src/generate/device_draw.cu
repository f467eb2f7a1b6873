// The next token of every row drawn on the device; see src/generate/device_draw.rs,
// whose `draw_row` is the reference this kernel follows step for step.
// Compiled to PTX by build.rs (cudaforge, nvcc) with the `cuda` feature.
//
// One block per row. The state is one u32 buffer:
//   [ids (B) | headers (B x 8) | seen bits (B x W) | allowed bits (B x W)], W = ceil(V / 32)
// header: seed lo, seed hi, draw number, top k, flags, 1/temperature, top p, penalty
// (the last three as f32 bits). The kernel writes each active row's id (or a
// sentinel), sets the chosen token's seen bit and counts the draw; the host
// writes the rest.

#define DRAW_THREADS 256
#define MAX_TOP_K 256
#define HEADER 8
#define FLAG_GREEDY 1u
#define FLAG_ACTIVE 2u
#define NO_TOKEN 0xffffffffu
#define NON_FINITE 0xfffffffeu

__device__ __forceinline__ unsigned long long mix64(unsigned long long z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// Gumbel noise of token `id` in draw `draw` of the row seeded `seed`.
__device__ __forceinline__ float gumbel(unsigned long long seed, unsigned int draw, unsigned int id) {
    unsigned long long h = mix64(mix64(seed + (unsigned long long)draw * 0x9e3779b97f4a7c15ull)
                                 ^ ((unsigned long long)id * 0xd1b54a32d192ed03ull));
    float u = ((float)(unsigned int)(h >> 41) + 0.5f) * 1.1920928955078125e-7f; // in (0, 1): 2^-23
    return -logf(-logf(u));
}

__device__ __forceinline__ bool bit(const unsigned int* bits, unsigned int i) {
    return (bits[i >> 5] >> (i & 31u)) & 1u;
}

// The row's score of token i: -inf when not allowed, the penalty on seen
// tokens, then the temperature (greedy rows keep the logit).
__device__ __forceinline__ float score(const float* logits, const unsigned int* seen,
                                       const unsigned int* allowed, unsigned int i,
                                       float penalty, float inv_t, bool greedy) {
    if (!bit(allowed, i)) return -INFINITY;
    float l = logits[i];
    if (penalty != 1.0f && bit(seen, i)) l = l >= 0.0f ? l / penalty : l * penalty;
    return greedy ? l : l * inv_t + 0.0f;
}

// Finite scores ordered as unsigned integers (larger score, larger key).
__device__ __forceinline__ unsigned int order_key(float z) {
    unsigned int b = __float_as_uint(z);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float key_score(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
// Rank order: larger score first, then the lower index.
__device__ __forceinline__ unsigned long long rank_key(float z, unsigned int i) {
    return ((unsigned long long)order_key(z) << 32) | (unsigned long long)(0xffffffffu - i);
}

// Block-wide best (value, index): the larger value, on ties the lower index.
__device__ void best_of_block(float* vals, unsigned int* idx, unsigned int tid) {
    for (unsigned int s = DRAW_THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) {
            float a = vals[tid], b = vals[tid + s];
            unsigned int ia = idx[tid], ib = idx[tid + s];
            if (b > a || (b == a && ib < ia)) { vals[tid] = b; idx[tid] = ib; }
        }
        __syncthreads();
    }
}

__device__ float sum_of_block(float* vals, unsigned int tid) {
    for (unsigned int s = DRAW_THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) vals[tid] += vals[tid + s];
        __syncthreads();
    }
    return vals[0];
}

extern "C" __global__ void versifier_device_draw(unsigned int* state, const float* logits,
                                                 unsigned int batch, unsigned int vocab) {
    __shared__ float vals[DRAW_THREADS];
    __shared__ unsigned int idx[DRAW_THREADS];
    __shared__ unsigned int hist[256];
    __shared__ unsigned long long keys[MAX_TOP_K];
    __shared__ float mass_before[MAX_TOP_K];
    __shared__ unsigned long long threshold;
    __shared__ unsigned int need, kept_count, done, bad, finite;

    const unsigned int row = blockIdx.x, tid = threadIdx.x;
    if (row >= batch) return;
    const unsigned int words = (vocab + 31u) / 32u;
    unsigned int* header = state + batch + (size_t)row * HEADER;
    unsigned int* seen = state + batch + (size_t)batch * HEADER + (size_t)row * words;
    const unsigned int* allowed = state + batch + (size_t)batch * (HEADER + words) + (size_t)row * words;
    const float* lg = logits + (size_t)row * vocab;
    const unsigned int flags = header[4];
    if (!(flags & FLAG_ACTIVE)) return;
    const bool greedy = flags & FLAG_GREEDY;
    const unsigned long long seed = (unsigned long long)header[0] | ((unsigned long long)header[1] << 32);
    const unsigned int draw = header[2], top_k = header[3];
    const float inv_t = __uint_as_float(header[5]);
    const float top_p = __uint_as_float(header[6]);
    const float penalty = __uint_as_float(header[7]);

    // Pass 1: the best score (lowest index on ties), how many are finite, any NaN or +inf.
    if (tid == 0) { bad = 0; finite = 0; }
    __syncthreads();
    float best = -INFINITY;
    unsigned int best_i = 0xffffffffu, count = 0;
    bool nonfinite = false;
    for (unsigned int i = tid; i < vocab; i += DRAW_THREADS) {
        float z = score(lg, seen, allowed, i, penalty, inv_t, greedy);
        if (isnan(z) || z == INFINITY) nonfinite = true;
        else if (z > -INFINITY) {
            count++;
            if (z > best) { best = z; best_i = i; }
        }
    }
    if (nonfinite) atomicOr(&bad, 1u);
    atomicAdd(&finite, count);
    vals[tid] = best; idx[tid] = best_i;
    __syncthreads();
    best_of_block(vals, idx, tid);
    const float top = vals[0];
    const unsigned int top_i = idx[0];
    const unsigned int n_finite = finite;
    if (bad || n_finite == 0) {
        if (tid == 0) state[row] = bad ? NON_FINITE : NO_TOKEN;
        return;
    }
    unsigned int chosen = top_i;
    if (!greedy && top_k == 0) {
        // Every allowed token: the Gumbel-max draw over the whole vocabulary.
        float b = -INFINITY;
        unsigned int bi = 0xffffffffu;
        for (unsigned int i = tid; i < vocab; i += DRAW_THREADS) {
            float z = score(lg, seen, allowed, i, penalty, inv_t, false);
            if (z > -INFINITY) {
                float g = z + gumbel(seed, draw, i);
                if (g > b) { b = g; bi = i; }
            }
        }
        __syncthreads();
        vals[tid] = b; idx[tid] = bi;
        __syncthreads();
        best_of_block(vals, idx, tid);
        chosen = idx[0];
    } else if (!greedy) {
        // The softmax denominator over every allowed token.
        float s = 0.0f;
        for (unsigned int i = tid; i < vocab; i += DRAW_THREADS) {
            float z = score(lg, seen, allowed, i, penalty, inv_t, false);
            if (z > -INFINITY) s += expf(z - top);
        }
        __syncthreads();
        vals[tid] = s;
        __syncthreads();
        const float total = sum_of_block(vals, tid);
        // The k-th key in rank order, a byte at a time from the top (radix select).
        if (tid == 0) { need = min(top_k, n_finite); done = 0; threshold = 0; }
        __syncthreads();
        for (int shift = 56; shift >= 0 && !done; shift -= 8) {
            hist[tid] = 0; // DRAW_THREADS == 256 buckets
            __syncthreads();
            const unsigned long long prefix = threshold;
            for (unsigned int i = tid; i < vocab; i += DRAW_THREADS) {
                float z = score(lg, seen, allowed, i, penalty, inv_t, false);
                if (z > -INFINITY) {
                    unsigned long long k = rank_key(z, i);
                    if (shift == 56 || (k >> (shift + 8)) == (prefix >> (shift + 8)))
                        atomicAdd(&hist[(k >> shift) & 255u], 1u);
                }
            }
            __syncthreads();
            if (tid == 0) {
                unsigned int left = need;
                int b = 255;
                for (; b > 0; b--) {
                    if (left <= hist[b]) break;
                    left -= hist[b];
                }
                threshold = prefix | ((unsigned long long)b << shift);
                // Every key of the bucket is taken: the lower bits do not matter.
                done = left == hist[b];
                need = left;
            }
            __syncthreads();
        }
        // The top k, gathered and sorted in rank order (bitonic, descending).
        if (tid == 0) kept_count = 0;
        keys[tid] = 0;
        __syncthreads();
        const unsigned long long cut = threshold;
        for (unsigned int i = tid; i < vocab; i += DRAW_THREADS) {
            float z = score(lg, seen, allowed, i, penalty, inv_t, false);
            if (z > -INFINITY) {
                unsigned long long k = rank_key(z, i);
                if (k >= cut) {
                    unsigned int slot = atomicAdd(&kept_count, 1u);
                    if (slot < MAX_TOP_K) keys[slot] = k;
                }
            }
        }
        __syncthreads();
        for (unsigned int size = 2; size <= MAX_TOP_K; size <<= 1) {
            for (unsigned int stride = size >> 1; stride > 0; stride >>= 1) {
                unsigned int j = tid ^ stride;
                if (j > tid) {
                    bool descending = (tid & size) == 0;
                    unsigned long long a = keys[tid], b = keys[j];
                    if (descending ? a < b : a > b) { keys[tid] = b; keys[j] = a; }
                }
                __syncthreads();
            }
        }
        // Nucleus: keep rank j while the mass before it is under top p
        // (probabilities over the whole vocabulary), then Gumbel-max over those kept.
        const unsigned int n = min(kept_count, (unsigned int)MAX_TOP_K);
        const unsigned long long k = keys[tid];
        const float z = key_score((unsigned int)(k >> 32));
        const unsigned int token = 0xffffffffu - (unsigned int)(k & 0xffffffffu);
        const float p = tid < n ? expf(z - top) / total : 0.0f;
        vals[tid] = p;
        __syncthreads();
        // The mass before each rank, summed in rank order as the reference does.
        if (tid == 0) {
            float sum = 0.0f;
            for (unsigned int j = 0; j < n; j++) { mass_before[j] = sum; sum += vals[j]; }
        }
        __syncthreads();
        const float before = tid < n ? mass_before[tid] : 0.0f;
        const bool kept = tid < n && before < top_p;
        __syncthreads();
        vals[tid] = kept ? z + gumbel(seed, draw, token) : -INFINITY;
        idx[tid] = kept ? token : 0xffffffffu;
        __syncthreads();
        best_of_block(vals, idx, tid);
        chosen = idx[0];
    }
    if (tid == 0) {
        state[row] = chosen;
        seen[chosen >> 5] |= 1u << (chosen & 31u);
        header[2] = draw + 1u; // the next draw's number: the host need not write it
    }
}
