#!/usr/bin/env python
"""GPU benchmark: the ArmorBlockDiagMatMul kernel and the 2:4 sparse core of ARMOR linears.

Needs an NVIDIA GPU with torch (CUDA build) and nvcc; no TensorRT. It

(a) compiles plugins/armorBlockDiagPlugin/armorBlockDiagKernel.cu for the local GPU, checks
    it against reference.blockdiag_matmul (fp32/fp16/bf16, b = 32/64/128, both kernel paths)
    and times it against torch.bmm on the [n_blocks, rows, b] layout (with and without
    materialised transposes) and torch.einsum, at --rows rows and the --widths hidden sizes;
(b) times an ArmorLinear-style op y = A (S (B x)) in fp16 with the 2:4 core S as
    torch.sparse.to_sparse_semi_structured, against dense F.linear, for 4096x4096 and
    4096<->11008 (out x in), --tokens tokens: speed-up of the sparse core alone (target
    >= 1.33x) and of the whole op;
(c) writes docs/benchmarks/gpu.md and gpu.json (command, GPU, versions, date, every figure).

Timings are CUDA-event medians over --samples replays of a CUDA graph holding --inner calls
(after --warmup calls), so Python launch overhead is excluded, as in a TensorRT engine; inputs
stay hot in L2 between calls.

    python tools/bench_gpu.py                 # exits 1 with a message where there is no GPU
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from benchlib import command, meta_lines, utc_now, write_report

log = logging.getLogger("bench_gpu")

ROOT = Path(__file__).resolve().parents[1]
KERNEL_SOURCE = ROOT / "plugins" / "armorBlockDiagPlugin" / "armorBlockDiagKernel.cu"
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 7}  # ArmorDataType
PATHS = {"auto": 0, "simt": 1}  # ArmorKernelPath (auto = tensor cores where they apply)
PATH_NAMES = {0: "unsupported", 1: "SIMT", 2: "tensor cores"}
TOLERANCES = {"float32": (1e-4, 1e-4), "float16": (5e-3, 5e-3), "bfloat16": (3e-2, 3e-2)}
SPARSE_TARGET = 1.33  # speed-up of the 2:4 core over dense F.linear


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/benchmarks", help="folder for gpu.md and gpu.json")
    p.add_argument("--rows", type=int, default=2048, help="rows (tokens) of the block-diag timings")
    p.add_argument(
        "--widths", default="4096,11008", help="hidden sizes n_blocks*b, comma-separated"
    )
    p.add_argument("--block-sizes", default="32,64,128", help="block sizes b, comma-separated")
    p.add_argument("--tokens", type=int, default=2048, help="tokens of the sparse-core timings")
    p.add_argument(
        "--linear-shapes",
        default="4096x4096,11008x4096,4096x11008",
        help="ARMOR linear shapes OUTxIN, comma-separated",
    )
    p.add_argument("--warmup", type=int, default=10, help="untimed calls before timing")
    p.add_argument("--inner", type=int, default=20, help="calls per timed graph replay")
    p.add_argument("--samples", type=int, default=25, help="timed replays (median reported)")
    p.add_argument("--no-graphs", action="store_true", help="time eager calls, not CUDA graphs")
    p.add_argument("--nvcc", default=None, help="nvcc to use (default: PATH, /usr/local/bin)")
    p.add_argument("--build-dir", default=None, help="where to build the kernel (default: tmp)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def linear_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        out_features, _, in_features = item.strip().partition("x")
        shapes.append((int(out_features), int(in_features)))
    return shapes


# ---------------------------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------------------------
def gpu_problem() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (install a CUDA build of torch)"
    if not torch.cuda.is_available():
        return (
            f"no CUDA GPU: torch {torch.__version__} reports torch.cuda.is_available() == False "
            "(this benchmark needs an NVIDIA GPU and a CUDA build of torch)"
        )
    return None


def find_nvcc(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else []
    candidates += [shutil.which("nvcc"), "/usr/local/bin/nvcc", "/usr/local/cuda/bin/nvcc"]
    for cand in candidates:
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    return out.strip().splitlines()[-1]


def build_kernel(nvcc: str, arch: str, build_dir: Path) -> Path:
    """Compile the kernel for `arch` (e.g. sm_90) into a shared library."""
    build_dir.mkdir(parents=True, exist_ok=True)
    obj = build_dir / f"armorBlockDiagKernel_{arch}.o"
    lib = build_dir / f"libarmor_blockdiag_kernel_{arch}.so"
    compute = arch.replace("sm_", "compute_")
    gencode = ["-gencode", f"arch={compute},code={arch}"]
    common = [nvcc, "-std=c++17", *gencode]
    for cmd in (
        [*common, "-O3", "-Xcompiler", "-fPIC", "-c", str(KERNEL_SOURCE), "-o", str(obj)],
        [*common, "-shared", str(obj), "-o", str(lib)],
    ):
        log.info("$ %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return lib


class BlockDiagKernel:
    """ctypes binding of libarmor_blockdiag_kernel.so on torch CUDA tensors."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))
        tensor_args = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_int32, ctypes.c_int32]
        self.lib.armor_blockdiag_launch.restype = ctypes.c_int32
        self.lib.armor_blockdiag_launch.argtypes = [
            *tensor_args,
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.c_void_p,
        ]
        self.lib.armor_blockdiag_selected_path.restype = ctypes.c_int32
        self.lib.armor_blockdiag_selected_path.argtypes = [ctypes.c_int32] * 3
        self.lib.armor_blockdiag_error_string.restype = ctypes.c_char_p
        self.lib.armor_blockdiag_error_string.argtypes = [ctypes.c_int32]

    def selected_path(self, dtype_name: str, block_size: int) -> str:
        import torch

        code = self.lib.armor_blockdiag_selected_path(
            DTYPE_CODES[dtype_name], block_size, torch.cuda.current_device()
        )
        return PATH_NAMES.get(code, str(code))

    def __call__(self, x, weight, out, path: int = 0):
        """out = blockdiag(weight) x on torch's current stream (capturable in a CUDA graph)."""
        import torch

        n_blocks, block_size, _ = weight.shape
        code = self.lib.armor_blockdiag_launch(
            x.data_ptr(),
            weight.data_ptr(),
            out.data_ptr(),
            x.numel() // x.shape[-1],
            n_blocks,
            block_size,
            DTYPE_CODES[str(x.dtype).removeprefix("torch.")],
            path,
            torch.cuda.current_stream().cuda_stream,
        )
        if code != 0:
            raise RuntimeError(
                f"armor_blockdiag_launch: {self.lib.armor_blockdiag_error_string(code)}"
            )
        return out


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------
class Timer:
    def __init__(self, warmup: int, inner: int, samples: int, graphs: bool):
        self.warmup, self.inner, self.samples, self.graphs = warmup, inner, samples, graphs

    def __call__(self, fn: Callable[[], object]) -> dict:
        """Median microseconds per call of `fn`, and how it was measured."""
        import torch

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the default stream, as capture requires
            for _ in range(self.warmup):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()

        run, mode, note = self._eager(fn), "eager", None
        if self.graphs:
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for _ in range(self.inner):
                        fn()
                run, mode = graph.replay, "cuda-graph"
            except RuntimeError as exc:  # recorded in the report, timed eagerly instead
                note = f"graph capture failed: {str(exc).splitlines()[0]}"
                log.warning("%s; timing eagerly", note)
                torch.cuda.synchronize()
        times = []
        for _ in range(self.samples):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1000.0 / self.inner)
        result = {"median_us": statistics.median(times), "min_us": min(times), "mode": mode}
        if note:
            result["note"] = note
        return result

    def _eager(self, fn):
        def run():
            for _ in range(self.inner):
                fn()

        return run


