"""Minimal reproducer: parse a one-node ArmorBlockDiagMatMul ONNX with TensorRT-RTX.

    python plugins/armorBlockDiagPlugin/repro/one_node_parse.py build/libarmor_blockdiag_plugin.so

Builds the graph ``y = ArmorBlockDiagMatMul(x, weight)`` (domain ``trt.plugins``,
``plugin_version = "1"``, ``plugin_namespace = ""``; x [n, 64], weight [2, 32, 32] an
initializer) with onnx.helper, loads the plugin library into the builder's plugin registry,
parses, and prints ``PARSED <n> plugin layer(s)`` or the parser's errors. With ``--build`` it
also builds an engine ahead of time for sm80 (no GPU needed).

TensorRT-RTX 1.7's ONNX parser dlopen()s ``libtensorrt_rtx.so`` (the unversioned name) while
importing a plugin node; the pip wheel ships only ``libtensorrt_rtx.so.1``, so the dlopen
fails, the parser throws ``std::runtime_error("Unable to open library: libtensorrt_rtx.so
...")`` where no handler exists and the process dies in ``std::terminate`` (exit status -6)
right after "Successfully created plugin". Run this in a subprocess; see README.md next to it.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def one_node_model(dtype: str = "float16", n_blocks: int = 2, block_size: int = 32):
    from onnx import TensorProto, helper, numpy_helper

    np_type, onnx_type = {
        "float16": (np.float16, TensorProto.FLOAT16),
        "float32": (np.float32, TensorProto.FLOAT),
    }[dtype]
    hidden = n_blocks * block_size
    weight = numpy_helper.from_array(
        np.eye(block_size, dtype=np_type)[None].repeat(n_blocks, 0), "weight"
    )
    node = helper.make_node(
        "ArmorBlockDiagMatMul", ["x", "weight"], ["y"], name="blockdiag_0",
        domain="trt.plugins", plugin_version="1", plugin_namespace="",
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "one_node",
        [helper.make_tensor_value_info("x", onnx_type, ["n", hidden])],
        [helper.make_tensor_value_info("y", onnx_type, ["n", hidden])],
        [weight],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("trt.plugins", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("library", help="libarmor_blockdiag_plugin.so")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--build", action="store_true", help="also build an sm80 engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="print TensorRT's log")
    args = parser.parse_args(argv)

    import tensorrt_rtx as trt

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if args.verbose or severity <= trt.ILogger.Severity.WARNING:
                print(f"[{str(severity).rsplit('.', 1)[-1]}] {msg}", flush=True)

    logger = Logger()
    builder = trt.Builder(logger)
    if builder.get_plugin_registry().load_library(args.library) is None:
        print(f"FAILED: the plugin registry could not load {args.library}")
        return 1
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    onnx_parser = trt.OnnxParser(network, logger)
    print("parsing (an abort here is the TensorRT-RTX bug described above)", flush=True)
    if not onnx_parser.parse(one_node_model(args.dtype).SerializeToString()):
        errors = [str(onnx_parser.get_error(i).desc()) for i in range(onnx_parser.num_errors)]
        print("FAILED: " + "; ".join(errors))
        return 1
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    plugins = [layer.name for layer in layers if layer.type == trt.LayerType.PLUGIN_V3]
    print(f"PARSED {len(plugins)} plugin layer(s): {', '.join(plugins)}", flush=True)
    if args.build:
        config = builder.create_builder_config()
        config.num_compute_capabilities = 1
        config.set_compute_capability(trt.ComputeCapability.SM80, 0)
        profile = builder.create_optimization_profile()
        hidden = network.get_input(0).shape[1]
        profile.set_shape("x", (1, hidden), (4, hidden), (16, hidden))
        config.add_optimization_profile(profile)
        engine = builder.build_serialized_network(network, config)
        if engine is None:
            print("FAILED: the builder returned no engine")
            return 1
        print(f"BUILT {engine.nbytes} bytes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
