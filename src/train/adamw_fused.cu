// The trainer's fused AdamW passes; see src/train/adamw_fused.rs. Compiled to
// PTX by build.rs (cudaforge, nvcc) with the `cuda` feature and embedded.
extern "C" __global__ void versifier_adamw_moments(
    float* mv, const float* g, const float* scale, unsigned int n, float b1, float b2) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i] * scale[0];
    mv[i] = b1 * mv[i] + (1.0f - b1) * gi;
    mv[n + i] = b2 * mv[n + i] + (1.0f - b2) * gi * gi;
}

extern "C" __global__ void versifier_adamw_param(
    float* theta, const float* mv, unsigned int n,
    float lr, float bc1, float bc2, float eps, float decay) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float update = (mv[i] / bc1) / (sqrtf(mv[n + i] / bc2) + eps);
    theta[i] = theta[i] * (1.0f - decay) - lr * update;
}
