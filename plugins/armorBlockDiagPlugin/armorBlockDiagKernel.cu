/*
 * armor-export: block-diagonal matmul kernels (see armorBlockDiagKernel.h for the contract).
 *
 * Each CTA computes a tile of rows of one diagonal block i, i.e. a slice of the small GEMM
 * Y_i[rows, b] = X_i[rows, b] @ W_iᵀ. Two kernels:
 *
 *  - SIMT (every dtype): a 64-row x 32/64-output tile, the reduction axis walked in chunks of
 *    32 that are staged (converted to fp32) in shared memory; each thread accumulates a 4x4
 *    register tile with FMAs. Handles any supported b (4..256, b % 4 == 0) and ragged edges.
 *  - Tensor cores (fp16 on sm_75+, bf16 on sm_80+; b % 16 == 0, 32 <= b <= 128, 16-byte aligned
 *    pointers): the whole b x b block W_i and a 64-row x tile are staged in shared memory with
 *    16-byte vector loads; 4 warps each own 16 rows and run WMMA 16x16x16 MMAs with fp32
 *    accumulators.
 *
 * Builds with plain nvcc (cudart + CCCL headers only: no cuBLAS, no TensorRT).
 */
#include "armorBlockDiagKernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <type_traits>

namespace armor
{
namespace
{

// ---------------------------------------------------------------------------------------------
// Element conversions (all arithmetic is fp32)
// ---------------------------------------------------------------------------------------------
template <typename T>
struct Convert;

template <>
struct Convert<float>
{
    __device__ __forceinline__ static float toFloat(float v)
    {
        return v;
    }
    __device__ __forceinline__ static float fromFloat(float v)
    {
        return v;
    }
};

template <>
struct Convert<__half>
{
    __device__ __forceinline__ static float toFloat(__half v)
    {
        return __half2float(v);
    }
    __device__ __forceinline__ static __half fromFloat(float v)
    {
        return __float2half_rn(v);
    }
};

template <>
struct Convert<__nv_bfloat16>
{
    __device__ __forceinline__ static float toFloat(__nv_bfloat16 v)
    {
        return __bfloat162float(v);
    }
    __device__ __forceinline__ static __nv_bfloat16 fromFloat(float v)
    {
        return __float2bfloat16_rn(v);
    }
};

// ---------------------------------------------------------------------------------------------
// SIMT kernel
// ---------------------------------------------------------------------------------------------
constexpr int32_t kSimtTileM = 64;  // rows per CTA
constexpr int32_t kSimtTileK = 32;  // reduction chunk staged per iteration
constexpr int32_t kSimtThreadM = 4; // register tile per thread
constexpr int32_t kSimtThreadN = 4;

template <int32_t TILE_N>
constexpr int32_t simtThreads()
{
    return (kSimtTileM / kSimtThreadM) * (TILE_N / kSimtThreadN);
}

//! grid: x = row tiles, y = nBlocks * nTilesN (block-major). Thread (tm, tn) owns rows
//! tm + THREADS_M*i and outputs tn + THREADS_N*j, so that shared-memory reads are broadcasts
//! (x tile) or consecutive (weight tile).
template <typename T, int32_t TILE_N>
__global__ void __launch_bounds__(simtThreads<TILE_N>()) blockDiagSimtKernel(T const* __restrict__ x,
    T const* __restrict__ w, T* __restrict__ y, int64_t rows, int64_t width, int32_t blockSize, int32_t nTilesN)
{
    constexpr int32_t TILE_M = kSimtTileM;
    constexpr int32_t TILE_K = kSimtTileK;
    constexpr int32_t THREADS_N = TILE_N / kSimtThreadN;
    constexpr int32_t THREADS_M = TILE_M / kSimtThreadM;
    constexpr int32_t THREADS = THREADS_N * THREADS_M;

    // [k][m] / [k][n], padded by one float to spread the transposing stores over the banks
    __shared__ float xs[TILE_K][TILE_M + 1];
    __shared__ float ws[TILE_K][TILE_N + 1];

    int32_t const block = blockIdx.y / nTilesN;
    int32_t const n0 = (blockIdx.y % nTilesN) * TILE_N;
    int64_t const row0 = static_cast<int64_t>(blockIdx.x) * TILE_M;
    int64_t const colBase = static_cast<int64_t>(block) * blockSize;
    T const* wBlock = w + static_cast<int64_t>(block) * blockSize * blockSize;

    int32_t const tid = threadIdx.x;
    int32_t const tm = tid / THREADS_N;
    int32_t const tn = tid % THREADS_N;

    float acc[kSimtThreadM][kSimtThreadN];
#pragma unroll
    for (int32_t i = 0; i < kSimtThreadM; ++i)
    {
#pragma unroll
        for (int32_t j = 0; j < kSimtThreadN; ++j)
        {
            acc[i][j] = 0.0F;
        }
    }

    for (int32_t k0 = 0; k0 < blockSize; k0 += TILE_K)
    {
        // x tile: consecutive threads read consecutive k of one row (coalesced)
        for (int32_t idx = tid; idx < TILE_M * TILE_K; idx += THREADS)
        {
            int32_t const m = idx / TILE_K;
            int32_t const k = idx % TILE_K;
            int64_t const row = row0 + m;
            float v = 0.0F;
            if (row < rows && k0 + k < blockSize)
            {
                v = Convert<T>::toFloat(x[row * width + colBase + k0 + k]);
            }
            xs[k][m] = v;
        }
        // weight tile: ws[k][n] = W_i[n0 + n][k0 + k]
        for (int32_t idx = tid; idx < TILE_N * TILE_K; idx += THREADS)
        {
            int32_t const n = idx / TILE_K;
            int32_t const k = idx % TILE_K;
            float v = 0.0F;
            if (n0 + n < blockSize && k0 + k < blockSize)
            {
                v = Convert<T>::toFloat(wBlock[static_cast<int64_t>(n0 + n) * blockSize + k0 + k]);
            }
            ws[k][n] = v;
        }
        __syncthreads();

#pragma unroll 8
        for (int32_t k = 0; k < TILE_K; ++k)
        {
            float a[kSimtThreadM];
            float b[kSimtThreadN];
#pragma unroll
            for (int32_t i = 0; i < kSimtThreadM; ++i)
            {
                a[i] = xs[k][tm + THREADS_M * i];
            }
#pragma unroll
            for (int32_t j = 0; j < kSimtThreadN; ++j)
            {
                b[j] = ws[k][tn + THREADS_N * j];
            }
#pragma unroll
            for (int32_t i = 0; i < kSimtThreadM; ++i)
            {
#pragma unroll
                for (int32_t j = 0; j < kSimtThreadN; ++j)
                {
                    acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int32_t i = 0; i < kSimtThreadM; ++i)
    {
        int64_t const row = row0 + tm + THREADS_M * i;
        if (row >= rows)
        {
            continue;
        }
#pragma unroll
        for (int32_t j = 0; j < kSimtThreadN; ++j)
        {
            int32_t const n = n0 + tn + THREADS_N * j;
            if (n < blockSize)
            {
                y[row * width + colBase + n] = Convert<T>::fromFloat(acc[i][j]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core (WMMA) kernel
// ---------------------------------------------------------------------------------------------
constexpr int32_t kWmmaTileM = 64; // rows per CTA: 4 warps x 16 rows
constexpr int32_t kWmmaWarps = kWmmaTileM / 16;
constexpr int32_t kWmmaPad = 8; // 16 bytes of padding per shared row: conflict-free ldmatrix
constexpr int32_t kWmmaMinBlock = 32;
constexpr int32_t kWmmaMaxBlock = 128;

inline size_t wmmaSharedBytes(int32_t blockSize)
{
    // W_i [b][b + pad] and the x tile [64][b + pad], 2-byte elements
    return static_cast<size_t>(blockSize + kWmmaTileM) * (blockSize + kWmmaPad) * 2;
}

template <typename T, int32_t MAX_K_TILES>
__device__ __forceinline__ void blockDiagWmmaBody(
    T const* __restrict__ x, T const* __restrict__ w, T* __restrict__ y, int64_t rows, int64_t width, int32_t blockSize)
{
    using namespace nvcuda;
    extern __shared__ __align__(128) unsigned char armorSmem[];

    int32_t const ld = blockSize + kWmmaPad; // elements per shared row (multiple of 8)
    T* ws = reinterpret_cast<T*>(armorSmem);
    T* xs = ws + blockSize * ld;

    int32_t const block = blockIdx.y;
    int64_t const row0 = static_cast<int64_t>(blockIdx.x) * kWmmaTileM;
    int64_t const colBase = static_cast<int64_t>(block) * blockSize;
    int32_t const kTiles = blockSize / 16;
    int32_t const chunksPerRow = blockSize / 8; // 16-byte chunks of 8 elements
    T const* wBlock = w + static_cast<int64_t>(block) * blockSize * blockSize;

    // Stage W_i (row n = output, column k = reduction), 16 bytes at a time.
    for (int32_t idx = threadIdx.x; idx < blockSize * chunksPerRow; idx += blockDim.x)
    {
        int32_t const n = idx / chunksPerRow;
        int32_t const c = idx % chunksPerRow;
        *reinterpret_cast<int4*>(ws + n * ld + c * 8)
            = *reinterpret_cast<int4 const*>(wBlock + static_cast<int64_t>(n) * blockSize + c * 8);
    }
    // Stage the x tile; rows past the end are zeros.
    for (int32_t idx = threadIdx.x; idx < kWmmaTileM * chunksPerRow; idx += blockDim.x)
    {
        int32_t const m = idx / chunksPerRow;
        int32_t const c = idx % chunksPerRow;
        int64_t const row = row0 + m;
        int4 v = make_int4(0, 0, 0, 0);
        if (row < rows)
        {
            v = *reinterpret_cast<int4 const*>(x + row * width + colBase + c * 8);
        }
        *reinterpret_cast<int4*>(xs + m * ld + c * 8) = v;
    }
    __syncthreads();

    int32_t const warp = threadIdx.x / 32;
    int32_t const lane = threadIdx.x % 32;
    int64_t const warpRow0 = row0 + warp * 16;
    if (warpRow0 >= rows)
    {
        return; // no __syncthreads below this point
    }

    // The warp's 16 x rows live in registers for the whole block: A = x (row-major).
    T* xsWarp = xs + warp * 16 * ld;
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> aFrag[MAX_K_TILES];
#pragma unroll
    for (int32_t kt = 0; kt < MAX_K_TILES; ++kt)
    {
        if (kt < kTiles)
        {
            wmma::load_matrix_sync(aFrag[kt], xsWarp + kt * 16, ld);
        }
    }
    __syncwarp();
    // ... so its shared rows (>= 16 * 40 * 2 bytes) become the fp32 16x16 output staging area.
    float* scratch = reinterpret_cast<float*>(xsWarp);

    // B = W_iᵀ, i.e. B[k][n] = W_i[n][k]: W_i's rows read as a column-major B.
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bFrag;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    int32_t const outRow = lane / 2;      // each lane writes 8 consecutive outputs of one row
    int32_t const outCol = (lane % 2) * 8;
    int64_t const row = warpRow0 + outRow;
    for (int32_t nt = 0; nt < kTiles; ++nt)
    {
        wmma::fill_fragment(acc, 0.0F);
#pragma unroll
        for (int32_t kt = 0; kt < MAX_K_TILES; ++kt)
        {
            if (kt < kTiles)
            {
                wmma::load_matrix_sync(bFrag, ws + nt * 16 * ld + kt * 16, ld);
                wmma::mma_sync(acc, aFrag[kt], bFrag, acc);
            }
        }
        wmma::store_matrix_sync(scratch, acc, 16, wmma::mem_row_major);
        __syncwarp();
        if (row < rows)
        {
            alignas(16) T out[8];
#pragma unroll
            for (int32_t e = 0; e < 8; ++e)
            {
                out[e] = Convert<T>::fromFloat(scratch[outRow * 16 + outCol + e]);
            }
            *reinterpret_cast<int4*>(y + row * width + colBase + nt * 16 + outCol)
                = *reinterpret_cast<int4 const*>(out);
        }
        __syncwarp();
    }
}

//! grid: x = row tiles of 64, y = nBlocks; 128 threads; dynamic shared memory
//! wmmaSharedBytes(b). Compiled to an empty body where the MMA type is unavailable (bf16 below
//! sm_80): the launcher never selects it there.
template <typename T, int32_t MAX_K_TILES>
__global__ void __launch_bounds__(kWmmaWarps * 32) blockDiagWmmaKernel(
    T const* __restrict__ x, T const* __restrict__ w, T* __restrict__ y, int64_t rows, int64_t width, int32_t blockSize)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    blockDiagWmmaBody<T, MAX_K_TILES>(x, w, y, rows, width, blockSize);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 700
    if constexpr (std::is_same<T, __half>::value)
    {
        blockDiagWmmaBody<T, MAX_K_TILES>(x, w, y, rows, width, blockSize);
    }
    else
    {
        __trap();
    }
#elif defined(__CUDA_ARCH__)
    __trap();
#endif
}

// ---------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------
constexpr int64_t kMaxGridY = 65535;
constexpr int64_t kMaxGridX = 2147483647;

bool aligned16(void const* p)
{
    return (reinterpret_cast<uintptr_t>(p) & 15U) == 0;
}

bool tensorCoreApplies(ArmorDataType type, int32_t blockSize, int32_t ccMajor)
{
    bool const typeOk = (type == ArmorDataType::kHALF && ccMajor >= 7) || (type == ArmorDataType::kBF16 && ccMajor >= 8);
    return typeOk && blockSize % 16 == 0 && blockSize >= kWmmaMinBlock && blockSize <= kWmmaMaxBlock;
}

cudaError_t deviceMajor(int32_t device, int32_t* major)
{
    if (device < 0)
    {
        cudaError_t const err = cudaGetDevice(&device);
        if (err != cudaSuccess)
        {
            return err;
        }
    }
    return cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, device);
}

template <typename T>
cudaError_t launchSimt(void const* x, void const* w, void* y, int64_t rows, int32_t nBlocks, int32_t blockSize,
    cudaStream_t stream)
{
    int64_t const width = static_cast<int64_t>(nBlocks) * blockSize;
    int64_t const rowTiles = (rows + kSimtTileM - 1) / kSimtTileM;
    int32_t const tileN = blockSize <= 32 ? 32 : 64;
    int32_t const nTilesN = (blockSize + tileN - 1) / tileN;
    if (rowTiles > kMaxGridX || static_cast<int64_t>(nBlocks) * nTilesN > kMaxGridY)
    {
        return cudaErrorInvalidValue;
    }
    dim3 const grid(static_cast<uint32_t>(rowTiles), static_cast<uint32_t>(nBlocks * nTilesN));
    auto const* xt = static_cast<T const*>(x);
    auto const* wt = static_cast<T const*>(w);
    auto* yt = static_cast<T*>(y);
    if (tileN == 32)
    {
        blockDiagSimtKernel<T, 32><<<grid, simtThreads<32>(), 0, stream>>>(xt, wt, yt, rows, width, blockSize, nTilesN);
    }
    else
    {
        blockDiagSimtKernel<T, 64><<<grid, simtThreads<64>(), 0, stream>>>(xt, wt, yt, rows, width, blockSize, nTilesN);
    }
    return cudaGetLastError();
}

template <typename T, int32_t MAX_K_TILES>
cudaError_t launchWmmaInstance(T const* x, T const* w, T* y, int64_t rows, int32_t nBlocks, int32_t blockSize,
    cudaStream_t stream)
{
    auto kernel = blockDiagWmmaKernel<T, MAX_K_TILES>;
    size_t const smem = wmmaSharedBytes(blockSize);
    if (smem > 48 * 1024)
    {
        // opt in to more than the default 48 KiB of dynamic shared memory (b = 128: 51 KiB)
        cudaError_t const err
            = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        if (err != cudaSuccess)
        {
            return err;
        }
    }
    int64_t const width = static_cast<int64_t>(nBlocks) * blockSize;
    dim3 const grid(static_cast<uint32_t>((rows + kWmmaTileM - 1) / kWmmaTileM), static_cast<uint32_t>(nBlocks));
    kernel<<<grid, kWmmaWarps * 32, smem, stream>>>(x, w, y, rows, width, blockSize);
    return cudaGetLastError();
}

template <typename T>
cudaError_t launchWmma(void const* x, void const* w, void* y, int64_t rows, int32_t nBlocks, int32_t blockSize,
    cudaStream_t stream)
{
    if ((rows + kWmmaTileM - 1) / kWmmaTileM > kMaxGridX || nBlocks > kMaxGridY)
    {
        return cudaErrorInvalidValue;
    }
    auto const* xt = static_cast<T const*>(x);
    auto const* wt = static_cast<T const*>(w);
    auto* yt = static_cast<T*>(y);
    if (blockSize <= 32)
    {
        return launchWmmaInstance<T, 2>(xt, wt, yt, rows, nBlocks, blockSize, stream);
    }
    if (blockSize <= 64)
    {
        return launchWmmaInstance<T, 4>(xt, wt, yt, rows, nBlocks, blockSize, stream);
    }
    return launchWmmaInstance<T, 8>(xt, wt, yt, rows, nBlocks, blockSize, stream);
}

} // namespace

ArmorKernelPath armorSelectedPath(ArmorDataType type, int32_t blockSize, int32_t device) noexcept
{
    bool const typeOk = type == ArmorDataType::kFLOAT || type == ArmorDataType::kHALF || type == ArmorDataType::kBF16;
    if (!typeOk || !armorBlockSizeSupported(blockSize))
    {
        return ArmorKernelPath::kAUTO;
    }
    int32_t major = 0;
    if (deviceMajor(device, &major) != cudaSuccess)
    {
        return ArmorKernelPath::kAUTO;
    }
    return tensorCoreApplies(type, blockSize, major) ? ArmorKernelPath::kTENSOR_CORE : ArmorKernelPath::kSIMT;
}

cudaError_t launchArmorBlockDiagPath(void const* x, void const* w, void* y, int64_t rows, int32_t nBlocks,
    int32_t blockSize, ArmorDataType type, ArmorKernelPath path, cudaStream_t stream) noexcept
{
    if (rows < 0 || nBlocks < 1 || !armorBlockSizeSupported(blockSize))
    {
        return cudaErrorInvalidValue;
    }
    if (type != ArmorDataType::kFLOAT && type != ArmorDataType::kHALF && type != ArmorDataType::kBF16)
    {
        return cudaErrorInvalidValue;
    }
    if (rows == 0)
    {
        return cudaSuccess;
    }
    if (x == nullptr || w == nullptr || y == nullptr)
    {
        return cudaErrorInvalidValue;
    }

    if (path != ArmorKernelPath::kSIMT)
    {
        int32_t major = 0;
        cudaError_t const err = deviceMajor(-1, &major);
        if (err != cudaSuccess)
        {
            return err;
        }
        bool const tensorCores
            = tensorCoreApplies(type, blockSize, major) && aligned16(x) && aligned16(w) && aligned16(y);
        if (tensorCores)
        {
            return type == ArmorDataType::kHALF ? launchWmma<__half>(x, w, y, rows, nBlocks, blockSize, stream)
                                                : launchWmma<__nv_bfloat16>(x, w, y, rows, nBlocks, blockSize, stream);
        }
        if (path == ArmorKernelPath::kTENSOR_CORE)
        {
            return cudaErrorNotSupported;
        }
    }

    switch (type)
    {
    case ArmorDataType::kFLOAT: return launchSimt<float>(x, w, y, rows, nBlocks, blockSize, stream);
    case ArmorDataType::kHALF: return launchSimt<__half>(x, w, y, rows, nBlocks, blockSize, stream);
    case ArmorDataType::kBF16: return launchSimt<__nv_bfloat16>(x, w, y, rows, nBlocks, blockSize, stream);
    }
    return cudaErrorInvalidValue;
}

cudaError_t launchArmorBlockDiag(void const* x, void const* w, void* y, int64_t rows, int32_t nBlocks,
    int32_t blockSize, ArmorDataType type, cudaStream_t stream) noexcept
{
    return launchArmorBlockDiagPath(x, w, y, rows, nBlocks, blockSize, type, ArmorKernelPath::kAUTO, stream);
}

} // namespace armor

// ---------------------------------------------------------------------------------------------
// C entry points
// ---------------------------------------------------------------------------------------------
extern "C"
{
    int32_t armor_blockdiag_f32(void const* x, void const* w, void* y, int64_t rows, int32_t nBlocks,
        int32_t blockSize, cudaStream_t stream)
    {
        return static_cast<int32_t>(
            armor::launchArmorBlockDiag(x, w, y, rows, nBlocks, blockSize, armor::ArmorDataType::kFLOAT, stream));
    }

    int32_t armor_blockdiag_f16(void const* x, void const* w, void* y, int64_t rows, int32_t nBlocks,
        int32_t blockSize, cudaStream_t stream)
    {
        return static_cast<int32_t>(
            armor::launchArmorBlockDiag(x, w, y, rows, nBlocks, blockSize, armor::ArmorDataType::kHALF, stream));
    }

    int32_t armor_blockdiag_bf16(void const* x, void const* w, void* y, int64_t rows, int32_t nBlocks,
        int32_t blockSize, cudaStream_t stream)
    {
        return static_cast<int32_t>(
            armor::launchArmorBlockDiag(x, w, y, rows, nBlocks, blockSize, armor::ArmorDataType::kBF16, stream));
    }

    int32_t armor_blockdiag_launch(void const* x, void const* w, void* y, int64_t rows, int32_t nBlocks,
        int32_t blockSize, int32_t dataType, int32_t path, cudaStream_t stream)
    {
        if (path < 0 || path > 2)
        {
            return static_cast<int32_t>(cudaErrorInvalidValue);
        }
        return static_cast<int32_t>(armor::launchArmorBlockDiagPath(x, w, y, rows, nBlocks, blockSize,
            static_cast<armor::ArmorDataType>(dataType), static_cast<armor::ArmorKernelPath>(path), stream));
    }

    int32_t armor_blockdiag_selected_path(int32_t dataType, int32_t blockSize, int32_t device)
    {
        return static_cast<int32_t>(
            armor::armorSelectedPath(static_cast<armor::ArmorDataType>(dataType), blockSize, device));
    }

    char const* armor_blockdiag_error_string(int32_t code)
    {
        return cudaGetErrorString(static_cast<cudaError_t>(code));
    }
}
