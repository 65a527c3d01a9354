/*
 * armor-export: ArmorBlockDiagMatMul, a TensorRT IPluginV3 for the block-diagonal factors of
 * ARMOR linears (y = A (S (B x))): y[..., i, :] = x[..., i, :] @ weight[i]ᵀ.
 *
 * Inputs:  0 x      [..., nBlocks * b]   float32 | float16 | bfloat16 (linear layout)
 *          1 weight [nBlocks, b, b]      same type (a constant initializer in the ONNX graph)
 * Output:  0 y      x's shape and type
 *
 * No attributes beyond the ONNX node's plugin_version / plugin_namespace: nBlocks and b come from
 * the weight's dimensions at configure / enqueue time. Written against the IPluginV3 API of
 * TensorRT 10.x / 11.x and TensorRT-RTX (NvInferRuntime.h); the NumPy oracle is
 * armor_export/export/reference.py.
 */
#ifndef ARMOR_BLOCKDIAG_PLUGIN_H
#define ARMOR_BLOCKDIAG_PLUGIN_H

#include "NvInferRuntime.h"

#include <cstdint>
#include <string>

#if defined(_WIN32)
#define ARMOR_PLUGIN_API __declspec(dllexport)
#else
#define ARMOR_PLUGIN_API __attribute__((visibility("default")))
#endif

namespace armor
{

// Must equal armor_export.export.reference.PLUGIN_NAME / PLUGIN_VERSION / PLUGIN_NAMESPACE
// (tests/plugins/test_plugin_kernel.py checks these three lines).
constexpr char const* kARMOR_PLUGIN_NAME{"ArmorBlockDiagMatMul"};
constexpr char const* kARMOR_PLUGIN_VERSION{"1"};
constexpr char const* kARMOR_PLUGIN_NAMESPACE{""};

class ArmorBlockDiagPlugin : public nvinfer1::IPluginV3,
                             public nvinfer1::IPluginV3OneCore,
                             public nvinfer1::IPluginV3OneBuild,
                             public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit ArmorBlockDiagPlugin(std::string layerName);
    ArmorBlockDiagPlugin(ArmorBlockDiagPlugin const& other);
    ArmorBlockDiagPlugin& operator=(ArmorBlockDiagPlugin const&) = delete;
    ~ArmorBlockDiagPlugin() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* shapeInputs, int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getTimingCacheID() noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Checks x [..., nBlocks*b] against weight [nBlocks, b, b] (dimensions < 0 are unknown yet).
    bool checkShapes(nvinfer1::Dims const& x, nvinfer1::Dims const& weight) const noexcept;

    std::string mLayerName;
    nvinfer1::PluginFieldCollection mFieldsToSerialize{}; // empty: the plugin has no attributes
};

class ArmorBlockDiagPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    ArmorBlockDiagPluginCreator() = default;
    ~ArmorBlockDiagPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

private:
    nvinfer1::PluginFieldCollection mFieldNames{}; // empty
};

} // namespace armor

// Plugin-library entry points that IPluginRegistry::loadLibrary() (trtexec --dynamicPlugins,
// engines with plugins serialized into them) looks up. getCreators is the TensorRT >= 10 name;
// getPluginCreators (TensorRT 8.x) can only hand out IPluginV2 creators, which this is not.
extern "C"
{
    ARMOR_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);
    ARMOR_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder);
}

#endif // ARMOR_BLOCKDIAG_PLUGIN_H