# ---------------------------------------------------------------------------------------------
# (a) block-diagonal kernel
# ---------------------------------------------------------------------------------------------
def check_kernel(kernel: BlockDiagKernel, block_sizes: list[int], seed: int) -> list[dict]:
    """Kernel vs reference.blockdiag_matmul on a ragged problem, every dtype / b / path."""
    import torch

    from armor_export.export.api import torch_dtype
    from armor_export.export.reference import blockdiag_matmul

    results = []
    gen = torch.Generator().manual_seed(seed)
    for dtype_name in ("float16", "bfloat16", "float32"):
        for block_size in block_sizes:
            n_blocks, rows = 6, 257
            x = torch.randn(rows, n_blocks * block_size, generator=gen).to(torch_dtype(dtype_name))
            w = torch.randn(n_blocks, block_size, block_size, generator=gen) / block_size**0.5
            w = w.to(torch_dtype(dtype_name))
            want = blockdiag_matmul(x.float().numpy(), w.float().numpy())
            for path_name, path in PATHS.items():
                got = kernel(x.cuda(), w.cuda(), torch.empty_like(x, device="cuda"), path)
                torch.cuda.synchronize()
                got = got.float().cpu().numpy()
                atol, rtol = TOLERANCES[dtype_name]
                err = np.abs(got - want)
                ok = bool(np.all(err <= atol + rtol * np.abs(want)))
                kernel_name = (
                    kernel.selected_path(dtype_name, block_size) if path == 0 else PATH_NAMES[1]
                )
                results.append(
                    {
                        "dtype": dtype_name,
                        "block_size": block_size,
                        "path": path_name,
                        "kernel": kernel_name,
                        "max_abs_err": float(err.max()),
                        "atol": atol,
                        "rtol": rtol,
                        "ok": ok,
                    }
                )
                log.info(
                    "check %-8s b=%-3d %-4s (%s): max|err| %.2e %s",
                    dtype_name,
                    block_size,
                    path_name,
                    kernel_name,
                    err.max(),
                    "ok" if ok else "FAILED",
                )
    return results


