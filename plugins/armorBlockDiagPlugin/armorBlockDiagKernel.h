/*
 * armor-export: block-diagonal matmul kernel behind the ArmorBlockDiagMatMul TensorRT plugin.
 *
 *   y[r, i*b + o] = sum_k x[r, i*b + k] * w[i, o, k]      (y_i = x_i @ W_iᵀ, i < nBlocks)
 *
 * x and y are row-major [rows, nBlocks*b]; w is [nBlocks, b, b]; all three share one dtype
 * (float32, float16 or bfloat16) and the sums accumulate in float32. This is the contract of
 * armor_export/export/reference.py::blockdiag_matmul.
 *
 * This header needs only the CUDA runtime headers (no TensorRT), so the kernel library builds
 * and is testable anywhere nvcc is.
 */
#ifndef ARMOR_BLOCKDIAG_KERNEL_H
#define ARMOR_BLOCKDIAG_KERNEL_H

#include <cuda_runtime_api.h>
#include <cstdint>

#if defined(_WIN32)
#define ARMOR_KERNEL_API __declspec(dllexport)
#else
#define ARMOR_KERNEL_API __attribute__((visibility("default")))
#endif

namespace armor
{

//! Element type of x, w and y. The values match nvinfer1::DataType (kFLOAT, kHALF, kBF16) so
//! that logs read the same, but the plugin still maps them explicitly.
enum class ArmorDataType : int32_t
{
    kFLOAT = 0,
    kHALF = 1,
    kBF16 = 7,
};

//! Which kernel runs: kAUTO picks the tensor-core kernel when it applies, else the SIMT one.
enum class ArmorKernelPath : int32_t
{
    kAUTO = 0,
    kSIMT = 1,        //!< fp32 FMA kernel: every dtype, any supported block size
    kTENSOR_CORE = 2, //!< WMMA kernel: fp16 (sm_75+) / bf16 (sm_80+), b % 16 == 0, 32 <= b <= 128
};

//! Block sizes the kernels accept: 4 <= b <= 256 and b % 4 == 0.
constexpr int32_t kARMOR_MIN_BLOCK_SIZE = 4;
constexpr int32_t kARMOR_MAX_BLOCK_SIZE = 256;

inline bool armorBlockSizeSupported(int64_t blockSize) noexcept
{
    return blockSize >= kARMOR_MIN_BLOCK_SIZE && blockSize <= kARMOR_MAX_BLOCK_SIZE && blockSize % 4 == 0;
}

//! Enqueue y = blockdiag(w) applied to each of the `rows` rows of x on `stream`.
//!
//! Returns cudaSuccess (also for rows == 0, which launches nothing), cudaErrorInvalidValue for
//! unsupported arguments (null pointers, nBlocks < 1, unsupported block size, a grid too large),
//! or the launch error. Asynchronous: errors raised while the kernel runs surface later.
cudaError_t launchArmorBlockDiag(void const* x, void const* w, void* y, int64_t rows, int32_t nBlocks,
    int32_t blockSize, ArmorDataType type, cudaStream_t stream) noexcept;

//! The same, forcing one kernel (for tests and benchmarks). kTENSOR_CORE returns
//! cudaErrorNotSupported where it does not apply.
cudaError_t launchArmorBlockDiagPath(void const* x, void const* w, void* y, int64_t rows, int32_t nBlocks,
    int32_t blockSize, ArmorDataType type, ArmorKernelPath path, cudaStream_t stream) noexcept;

//! The kernel kAUTO would use for this dtype and block size on `device` (16-byte aligned
//! pointers assumed), or kAUTO when the arguments are unsupported.
ArmorKernelPath armorSelectedPath(ArmorDataType type, int32_t blockSize, int32_t device) noexcept;

} // namespace armor

// C entry points for ctypes / cupy tests and benchmarks. Each returns a cudaError_t value
// (0 = success); `stream` may be null (the legacy default stream).
extern "C"
{
    ARMOR_KERNEL_API int32_t armor_blockdiag_f32(void const* x, void const* w, void* y, int64_t rows,
        int32_t nBlocks, int32_t blockSize, cudaStream_t stream);
    ARMOR_KERNEL_API int32_t armor_blockdiag_f16(void const* x, void const* w, void* y, int64_t rows,
        int32_t nBlocks, int32_t blockSize, cudaStream_t stream);
    ARMOR_KERNEL_API int32_t armor_blockdiag_bf16(void const* x, void const* w, void* y, int64_t rows,
        int32_t nBlocks, int32_t blockSize, cudaStream_t stream);
    //! dataType: 0 float32, 1 float16, 7 bfloat16; path: 0 auto, 1 SIMT, 2 tensor cores.
    ARMOR_KERNEL_API int32_t armor_blockdiag_launch(void const* x, void const* w, void* y, int64_t rows,
        int32_t nBlocks, int32_t blockSize, int32_t dataType, int32_t path, cudaStream_t stream);
    //! armorSelectedPath as an int (0 = unsupported, 1 = SIMT, 2 = tensor cores).
    ARMOR_KERNEL_API int32_t armor_blockdiag_selected_path(int32_t dataType, int32_t blockSize, int32_t device);
    ARMOR_KERNEL_API char const* armor_blockdiag_error_string(int32_t code);
}

#endif // ARMOR_BLOCKDIAG_KERNEL_H
