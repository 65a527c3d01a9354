/*
 * armor-export: ArmorBlockDiagMatMul IPluginV3 (see armorBlockDiagPlugin.h and README.md).
 *
 * Compiles only against a TensorRT (10.x / 11.x) or TensorRT-RTX SDK: its headers are in no
 * package registry. The CUDA kernel it calls (armorBlockDiagKernel.cu) builds without them.
 */
#include "armorBlockDiagPlugin.h"

#include "armorBlockDiagKernel.h"

#include <cstdio>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <string>
#include <utility>

#ifndef ARMOR_STATIC_REGISTRATION
#define ARMOR_STATIC_REGISTRATION 0 // CMake option, OFF by default (see below)
#endif

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IDimensionExpr;
using nvinfer1::ILogger;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace
{

constexpr int32_t kNB_INPUTS = 2;  // x, weight
constexpr int32_t kNB_OUTPUTS = 1; // y
constexpr char const* kTIMING_CACHE_ID{"ArmorBlockDiagMatMul_1_kernel1"};

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder{nullptr};

//! Log through TensorRT's logger when the library was given a finder (loadLibrary), else stderr.
void logMessage(ILogger::Severity severity, char const* layer, char const* message) noexcept
{
    try
    {
        ILogger* logger{nullptr};
        {
            std::lock_guard<std::mutex> lock(gLoggerMutex);
            if (gLoggerFinder != nullptr)
            {
                logger = gLoggerFinder->findLogger();
            }
        }
        std::string text = std::string(armor::kARMOR_PLUGIN_NAME) + " (" + (layer ? layer : "") + "): " + message;
        if (logger != nullptr)
        {
            logger->log(severity, text.c_str());
        }
        else if (severity <= ILogger::Severity::kWARNING)
        {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
    }
    catch (...)
    {
        // logging must never throw across the plugin API
    }
}

bool isSupportedType(DataType type) noexcept
{
    return type == DataType::kFLOAT || type == DataType::kHALF || type == DataType::kBF16;
}

bool toArmorType(DataType type, armor::ArmorDataType& out) noexcept
{
    switch (type)
    {
    case DataType::kFLOAT: out = armor::ArmorDataType::kFLOAT; return true;
    case DataType::kHALF: out = armor::ArmorDataType::kHALF; return true;
    case DataType::kBF16: out = armor::ArmorDataType::kBF16; return true;
    default: return false;
    }
}

bool constantOf(IDimensionExpr const* expr, int64_t& value) noexcept
{
    if (expr == nullptr || !expr->isConstant())
    {
        return false;
    }
    value = static_cast<int64_t>(expr->getConstantValue());
    return true;
}

} // namespace

namespace armor
{

// ---------------------------------------------------------------------------------------------
// ArmorBlockDiagPlugin
// ---------------------------------------------------------------------------------------------
ArmorBlockDiagPlugin::ArmorBlockDiagPlugin(std::string layerName)
    : mLayerName(std::move(layerName))
{
}

ArmorBlockDiagPlugin::ArmorBlockDiagPlugin(ArmorBlockDiagPlugin const& other)
    : mLayerName(other.mLayerName)
{
}

IPluginCapability* ArmorBlockDiagPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
    }
    return nullptr;
}

IPluginV3* ArmorBlockDiagPlugin::clone() noexcept
{
    try
    {
        return new ArmorBlockDiagPlugin(*this);
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, mLayerName.c_str(), e.what());
    }
    return nullptr;
}

char const* ArmorBlockDiagPlugin::getPluginName() const noexcept
{
    return kARMOR_PLUGIN_NAME;
}

char const* ArmorBlockDiagPlugin::getPluginVersion() const noexcept
{
    return kARMOR_PLUGIN_VERSION;
}

char const* ArmorBlockDiagPlugin::getPluginNamespace() const noexcept
{
    return kARMOR_PLUGIN_NAMESPACE;
}

