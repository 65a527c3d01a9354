/*
 * armor-export: checks libarmor_blockdiag_plugin.so the way TensorRT's plugin registry and ONNX
 * parser use it at build time, without TensorRT's libraries or a GPU.
 *
 *   armor_plugin_contract_check path/to/libarmor_blockdiag_plugin.so  ->  JSON on stdout
 *
 * dlopen()s the library, calls the exported getCreators() as IPluginRegistry::loadLibrary does,
 * then on the creator: interface info, name / version / namespace, getFieldNames(); createPlugin
 * in the build phase with the fields the ONNX parser passes for our node (none: plugin_version
 * and plugin_namespace are consumed by the parser), every PluginCapabilityType, clone(),
 * getOutputDataTypes, supportsFormatCombination, configurePlugin, getWorkspaceSize,
 * getFieldsToSerialize() and a runtime-phase createPlugin from those fields. Python
 * (tests/plugins/test_plugin_library.py) compares the JSON with armorBlockDiagPlugin.yaml.
 * Exit status 0 when every call answered (the values are judged by the test), 1 otherwise.
 */
#include "NvInferRuntime.h"

#include <dlfcn.h>

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

using namespace nvinfer1;

namespace
{

std::string quoted(char const* text)
{
    std::string out{"\""};
    for (char const* c = text != nullptr ? text : ""; *c != '\0'; ++c)
    {
        if (*c == '"' || *c == '\\')
        {
            out += '\\';
        }
        out += *c;
    }
    return out + "\"";
}

std::string info(IVersionedInterface const* object)
{
    if (object == nullptr)
    {
        return "null";
    }
    InterfaceInfo const i = object->getInterfaceInfo();
    return "{\"kind\": " + quoted(i.kind) + ", \"major\": " + std::to_string(i.major)
        + ", \"minor\": " + std::to_string(i.minor) + "}";
}

std::string fieldNames(PluginFieldCollection const* fc)
{
    if (fc == nullptr)
    {
        return "null";
    }
    std::string out{"["};
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        out += (i > 0 ? ", " : "") + quoted(fc->fields[i].name);
    }
    return out + "]";
}

DynamicPluginTensorDesc desc(std::vector<int64_t> const& dims, DataType type, TensorFormat format = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc d{};
    d.desc.dims.nbDims = static_cast<int32_t>(dims.size());
    for (size_t i = 0; i < dims.size(); ++i)
    {
        d.desc.dims.d[i] = dims[i];
    }
    d.desc.type = type;
    d.desc.format = format;
    d.min = d.max = d.opt = d.desc.dims;
    return d;
}

char const* boolean(bool value)
{
    return value ? "true" : "false";
}

} // namespace

