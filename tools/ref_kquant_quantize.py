"""K-quant quantizer fixture: fp32 rows and what llama.cpp's own quantizer makes of them.

  $PY tools/ref_kquant_quantize.py [OUT.safetensors]
    PY: a venv with llama-cpp-python 0.3.36, numpy and safetensors (scripts/interop.sh --prepare
    makes one at ~/.cache/lorafit/venv)

gguf-py has no K-quant quantizer, so the bytes come from ggml itself: quantize_row_q4_K_ref,
quantize_row_q5_K_ref and quantize_row_q6_K_ref of the libggml-base.so that llama-cpp-python
ships (what `llama-quantize` runs for these types when no importance matrix is given), called
through ctypes. Inputs, each [rows, cols] F32 with an odd row count:

  real.minilm    [5, 1536]  all-MiniLM-L6-v2 encoder.layer.0.output.dense.weight rows 0-4 (fp32
                            weights as trained)
  real.smollm2   [3, 1536]  SmolLM2 blk.0.ffn_down.weight rows 0-2, dequantized from the Q4_1
                            GGUF (values already on a 4-bit grid: ties and equal values)
  random         [7, 512]   N(0, 1) rows scaled by 10^k (k from -6 to 3), and special blocks:
                            a zero row, constant sub-blocks, all-positive and all-negative
                            sub-blocks, one large outlier per sub-block, subnormal-sized values

Stored: "<input>.x" (F32) and "<type>.<input>.q" (U8 [rows, row bytes], the blocks as a GGUF
holds them). tests/tensor/kquant_test.cpp requires lorafit's quantizer to give the same bytes.
"""
import ctypes
import glob
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QK_K = 256
BLOCK_BYTES = {"q4_k": 144, "q5_k": 176, "q6_k": 210}


def libggml():
    import llama_cpp  # noqa: F401  (only to find the shipped libraries)
    d = os.path.dirname(llama_cpp.__file__)
    paths = glob.glob(os.path.join(d, "lib", "libggml-base.so*"))
    if not paths:
        sys.exit(f"ref_kquant_quantize: no libggml-base.so under {d}/lib")
    lib = ctypes.CDLL(paths[0])
    for t in BLOCK_BYTES:
        f = getattr(lib, f"quantize_row_{t[:2]}_K_ref")
        f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        f.restype = None
    return lib


def ggml_quantize(lib, t, x):
    x = np.ascontiguousarray(x, np.float32)
    rows, cols = x.shape
    assert cols % QK_K == 0
    out = np.zeros((rows, cols // QK_K * BLOCK_BYTES[t]), np.uint8)
    f = getattr(lib, f"quantize_row_{t[:2]}_K_ref")
    for i in range(rows):  # row by row, as llama.cpp quantizes a tensor
        f(x[i].ctypes.data, out[i].ctypes.data, cols)
    return out


def random_rows(rng):
    rows = []
    for k in (-6, -2, 0, 3):
        rows.append(rng.standard_normal(512) * 10.0 ** k)
    special = np.zeros(512)
    special[32:64] = 0.25                                   # constant sub-block
    special[64:96] = np.abs(rng.standard_normal(32)) + 1.0  # all positive, min well above 0
    special[96:128] = -np.abs(rng.standard_normal(32)) - 1.0  # all negative
    special[128:256] = rng.standard_normal(128) * 0.01
    special[128 + 7] = 5.0                                  # outlier
    special[256:512] = rng.standard_normal(256)
    special[256:512:16] = -8.0                              # outliers every 16 values (Q6_K groups)
    rows.append(special)
    rows.append(np.zeros(512))                              # all-zero row
    tiny = rng.standard_normal(512) * 1e-38                 # scales below f16's range
    tiny[:256] = np.round(rng.standard_normal(256) * 4) / 8  # few distinct values, many ties
    rows.append(tiny)
    return np.asarray(rows, np.float32)


def main(out=None):
    from safetensors.numpy import load_file, save_file
    import gguf
    out = out or os.path.join(ROOT, "tests/fixtures/kquant/kquant_quantize.safetensors")
    lib = libggml()
    rng = np.random.default_rng(15)
    minilm = load_file(os.path.join(ROOT, "models/all-MiniLM-L6-v2/model.safetensors"))
    key = [k for k in minilm if k.endswith("encoder.layer.0.output.dense.weight")][0]
    r = gguf.GGUFReader(os.path.join(ROOT, "models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"))
    t = [t for t in r.tensors if t.name == "blk.0.ffn_down.weight"][0]
    smol = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    inputs = {
        "real.minilm": minilm[key][:5].astype(np.float32),
        "real.smollm2": smol[:3],
        "random": random_rows(rng),
    }
    tensors = {}
    for name, x in inputs.items():
        tensors[name + ".x"] = np.ascontiguousarray(x)
        for qt in BLOCK_BYTES:
            tensors[f"{qt}.{name}.q"] = ggml_quantize(lib, qt, x)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    import llama_cpp
    save_file(tensors, out, metadata={"llama_cpp_python": llama_cpp.__version__})
    print(f"wrote {out}: {', '.join(f'{k} {v.shape}' for k, v in tensors.items())}")


if __name__ == "__main__":
    main(*sys.argv[1:])