def blockdiag_bmm_strided(x, w_t):
    """y = blockdiag(w) x with torch.bmm on a strided [n_blocks, rows, b] view (w_t = W_iᵀ)."""
    import torch

    rows, width = x.shape
    n_blocks, block_size, _ = w_t.shape
    xt = x.view(rows, n_blocks, block_size).transpose(0, 1)
    return torch.bmm(xt, w_t).transpose(0, 1).reshape(rows, width)


def blockdiag_variants(kernel: BlockDiagKernel, x, w) -> dict[str, Callable[[], object]]:
    """Ways to compute y = blockdiag(w) x for x [rows, nb*b], w [nb, b, b] (y_i = x_i W_iᵀ)."""
    import torch

    rows, width = x.shape
    n_blocks, block_size, _ = w.shape
    w_t = w.transpose(1, 2).contiguous()  # constant weights: transposed once, outside timing
    out = torch.empty_like(x)

    def bmm_transposes():  # the [n_blocks, rows, b] layout materialised both ways
        xt = x.view(rows, n_blocks, block_size).transpose(0, 1).contiguous()
        return torch.bmm(xt, w_t).transpose(0, 1).reshape(rows, width)

    def bmm_strided():  # cuBLAS reads the strided view; only the result is transposed back
        return blockdiag_bmm_strided(x, w_t)

    def einsum():
        xb = x.view(rows, n_blocks, block_size)
        return torch.einsum("rni,noi->rno", xb, w).reshape(rows, width)

    return {
        "armor kernel (auto)": lambda: kernel(x, w, out, PATHS["auto"]),
        "armor kernel (SIMT)": lambda: kernel(x, w, out, PATHS["simt"]),
        "torch.bmm + transposes": bmm_transposes,
        "torch.bmm strided": bmm_strided,
        "torch.einsum": einsum,
    }


def time_blockdiag(kernel: BlockDiagKernel, args, timer: Timer) -> list[dict]:
    import torch

    from armor_export.export.api import torch_dtype

    results = []
    gen = torch.Generator(device="cuda").manual_seed(args.seed)
    for dtype_name in ("float16", "bfloat16", "float32"):
        dtype = torch_dtype(dtype_name)
        for width in int_list(args.widths):
            for block_size in int_list(args.block_sizes):
                if width % block_size:
                    log.warning("width %d is not a multiple of b=%d: skipped", width, block_size)
                    continue
                n_blocks = width // block_size
                x = torch.randn(args.rows, width, device="cuda", generator=gen, dtype=dtype)
                w = torch.randn(
                    n_blocks, block_size, block_size, device="cuda", generator=gen, dtype=dtype
                )
                flops = 2.0 * args.rows * width * block_size
                nbytes = (2 * args.rows * width + n_blocks * block_size**2) * x.element_size()
                for method, fn in blockdiag_variants(kernel, x, w).items():
                    timing = timer(fn)
                    us = timing["median_us"]
                    results.append(
                        {
                            "dtype": dtype_name,
                            "rows": args.rows,
                            "width": width,
                            "block_size": block_size,
                            "method": method,
                            **timing,
                            "tflops": flops / us / 1e6,
                            "gbps": nbytes / us / 1e3,
                        }
                    )
                    log.info(
                        "blockdiag %-8s w=%-5d b=%-3d %-24s %8.1f us",
                        dtype_name,
                        width,
                        block_size,
                        method,
                        us,
                    )
    return results


