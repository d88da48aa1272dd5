"""io fixtures: files written by the real Python libraries, read back by tests/io.

  tools/.venv/bin/python tools/make_reference.py io

writes tests/fixtures/io/:
  ref.safetensors           safetensors.torch.save_file: F32, F16, BF16, I64 tensors + metadata
  ref_safetensors.json      the values of every tensor there (as float / int lists)
  ref.gguf                  gguf.GGUFWriter: metadata of every type (nested arrays, string
                            arrays), tensors F32, F16, Q8_0, Q4_0, Q4_1 (gguf.quants.quantize),
                            Q4_K and Q6_K (random blocks with sane scales)
  ref_gguf.json             the expected metadata (type, value) and tensor shapes/types
  ref_gguf_expected.safetensors  for each tensor: "<name>.src" (float input before
                            quantization) and "<name>.deq" (gguf.quants.dequantize), F32

The other direction (files our writers produce, read by the Python libraries):

  tools/.venv/bin/python tools/ref_io.py --check-cpp build-io/test_io

runs the C++ round-trip test with LORAFIT_IO_OUT set, then opens what it wrote with
safetensors and gguf and compares with what the test says it wrote.
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def _safetensors(out):
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1234)
    tensors = {
        "a.f32": torch.randn(3, 5, generator=g),
        "b.f16": (torch.randn(4, 3, generator=g) * 3).to(torch.float16),
        "c.bf16": (torch.randn(2, 7, generator=g) * 100).to(torch.bfloat16),
        "d.i64": torch.tensor([0, 1, 2, -5, 2**31 - 1], dtype=torch.int64),
        "e.scalar": torch.tensor(2.5, dtype=torch.float32),
        "f.empty": torch.zeros(0, 4, dtype=torch.float32),
    }
    meta = {"format": "pt", "note": "written by safetensors " + _version("safetensors")}
    save_file(tensors, os.path.join(out, "ref.safetensors"), metadata=meta)
    expect = {
        "metadata": meta,
        "tensors": {
            k: {
                "dtype": str(v.dtype).replace("torch.", ""),
                "shape": list(v.shape),
                "values": (v.to(torch.int64) if not v.is_floating_point() else v.to(torch.float64))
                .flatten()
                .tolist(),
            }
            for k, v in tensors.items()
        },
    }
    with open(os.path.join(out, "ref_safetensors.json"), "w") as f:
        json.dump(expect, f, indent=1)


def _version(mod):
    import importlib.metadata

    return importlib.metadata.version(mod)


def _random_kquant_blocks(rng, qtype, n_blocks):
    """Random K-quant blocks whose f16 scales are finite and small."""
    import gguf

    _, bsize = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, bsize), dtype=np.uint8)
    if qtype == gguf.GGMLQuantizationType.Q4_K:
        # f16 d, f16 dmin at the start
        raw[:, 0:2] = np.frombuffer(np.float16(0.0123).tobytes(), np.uint8)
        raw[:, 2:4] = np.frombuffer(np.float16(0.0051).tobytes(), np.uint8)
    else:  # Q6_K: f16 d at the end
        raw[:, bsize - 2 : bsize] = np.frombuffer(np.float16(0.0077).tobytes(), np.uint8)
    return raw


def _gguf(out):
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFValueType as T
    from safetensors.numpy import save_file

    path = os.path.join(out, "ref.gguf")
    w = gguf.GGUFWriter(path, "llama")
    meta = []  # (key, type name, value[, element type name])

    def kv(key, val, vtype, sub=None, tname=None):
        w.add_key_value(key, val, vtype, sub)
        entry = {"key": key, "type": tname or vtype.name.lower(), "value": val}
        if sub is not None:
            entry["elem"] = sub.name.lower()
        meta.append(entry)

    kv("t.u8", 200, T.UINT8)
    kv("t.i8", -100, T.INT8)
    kv("t.u16", 60000, T.UINT16)
    kv("t.i16", -30000, T.INT16)
    kv("t.u32", 4000000000, T.UINT32)
    kv("t.i32", -2000000000, T.INT32)
    kv("t.f32", 0.15625, T.FLOAT32)
    kv("t.bool", True, T.BOOL)
    kv("t.string", "héllo, gguf", T.STRING)
    kv("t.u64", 2**63 + 5, T.UINT64)
    kv("t.i64", -(2**62), T.INT64)
    kv("t.f64", 3.141592653589793, T.FLOAT64)
    kv("t.arr.str", ["<unk>", "a", "", "▁the"], T.ARRAY, T.STRING)
    kv("t.arr.i32", [1, -2, 3, 2**31 - 1], T.ARRAY, T.INT32)
    kv("t.arr.u8", [0, 255, 7], T.ARRAY, T.UINT8)
    kv("t.arr.f32", [0.5, -1.25, 1e-3], T.ARRAY, T.FLOAT32)
    kv("t.arr.f64", [0.1, 2.0], T.ARRAY, T.FLOAT64)
    kv("t.arr.bool", [True, False, True], T.ARRAY, T.BOOL)
    kv("t.arr.nested", [[1, 2], [3, 4, 5]], T.ARRAY, T.ARRAY)
    kv("t.arr.nested_str", [["x", "y"], ["z"]], T.ARRAY, T.ARRAY)
    kv("llama.block_count", 2, T.UINT32)
    kv("general.alignment", 64, T.UINT32)
    # GGUFWriter honours general.alignment only through its data_alignment attribute.
    w.data_alignment = 64

    rng = np.random.default_rng(7)
    expected = {}
    tensors = []

    def add_float(name, arr, qtype):
        arr = arr.astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, arr)
            deq = arr
        elif qtype == Q.F16:
            w.add_tensor(name, arr.astype(np.float16))
            deq = arr.astype(np.float16).astype(np.float32)
        else:
            qd = gguf.quants.quantize(arr, qtype)
            w.add_tensor(name, qd, raw_shape=qd.shape, raw_dtype=qtype)
            deq = gguf.quants.dequantize(qd, qtype).astype(np.float32)
        expected[name + ".src"] = arr
        expected[name + ".deq"] = deq
        tensors.append({"name": name, "type": qtype.name, "shape": list(arr.shape)})

    add_float("w.f32", rng.standard_normal((4, 64)), Q.F32)
    add_float("w.f16", rng.standard_normal((3, 32)), Q.F16)
    add_float("w.q8_0", rng.standard_normal((4, 64)) * 2, Q.Q8_0)
    add_float("w.q4_0", rng.standard_normal((2, 96)), Q.Q4_0)
    add_float("w.q4_1", rng.standard_normal((3, 64)) + 0.5, Q.Q4_1)
    add_float("w.vec", rng.standard_normal((32,)), Q.Q8_0)
    # Edge cases: all zeros, a block with ties, large magnitudes.
    edge = np.zeros((3, 32), np.float32)
    edge[1] = np.arange(32) - 15.5
    edge[2] = np.linspace(-1000, 3000, 32)
    add_float("w.edge_q4_0", edge, Q.Q4_0)
    add_float("w.edge_q4_1", edge, Q.Q4_1)
    add_float("w.edge_q8_0", edge, Q.Q8_0)
    for qtype, name in ((Q.Q4_K, "w.q4_k"), (Q.Q6_K, "w.q6_k")):
        raw = _random_kquant_blocks(rng, qtype, 2)
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        deq = gguf.quants.dequantize(raw, qtype).astype(np.float32)
        expected[name + ".deq"] = deq
        tensors.append({"name": name, "type": qtype.name, "shape": list(deq.shape)})

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, os.path.join(out, "ref_gguf_expected.safetensors"))
    with open(os.path.join(out, "ref_gguf.json"), "w") as f:
        # general.architecture comes first, written by GGUFWriter itself.
        json.dump({"metadata": [{"key": "general.architecture", "type": "string", "value": "llama"}]
                   + meta, "tensors": tensors, "alignment": 64}, f, indent=1, ensure_ascii=False)


def main(fixtures_dir, models_dir):
    out = os.path.join(fixtures_dir, "io")
    os.makedirs(out, exist_ok=True)
    _safetensors(out)
    _gguf(out)
    total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"[ref_io] wrote {out} ({total} bytes)")


def check_cpp(test_binary):
    """Reads the files that the C++ writers produced with the Python libraries."""
    import gguf
    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, LORAFIT_IO_OUT=d)
        subprocess.run([test_binary, "--gtest_filter=*PythonInterop*"], env=env, check=True)
        with open(os.path.join(d, "expected.json")) as f:
            expect = json.load(f)
        n = 0
        with safe_open(os.path.join(d, "ours.safetensors"), "pt") as f:
            assert f.metadata() == expect["safetensors"]["metadata"], f.metadata()
            assert sorted(f.keys()) == sorted(expect["safetensors"]["tensors"]), list(f.keys())
            for name, e in expect["safetensors"]["tensors"].items():
                t = f.get_tensor(name)
                assert str(t.dtype) == "torch." + e["dtype"], (name, t.dtype)
                assert list(t.shape) == e["shape"], (name, t.shape)
                got = t.double().flatten().tolist()
                assert got == e["values"], (name, got[:5], e["values"][:5])
                n += 1
        r = gguf.GGUFReader(os.path.join(d, "ours.gguf"))
        for e in expect["gguf"]["metadata"]:
            field = r.fields[e["key"]]
            assert field.types[0].name.lower() == e["type"], (e["key"], field.types)
            vals = field.contents()
            if isinstance(e["value"], float):
                assert abs(vals - e["value"]) <= 1e-6 * max(1.0, abs(e["value"])), (e, vals)
            else:
                assert vals == e["value"], (e, vals)
            n += 1
        tensors = {t.name: t for t in r.tensors}
        for e in expect["gguf"]["tensors"]:
            t = tensors[e["name"]]
            assert t.tensor_type.name == e["type"], (e["name"], t.tensor_type)
            deq = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64).flatten()
            assert list(reversed([int(x) for x in t.shape])) == e["shape"], (e["name"], t.shape)
            assert np.array_equal(deq, np.array(e["values"], np.float64)), e["name"]
            n += 1
        print(f"[ref_io] Python read {n} tensors/keys from the C++ writers' files: all equal")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--check-cpp":
        check_cpp(sys.argv[2])
    else:
        sys.exit("usage: ref_io.py --check-cpp PATH/TO/test_io   (fixtures: make_reference.py io)")