int32_t ArmorBlockDiagPlugin::getNbOutputs() const noexcept
{
    return kNB_OUTPUTS;
}

int32_t ArmorBlockDiagPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != kNB_OUTPUTS || nbInputs != kNB_INPUTS)
    {
        return -1;
    }
    outputTypes[0] = inputTypes[0]; // y has x's type
    return 0;
}

int32_t ArmorBlockDiagPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs,
    DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
    nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    if (inputs == nullptr || outputs == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        return -1;
    }
    DimsExprs const& x = inputs[0];
    DimsExprs const& weight = inputs[1];
    if (x.nbDims < 1 || weight.nbDims != 3)
    {
        logMessage(ILogger::Severity::kERROR, mLayerName.c_str(), "expects x [..., n_blocks*b] and weight [n_blocks, b, b]");
        return -1;
    }
    int64_t nBlocks{0};
    int64_t blockSize{0};
    int64_t blockSize2{0};
    if (constantOf(weight.d[0], nBlocks) && constantOf(weight.d[1], blockSize) && constantOf(weight.d[2], blockSize2))
    {
        if (blockSize != blockSize2 || !armorBlockSizeSupported(blockSize))
        {
            logMessage(ILogger::Severity::kERROR, mLayerName.c_str(),
                "weight must be [n_blocks, b, b] with 4 <= b <= 256 and b % 4 == 0");
            return -1;
        }
        int64_t hidden{0};
        if (constantOf(x.d[x.nbDims - 1], hidden) && hidden != nBlocks * blockSize)
        {
            logMessage(ILogger::Severity::kERROR, mLayerName.c_str(), "x's last dimension must be n_blocks * b");
            return -1;
        }
    }
    outputs[0] = x; // y has x's shape
    return 0;
}

bool ArmorBlockDiagPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (inOut == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS || pos < 0
        || pos >= kNB_INPUTS + kNB_OUTPUTS)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 0)
    {
        return isSupportedType(desc.type);
    }
    return desc.type == inOut[0].desc.type; // weight and y follow x (decided at pos 0)
}

int32_t ArmorBlockDiagPlugin::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        return -1;
    }
    return checkShapes(in[0].desc.dims, in[1].desc.dims) ? 0 : -1;
}

size_t ArmorBlockDiagPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    return 0;
}

char const* ArmorBlockDiagPlugin::getTimingCacheID() noexcept
{
    // No attributes: the creation state is always the same, so timings may be cached (TensorRT
    // adds the I/O shapes and formats to this key itself).
    return kTIMING_CACHE_ID;
}

int32_t ArmorBlockDiagPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    if (in == nullptr || out == nullptr || nbInputs != kNB_INPUTS || nbOutputs != kNB_OUTPUTS)
    {
        return -1;
    }
    return checkShapes(in[0].dims, in[1].dims) ? 0 : -1;
}

int32_t ArmorBlockDiagPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept
{
    if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr)
    {
        return -1;
    }
    Dims const& x = inputDesc[0].dims;
    Dims const& weight = inputDesc[1].dims;
    if (!checkShapes(x, weight) || weight.d[0] > std::numeric_limits<int32_t>::max())
    {
        return -1;
    }
    ArmorDataType type{};
    if (!toArmorType(inputDesc[0].type, type) || inputDesc[1].type != inputDesc[0].type)
    {
        logMessage(ILogger::Severity::kERROR, mLayerName.c_str(), "x and weight must share one of float32/float16/bfloat16");
        return -1;
    }
    int64_t rows = 1; // every leading dimension (batch * tokens ...)
    for (int32_t i = 0; i + 1 < x.nbDims; ++i)
    {
        rows *= x.d[i];
    }
    cudaError_t const err = launchArmorBlockDiag(inputs[0], inputs[1], outputs[0], rows,
        static_cast<int32_t>(weight.d[0]), static_cast<int32_t>(weight.d[1]), type, stream);
    if (err != cudaSuccess)
    {
        logMessage(ILogger::Severity::kERROR, mLayerName.c_str(), cudaGetErrorString(err));
        return -1;
    }
    return 0;
}