int main(int argc, char** argv)
{
    if (argc != 2)
    {
        std::fprintf(stderr, "usage: %s libarmor_blockdiag_plugin.so\n", argv[0]);
        return 2;
    }
    void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr)
    {
        std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
        return 1;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(library, "getCreators"));
    bool const hasLoggerFinder = dlsym(library, "setLoggerFinder") != nullptr;
    if (getCreators == nullptr)
    {
        std::fprintf(stderr, "getCreators is not exported\n");
        return 1;
    }
    int32_t nbCreators{0};
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    if (creators == nullptr || nbCreators != 1 || creators[0] == nullptr)
    {
        std::fprintf(stderr, "getCreators returned %d creator(s)\n", nbCreators);
        return 1;
    }
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    std::printf("{\n  \"creators\": %d,\n  \"set_logger_finder\": %s,\n", nbCreators, boolean(hasLoggerFinder));
    std::printf("  \"creator_interface\": %s,\n", info(creator).c_str());
    std::printf("  \"name\": %s,\n  \"version\": %s,\n  \"namespace\": %s,\n", quoted(creator->getPluginName()).c_str(),
        quoted(creator->getPluginVersion()).c_str(), quoted(creator->getPluginNamespace()).c_str());
    std::printf("  \"field_names\": %s,\n", fieldNames(creator->getFieldNames()).c_str());

    PluginFieldCollection const noFields{};
    std::unique_ptr<IPluginV3> plugin{creator->createPlugin("blockdiag_0", &noFields, TensorRTPhase::kBUILD)};
    if (!plugin)
    {
        std::printf("  \"build_plugin\": null\n}\n");
        return 1;
    }
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    std::printf("  \"plugin_interface\": %s,\n", info(plugin.get()).c_str());
    std::printf("  \"capabilities\": {\"core\": %s, \"build\": %s, \"runtime\": %s},\n", info(core).c_str(),
        info(build).c_str(), info(runtime).c_str());
    if (core == nullptr || build == nullptr || runtime == nullptr)
    {
        std::printf("  \"complete\": false\n}\n");
        return 1;
    }
    std::printf("  \"plugin_name\": %s,\n  \"plugin_version\": %s,\n  \"plugin_namespace\": %s,\n",
        quoted(core->getPluginName()).c_str(), quoted(core->getPluginVersion()).c_str(),
        quoted(core->getPluginNamespace()).c_str());

    std::unique_ptr<IPluginV3> copy{plugin->clone()};
    std::printf("  \"clone\": %s,\n", boolean(copy != nullptr && copy.get() != plugin.get()));

    std::printf("  \"nb_outputs\": %d,\n", build->getNbOutputs());
    std::string outputTypes{"{"};
    for (DataType type : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
    {
        DataType const inputs[2] = {type, type};
        DataType output{DataType::kINT32};
        int32_t const status = build->getOutputDataTypes(&output, 1, inputs, 2);
        outputTypes += (type == DataType::kFLOAT ? "" : ", ") + std::string{"\""}
            + std::to_string(static_cast<int32_t>(type)) + "\": "
            + (status == 0 ? std::to_string(static_cast<int32_t>(output)) : std::string{"null"});
    }
    std::printf("  \"output_types\": %s},\n", outputTypes.c_str());

    // x [n, 64], weight [2, 32, 32], y [n, 64]; pos 0 decides the type, 1 and 2 must follow it
    auto supports = [&](DataType x, DataType w, DataType y, TensorFormat format, int32_t pos) {
        DynamicPluginTensorDesc io[3] = {desc({-1, 64}, x, format), desc({2, 32, 32}, w, format), desc({-1, 64}, y, format)};
        return build->supportsFormatCombination(pos, io, 2, 1);
    };
    std::printf("  \"formats\": {\"half_linear\": [%s, %s, %s], \"float_linear\": %s, \"bf16_linear\": %s, "
                "\"int8_linear\": %s, \"half_chw2\": %s, \"weight_float_x_half\": %s},\n",
        boolean(supports(DataType::kHALF, DataType::kHALF, DataType::kHALF, TensorFormat::kLINEAR, 0)),
        boolean(supports(DataType::kHALF, DataType::kHALF, DataType::kHALF, TensorFormat::kLINEAR, 1)),
        boolean(supports(DataType::kHALF, DataType::kHALF, DataType::kHALF, TensorFormat::kLINEAR, 2)),
        boolean(supports(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, TensorFormat::kLINEAR, 0)),
        boolean(supports(DataType::kBF16, DataType::kBF16, DataType::kBF16, TensorFormat::kLINEAR, 0)),
        boolean(supports(DataType::kINT8, DataType::kINT8, DataType::kINT8, TensorFormat::kLINEAR, 0)),
        boolean(supports(DataType::kHALF, DataType::kHALF, DataType::kHALF, TensorFormat::kCHW2, 0)),
        boolean(supports(DataType::kHALF, DataType::kFLOAT, DataType::kHALF, TensorFormat::kLINEAR, 1)));

    auto configure = [&](std::vector<int64_t> const& x, std::vector<int64_t> const& w) {
        DynamicPluginTensorDesc in[2] = {desc(x, DataType::kHALF), desc(w, DataType::kHALF)};
        DynamicPluginTensorDesc out[1] = {desc(x, DataType::kHALF)};
        return build->configurePlugin(in, 2, out, 1);
    };
    std::printf("  \"configure\": {\"ok\": %d, \"dynamic_rows\": %d, \"wrong_hidden\": %d, \"b_not_multiple_of_4\": %d, "
                "\"b_too_large\": %d},\n",
        configure({4, 8, 64}, {2, 32, 32}), configure({-1, 64}, {2, 32, 32}), configure({4, 8, 96}, {2, 32, 32}),
        configure({4, 60}, {2, 30, 30}), configure({4, 1024}, {2, 512, 512}));
    DynamicPluginTensorDesc in[2] = {desc({4, 64}, DataType::kHALF), desc({2, 32, 32}, DataType::kHALF)};
    DynamicPluginTensorDesc out[1] = {desc({4, 64}, DataType::kHALF)};
    std::printf("  \"workspace_bytes\": %zu,\n", build->getWorkspaceSize(in, 2, out, 1));
    char const* cacheId = build->getTimingCacheID();
    std::printf("  \"timing_cache_id\": %s,\n", cacheId != nullptr ? quoted(cacheId).c_str() : "null");

    PluginFieldCollection const* serialized = runtime->getFieldsToSerialize();
    std::printf("  \"fields_to_serialize\": %s,\n", fieldNames(serialized).c_str());
    std::unique_ptr<IPluginV3> restored{creator->createPlugin("blockdiag_0", serialized, TensorRTPhase::kRUNTIME)};
    std::printf("  \"runtime_plugin\": %s,\n", boolean(restored != nullptr));
    std::unique_ptr<IPluginV3> attached{runtime->attachToContext(nullptr)};
    std::printf("  \"attach_to_context\": %s,\n", boolean(attached != nullptr));
    std::printf("  \"complete\": true\n}\n");
    return 0;
}