# ---------------------------------------------------------------------------------------------
# (b) 2:4 core and the whole ArmorLinear-style op, fp16
# ---------------------------------------------------------------------------------------------
def sparse_formats(weight_24) -> dict:
    """The semi-structured tensors to time: torch's default and each backend it has."""
    from torch import sparse

    formats, notes = {}, {}
    makers = {"default": sparse.to_sparse_semi_structured}
    for name, cls_name in (
        ("cuSPARSELt", "SparseSemiStructuredTensorCUSPARSELT"),
        ("CUTLASS", "SparseSemiStructuredTensorCUTLASS"),
    ):
        cls = getattr(sparse, cls_name, None)
        if cls is not None:
            makers[name] = cls.from_dense
    for name, make in makers.items():
        try:
            formats[name] = make(weight_24)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            notes[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            log.warning("semi-structured %s unavailable: %s", name, notes[name])
    return {"formats": formats, "notes": notes}


def time_armor_linear(kernel: BlockDiagKernel, args, timer: Timer) -> list[dict]:
    import torch

    gen = torch.Generator(device="cuda").manual_seed(args.seed)
    block_size = max(int_list(args.block_sizes))
    results = []
    for out_features, in_features in linear_shapes(args.linear_shapes):
        row = time_linear_shape(kernel, timer, out_features, in_features, block_size, args, gen)
        log.info(
            "linear %dx%d: dense %.1f us, sparse core x%.2f, ARMOR op x%.2f",
            out_features,
            in_features,
            row["dense_linear"]["median_us"],
            row.get("sparse_core_speedup", float("nan")),
            row.get("armor_linear_speedup", float("nan")),
        )
        results.append(row)
    return results


def time_linear_shape(kernel, timer, out_features, in_features, block_size, args, gen) -> dict:
    """Dense F.linear vs the 2:4 core alone vs y = A (S (B x)), fp16, one weight shape."""
    import torch
    import torch.nn.functional as F

    from armor_export.prune.baselines import magnitude

    dtype, tokens = torch.float16, args.tokens

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device="cuda", generator=gen) * scale).to(dtype)

    x = randn(tokens, in_features)
    dense = randn(out_features, in_features, scale=in_features**-0.5)
    core, _ = magnitude(dense)  # the 2 largest |w| of every 4 consecutive inputs
    b_blocks = randn(in_features // block_size, block_size, block_size, scale=block_size**-0.5)
    a_blocks = randn(out_features // block_size, block_size, block_size, scale=block_size**-0.5)
    b_t = b_blocks.transpose(1, 2).contiguous()
    a_t = a_blocks.transpose(1, 2).contiguous()
    h_in = torch.empty_like(x)
    y_out = torch.empty(tokens, out_features, device="cuda", dtype=dtype)
    sparse = sparse_formats(core)
    row = {
        "tokens": tokens,
        "out_features": out_features,
        "in_features": in_features,
        "block_size": block_size,
        "dtype": "float16",
        "backend_notes": sparse["notes"],
        "dense_linear": timer(lambda: F.linear(x, dense)),
        "sparse_core": {},
        "armor_linear_kernel": {},
        "armor_linear_bmm": {},
    }
    dense_us = row["dense_linear"]["median_us"]
    want = F.linear(x, core)
    for name, weight in list(sparse["formats"].items()):

        def core_only(weight=weight):
            return F.linear(x, weight)

        def armor_op(weight=weight):  # y = A (S (B x)) with the plugin kernel
            kernel(x, b_blocks, h_in)
            return kernel(F.linear(h_in, weight), a_blocks, y_out)

        def armor_op_bmm(weight=weight):  # the same with torch.bmm for A and B
            return blockdiag_bmm_strided(F.linear(blockdiag_bmm_strided(x, b_t), weight), a_t)

        try:  # a backend may convert but not run here (CUTLASS's kernels are sm_8x only)
            rel_err = float((core_only() - want).abs().max() / want.abs().max())
        except (RuntimeError, NotImplementedError) as exc:
            note = row["backend_notes"][name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            log.warning("semi-structured %s does not run here: %s", name, note)
            del sparse["formats"][name]
            continue
        for key, fn in (
            ("sparse_core", core_only),
            ("armor_linear_kernel", armor_op),
            ("armor_linear_bmm", armor_op_bmm),
        ):
            timing = timer(fn)
            row[key][name] = {**timing, "speedup_vs_dense": dense_us / timing["median_us"]}
        row["sparse_core"][name]["max_rel_err_vs_dense_pruned"] = rel_err
    if sparse["formats"]:
        best = min(sparse["formats"], key=lambda n: row["sparse_core"][n]["median_us"])
        row["best_backend"] = best
        row["sparse_core_speedup"] = row["sparse_core"][best]["speedup_vs_dense"]
        row["armor_linear_speedup"] = row["armor_linear_kernel"][best]["speedup_vs_dense"]
        row["meets_target"] = row["sparse_core_speedup"] >= SPARSE_TARGET
    return row


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def environment(nvcc: str, arch: str) -> dict:
    import torch

    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    cusparselt = None
    backend = getattr(torch.backends, "cusparselt", None)
    if backend is not None and backend.is_available():
        cusparselt = backend.version()
    return {
        "gpu": props.name,
        "compute_capability": f"{props.major}.{props.minor}",
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "kernel_arch": arch,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cusparselt": cusparselt,
        "nvcc": nvcc_version(nvcc),
        "python": sys.version.split()[0],
    }


def write_outputs(out: Path, report: dict) -> None:
    write_report(out, "gpu", report, render_markdown(report))


def timing_notes(node, where: str = "") -> list[str]:
    """Every timing's note (graph capture fallbacks), with where in the report it is."""
    found = []
    if isinstance(node, dict):
        if "median_us" in node and node.get("note"):
            found.append(f"{where or 'timing'}: {node['note']}")
        for key, value in node.items():
            found += timing_notes(value, f"{where}/{key}" if where else str(key))
    elif isinstance(node, list):
        for value in node:
            found += timing_notes(value, where)
    return found


def render_markdown(report: dict) -> str:
    env, settings = report["environment"], report["settings"]
    lines = [
        "# GPU benchmark: block-diagonal kernel and 2:4 sparse core",
        "",
        *meta_lines(report),
        f"- GPU: {env['gpu']} (compute capability {env['compute_capability']}, "
        f"{env['gpu_memory_gib']} GiB); kernel built for {env['kernel_arch']}",
        f"- torch {env['torch']}, CUDA {env['cuda']}, cuSPARSELt {env['cusparselt']}, "
        f"{env['nvcc']}",
        f"- timing: median of {settings['samples']} samples of {settings['inner']} calls "
        f"({settings['timing']}), {settings['warmup']} warm-up calls, inputs hot in L2",
        "",
        "## Kernel correctness vs reference.blockdiag_matmul",
        "",
        f"{report['correctness_summary']}",
        "",
        "| dtype | b | path | kernel | max abs err | atol / rtol | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["correctness"]:
        lines.append(
            f"| {r['dtype']} | {r['block_size']} | {r['path']} | {r['kernel']} | "
            f"{r['max_abs_err']:.2e} | {r['atol']:g} / {r['rtol']:g} | "
            f"{'yes' if r['ok'] else 'NO'} |"
        )
    lines += [
        "",
        f"## Block-diagonal matmul, {settings['rows']} rows (µs, median)",
        "",
        "y_i = x_i W_iᵀ over the blocks; TFLOP/s counts 2·rows·width·b, GB/s reads x and W and "
        "writes y once.",
        "",
        "| dtype | width | b | method | µs | TFLOP/s | GB/s | vs best torch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in report["blockdiag"]:
        groups.setdefault((r["dtype"], r["width"], r["block_size"]), []).append(r)
    for (dtype_name, width, block_size), rows in groups.items():
        best_torch = min(r["median_us"] for r in rows if r["method"].startswith("torch"))
        for r in rows:
            ratio = best_torch / r["median_us"]
            lines.append(
                f"| {dtype_name} | {width} | {block_size} | {r['method']} | "
                f"{r['median_us']:.1f} | {r['tflops']:.1f} | {r['gbps']:.0f} | {ratio:.2f}x |"
            )
    lines += [
        "",
        f"## ArmorLinear-style op, fp16, {settings['tokens']} tokens",
        "",
        "Dense: `F.linear(x, W)`. Sparse core: `F.linear(x, S)` with S a 2:4 "
        "`to_sparse_semi_structured` tensor (per backend). ARMOR op: y = A (S (B x)) with the "
        "block-diagonal factors (b = the largest --block-sizes) on the armor kernel, or on "
        "torch.bmm (strided). Target for "
        f"the core: >= {SPARSE_TARGET}x dense.",
        "",
        "| out x in | dense µs | backend | core µs | core speed-up | ARMOR op µs (kernel) | "
        "speed-up | ARMOR op µs (bmm) | speed-up | core max rel err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["armor_linear"]:
        shape = f"{r['out_features']}x{r['in_features']}"
        dense_us = r["dense_linear"]["median_us"]
        if not r["sparse_core"]:
            lines.append(f"| {shape} | {dense_us:.1f} | none available | | | | | | | |")
        for name, core in r["sparse_core"].items():
            op = r["armor_linear_kernel"][name]
            op_bmm = r["armor_linear_bmm"][name]
            lines.append(
                f"| {shape} | {dense_us:.1f} | {name} | {core['median_us']:.1f} | "
                f"{core['speedup_vs_dense']:.2f}x | {op['median_us']:.1f} | "
                f"{op['speedup_vs_dense']:.2f}x | {op_bmm['median_us']:.1f} | "
                f"{op_bmm['speedup_vs_dense']:.2f}x | {core['max_rel_err_vs_dense_pruned']:.1e} |"
            )
    lines += ["", "Best backend per shape against the target:", ""]
    for r in report["armor_linear"]:
        shape = f"{r['out_features']}x{r['in_features']}"
        if "best_backend" not in r:
            lines.append(f"- {shape}: no semi-structured backend ({r['backend_notes']})")
            continue
        verdict = "meets" if r["meets_target"] else "MISSES"
        lines.append(
            f"- {shape}: {r['best_backend']}, core {r['sparse_core_speedup']:.2f}x "
            f"({verdict} {SPARSE_TARGET}x), ARMOR op {r['armor_linear_speedup']:.2f}x"
        )
        for name, note in r["backend_notes"].items():
            lines.append(f"  - {name} unavailable: {note}")
    notes = sorted(set(timing_notes(report)))
    if notes:
        lines += ["", "Timed eagerly instead of in a CUDA graph:", ""]
        lines += [f"- {note}" for note in notes]
    lines += ["", "Every figure is also in gpu.json.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problem = gpu_problem()
    if problem:
        print(f"bench_gpu: {problem}", file=sys.stderr)
        return 1
    nvcc = find_nvcc(args.nvcc)
    if nvcc is None:
        print(
            "bench_gpu: nvcc not found (PATH, /usr/local/bin, /usr/local/cuda/bin)", file=sys.stderr
        )
        return 1
    if str(ROOT) not in sys.path:  # run from a checkout without installing armor-export
        sys.path.insert(0, str(ROOT))

    import torch

    torch.manual_seed(args.seed)
    major, minor = torch.cuda.get_device_capability()
    arch = f"sm_{major}{minor}"
    with tempfile.TemporaryDirectory(prefix="armor_bench_gpu_") as tmp:
        build_dir = Path(args.build_dir) if args.build_dir else Path(tmp)
        kernel = BlockDiagKernel(build_kernel(nvcc, arch, build_dir))
        timer = Timer(args.warmup, args.inner, args.samples, graphs=not args.no_graphs)
        correctness = check_kernel(kernel, int_list(args.block_sizes), args.seed)
        blockdiag = time_blockdiag(kernel, args, timer)
        armor_linear = time_armor_linear(kernel, args, timer)

    failed = [r for r in correctness if not r["ok"]]
    summary = (
        f"PASSED: {len(correctness)} cases within tolerance"
        if not failed
        else f"FAILED: {len(failed)} of {len(correctness)} cases outside tolerance"
    )
    report = {
        "command": command("bench_gpu.py", argv),
        "date": utc_now("%Y-%m-%dT%H:%M:%S+00:00"),  # ISO 8601, as this report always had
        "environment": environment(nvcc, arch),
        "settings": {
            "rows": args.rows,
            "widths": int_list(args.widths),
            "block_sizes": int_list(args.block_sizes),
            "tokens": args.tokens,
            "warmup": args.warmup,
            "inner": args.inner,
            "samples": args.samples,
            "timing": "eager" if args.no_graphs else "cuda-graph",
            "seed": args.seed,
            "sparse_target": SPARSE_TARGET,
        },
        "correctness_summary": summary,
        "correctness": correctness,
        "blockdiag": blockdiag,
        "armor_linear": armor_linear,
    }
    out = Path(args.out)
    write_outputs(out, report)
    log.info("wrote %s and %s", out / "gpu.md", out / "gpu.json")
    log.info("%s", summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