IPluginV3* ArmorBlockDiagPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept
{
    return clone(); // no per-context resources
}

PluginFieldCollection const* ArmorBlockDiagPlugin::getFieldsToSerialize() noexcept
{
    return &mFieldsToSerialize;
}

bool ArmorBlockDiagPlugin::checkShapes(Dims const& x, Dims const& weight) const noexcept
{
    if (x.nbDims < 1 || weight.nbDims != 3)
    {
        logMessage(ILogger::Severity::kERROR, mLayerName.c_str(), "expects x [..., n_blocks*b] and weight [n_blocks, b, b]");
        return false;
    }
    int64_t const nBlocks = weight.d[0];
    int64_t const blockSize = weight.d[1];
    int64_t const hidden = x.d[x.nbDims - 1];
    bool ok = true;
    if (blockSize >= 0 && weight.d[2] >= 0)
    {
        ok = blockSize == weight.d[2] && armorBlockSizeSupported(blockSize);
    }
    if (ok && hidden >= 0 && nBlocks >= 0 && blockSize >= 0)
    {
        ok = hidden == nBlocks * blockSize;
    }
    if (!ok)
    {
        logMessage(ILogger::Severity::kERROR, mLayerName.c_str(),
            "weight must be [n_blocks, b, b] (4 <= b <= 256, b % 4 == 0) and x [..., n_blocks*b]");
    }
    return ok;
}

// ---------------------------------------------------------------------------------------------
// ArmorBlockDiagPluginCreator
// ---------------------------------------------------------------------------------------------
char const* ArmorBlockDiagPluginCreator::getPluginName() const noexcept
{
    return kARMOR_PLUGIN_NAME;
}

char const* ArmorBlockDiagPluginCreator::getPluginVersion() const noexcept
{
    return kARMOR_PLUGIN_VERSION;
}

char const* ArmorBlockDiagPluginCreator::getPluginNamespace() const noexcept
{
    return kARMOR_PLUGIN_NAMESPACE;
}

PluginFieldCollection const* ArmorBlockDiagPluginCreator::getFieldNames() noexcept
{
    return &mFieldNames;
}

IPluginV3* ArmorBlockDiagPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, nvinfer1::TensorRTPhase /*phase*/) noexcept
{
    try
    {
        // Build phase: the ONNX parser passes the node's attributes other than plugin_version /
        // plugin_namespace (there are none). Runtime phase: getFieldsToSerialize() (empty).
        if (fc != nullptr && fc->nbFields > 0)
        {
            logMessage(ILogger::Severity::kWARNING, name, "ignoring unexpected plugin fields (the plugin has no attributes)");
        }
        return new ArmorBlockDiagPlugin(name != nullptr ? name : "");
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, name, e.what());
    }
    return nullptr;
}

#if ARMOR_STATIC_REGISTRATION
// -DARMOR_STATIC_REGISTRATION=ON: register the creator when the library is dlopen'ed
// (ctypes.CDLL, trtexec --staticPlugins, polygraphy --plugins). Off by default because
// IPluginRegistry::loadLibrary (armor-export's engine build) registers getCreators()'s list
// itself and refuses a creator that is already registered.
REGISTER_TENSORRT_PLUGIN(ArmorBlockDiagPluginCreator);
#endif

} // namespace armor

// ---------------------------------------------------------------------------------------------
// Library entry points
// ---------------------------------------------------------------------------------------------
extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static armor::ArmorBlockDiagPluginCreator sCreator;
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&sCreator};
    nbCreators = 1;
    return sCreators;
}

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    std::lock_guard<std::mutex> lock(gLoggerMutex);
    gLoggerFinder = finder;
}
