/*
 * armor-export: runs the plugin's IPluginV3OneRuntime::enqueue on a GPU the way an engine
 * would (creator -> createPlugin(kRUNTIME) -> onShapeChange -> enqueue on a stream), without
 * TensorRT's libraries, and compares y with a double-precision host reference of
 * y[r, i*b + o] = sum_k x[r, i*b + k] * weight[i, o, k].
 *
 *   armor_plugin_enqueue_check path/to/libarmor_blockdiag_plugin.so  ->  one JSON line per case
 *
 * Exit status 0 when every case is within the YAML's tolerances (armorBlockDiagPlugin.yaml),
 * 1 otherwise, 2 when no CUDA device can be used.
 */
#include "NvInferRuntime.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

using namespace nvinfer1;

namespace
{

struct Case
{
    DataType type;
    char const* name;
    int32_t blockSize;
    double atol;
    double rtol;
};

size_t elementSize(DataType type)
{
    return type == DataType::kFLOAT ? 4 : 2;
}

void store(DataType type, std::vector<unsigned char>& bytes, size_t i, float value)
{
    if (type == DataType::kFLOAT)
    {
        std::memcpy(bytes.data() + 4 * i, &value, 4);
    }
    else if (type == DataType::kHALF)
    {
        __half h = __float2half(value);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
    else
    {
        __nv_bfloat16 h = __float2bfloat16(value);
        std::memcpy(bytes.data() + 2 * i, &h, 2);
    }
}

float load(DataType type, std::vector<unsigned char> const& bytes, size_t i)
{
    if (type == DataType::kFLOAT)
    {
        float v;
        std::memcpy(&v, bytes.data() + 4 * i, 4);
        return v;
    }
    if (type == DataType::kHALF)
    {
        __half h;
        std::memcpy(&h, bytes.data() + 2 * i, 2);
        return __half2float(h);
    }
    __nv_bfloat16 h;
    std::memcpy(&h, bytes.data() + 2 * i, 2);
    return __bfloat162float(h);
}

PluginTensorDesc tensorDesc(std::vector<int64_t> const& dims, DataType type)
{
    PluginTensorDesc d{};
    d.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.dims.d[i] = dims[i];
    }
    d.type = type;
    d.format = TensorFormat::kLINEAR;
    d.scale = -1.F;
    return d;
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s libarmor_blockdiag_plugin.so\n", argv[0]);
        return 2;
    }
    int32_t devices{0};
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
    {
        std::fprintf(stderr, "no CUDA device\n");
        return 2;
    }
    void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    auto getCreators = library ? reinterpret_cast<IPluginCreatorInterface* const* (*) (int32_t&)>(
                           dlsym(library, "getCreators"))
                               : nullptr;
    if (getCreators == nullptr)
    {
        std::fprintf(stderr, "cannot load %s: %s\n", argv[1], dlerror());
        return 1;
    }
    int32_t nbCreators{0};
    auto* creator = static_cast<IPluginCreatorV3One*>(getCreators(nbCreators)[0]);
    PluginFieldCollection const noFields{};
    std::unique_ptr<IPluginV3> plugin{creator->createPlugin("blockdiag_0", &noFields, TensorRTPhase::kRUNTIME)};
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));

    // the YAML's tolerances; b = 32/64/128 are what the exporter uses, 48 takes the SIMT path for fp16
    std::vector<Case> const cases = {{DataType::kFLOAT, "float32", 32, 1e-4, 1e-4}, {DataType::kFLOAT, "float32", 128, 1e-4, 1e-4},
        {DataType::kHALF, "float16", 32, 5e-3, 5e-3}, {DataType::kHALF, "float16", 64, 5e-3, 5e-3},
        {DataType::kHALF, "float16", 128, 5e-3, 5e-3}, {DataType::kHALF, "float16", 48, 5e-3, 5e-3},
        {DataType::kBF16, "bfloat16", 64, 3e-2, 3e-2}, {DataType::kBF16, "bfloat16", 128, 3e-2, 3e-2}};
    int64_t const batch = 3;
    int64_t const seq = 67; // rows = 201: not a multiple of the 64-row tiles
    int32_t const nBlocks = 4;
    cudaStream_t stream{};
    cudaStreamCreate(&stream);
    std::mt19937 rng(1234);
    std::normal_distribution<float> normal(0.F, 1.F);
    bool allOk = true;
    for (Case const& c : cases)
    {
        int64_t const hidden = int64_t{nBlocks} * c.blockSize;
        int64_t const rows = batch * seq;
        size_t const nx = static_cast<size_t>(rows * hidden);
        size_t const nw = static_cast<size_t>(nBlocks) * c.blockSize * c.blockSize;
        size_t const es = elementSize(c.type);
        std::vector<unsigned char> x(nx * es), w(nw * es), y(nx * es);
        float const wScale = 1.F / std::sqrt(static_cast<float>(c.blockSize));
        for (size_t i = 0; i < nx; ++i)
        {
            store(c.type, x, i, normal(rng));
        }
        for (size_t i = 0; i < nw; ++i)
        {
            store(c.type, w, i, normal(rng) * wScale);
        }
        void *dx{}, *dw{}, *dy{};
        cudaMalloc(&dx, x.size());
        cudaMalloc(&dw, w.size());
        cudaMalloc(&dy, y.size());
        cudaMemcpy(dx, x.data(), x.size(), cudaMemcpyHostToDevice);
        cudaMemcpy(dw, w.data(), w.size(), cudaMemcpyHostToDevice);
        cudaMemset(dy, 0xff, y.size());
        PluginTensorDesc in[2] = {tensorDesc({batch, seq, hidden}, c.type), tensorDesc({nBlocks, c.blockSize, c.blockSize}, c.type)};
        PluginTensorDesc out[1] = {tensorDesc({batch, seq, hidden}, c.type)};
        int32_t const shapeStatus = runtime->onShapeChange(in, 2, out, 1);
        void const* inputs[2] = {dx, dw};
        void* outputs[1] = {dy};
        int32_t const status = runtime->enqueue(in, out, inputs, outputs, nullptr, stream);
        cudaError_t const sync = cudaStreamSynchronize(stream);
        cudaMemcpy(y.data(), dy, y.size(), cudaMemcpyDeviceToHost);
        cudaFree(dx);
        cudaFree(dw);
        cudaFree(dy);
        double maxAbs = 0.0;
        double worst = 0.0; // max of |err| / (atol + rtol * |ref|): <= 1 passes
        for (int64_t r = 0; r < rows; ++r)
        {
            for (int32_t i = 0; i < nBlocks; ++i)
            {
                for (int32_t o = 0; o < c.blockSize; ++o)
                {
                    double ref = 0.0;
                    for (int32_t k = 0; k < c.blockSize; ++k)
                    {
                        ref += static_cast<double>(load(c.type, x, r * hidden + int64_t{i} * c.blockSize + k))
                            * load(c.type, w, (static_cast<size_t>(i) * c.blockSize + o) * c.blockSize + k);
                    }
                    double const got = load(c.type, y, r * hidden + int64_t{i} * c.blockSize + o);
                    double const err = std::isfinite(got) ? std::fabs(got - ref) : INFINITY;
                    maxAbs = std::max(maxAbs, err);
                    worst = std::max(worst, err / (c.atol + c.rtol * std::fabs(ref)));
                }
            }
        }
        bool const ok = shapeStatus == 0 && status == 0 && sync == cudaSuccess && worst <= 1.0;
        allOk = allOk && ok;
        std::printf("{\"dtype\": \"%s\", \"b\": %d, \"rows\": %lld, \"on_shape_change\": %d, \"enqueue\": %d, "
                    "\"cuda\": \"%s\", \"max_abs_err\": %.3g, \"tolerance_ratio\": %.3g, \"ok\": %s}\n",
            c.name, c.blockSize, static_cast<long long>(rows), shapeStatus, status, cudaGetErrorString(sync), maxAbs,
            worst, ok ? "true" : "false");
    }
    cudaStreamDestroy(stream);
    return allOk ? 0 : 1;
}
