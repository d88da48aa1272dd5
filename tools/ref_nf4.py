"""NF4 / FP4 fixture: bitsandbytes 0.50 quantize_4bit output on real weights and odd sizes.

  tools/make_reference.sh nf4      (or: python tools/ref_nf4.py [OUT.bin])

Inputs (fp32): MiniLM encoder.layer.0.attention.self.query.weight rows 0-1 (768 values),
SmolLM2 blk.0.attn_q rows 0-28 dequantized from the Q4_1 GGUF with the gguf package, cut to 16681
values (261 blocks of 64, the last partial; 2 nested blocks of 256, the last partial), and random
odd sizes 1, 63, 65, 129 (last partial block) plus a block of zeros and exact code values (ties).
For each input and each of nf4/fp4 x (no) double quantization the file records what bitsandbytes
returns: packed codes, absmax (fp32) or absmax codes + offset + nested absmax, and the first values
of dequantize_4bit. Layout (little endian), after magic "BNB4" u32 version=1:
  f32 dynamic_map[256]                           (the nested quant_map)
  u32 ncases, then per case:
    u32 name_len, name; i64 n; u8 quant_type (0 nf4, 1 fp4); u8 double_quant
    u8 has_input; f32 input[n] if has_input (else the previous case's input); u8 packed[(n+1)/2]
    if !double_quant: f32 absmax[nblocks]
    else: u8 absmax_q[nblocks]; f32 offset; f32 nested_absmax[(nblocks+255)/256]
    i64 ndeq; f32 dequant[ndeq]                  (dequantize_4bit, first ndeq values)
  u32 nmean, then per case (double quantization of many blocks, to pin torch's fp32 mean):
    i64 nblocks; f32 absmax[nblocks] (the input is absmax[b] at element 64*b, zeros elsewhere);
    f32 offset; u8 absmax_q[nblocks]; f32 nested_absmax[(nblocks+255)/256]
"""
import os
import struct
import sys

import numpy as np
import torch
import bitsandbytes
import bitsandbytes.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def inputs(models):
    from safetensors.numpy import load_file

    st = load_file(os.path.join(models, "all-MiniLM-L6-v2/model.safetensors"))
    key = [k for k in st if k.endswith("encoder.layer.0.attention.self.query.weight")][0]
    yield "minilm.q.rows01", st[key][:2].astype(np.float32).reshape(-1)

    import gguf

    r = gguf.GGUFReader(os.path.join(models, "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"))
    t = [t for t in r.tensors if t.name == "blk.0.attn_q.weight"][0]
    w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
    yield "smollm2.attn_q.16681", w[:16681].copy()

    g = np.random.default_rng(11)
    for n in (1, 63, 65, 129):
        yield f"randn.{n}", (g.standard_normal(n) * 0.05).astype(np.float32)
    nf4 = F.get_4bit_type("nf4", device="cpu").numpy()
    ties = np.concatenate([nf4, (nf4[:-1] + nf4[1:]) / 2, np.zeros(64 - 31, np.float32)])
    yield "ties.nf4", (ties.astype(np.float32) * 0.5).astype(np.float32)
    yield "zeros.64", np.zeros(64, np.float32)


def main(fixtures=os.path.join(ROOT, "tests/fixtures"), models=os.path.join(ROOT, "models"), out=None):
    out = out or os.path.join(fixtures, "quant4", "bnb4.bin")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    assert bitsandbytes.__version__.startswith("0.50"), bitsandbytes.__version__
    cases = []
    for name, x in inputs(models):
        for qt in ("nf4", "fp4"):
            for dq in (False, True):
                cases.append((name, x, qt, dq))
    b = bytearray(b"BNB4" + struct.pack("<I", 1))
    b += F.create_dynamic_map().numpy().astype("<f4").tobytes()
    b += struct.pack("<I", len(cases))
    for name, x, qt, dq in cases:
        xt = torch.from_numpy(x)
        packed, st = F.quantize_4bit(xt, blocksize=64, quant_type=qt, compress_statistics=dq)
        nb = (len(x) + 63) // 64
        b += struct.pack("<I", len(name)) + name.encode() + struct.pack("<qBB", len(x), qt == "fp4", dq)
        first = qt == "nf4" and not dq
        b += struct.pack("<B", first) + (x.astype("<f4").tobytes() if first else b"")
        p = packed.numpy().reshape(-1)
        assert p.size == (len(x) + 1) // 2
        b += p.tobytes()
        if not dq:
            assert st.absmax.dtype == torch.float32 and st.absmax.numel() == nb
            b += st.absmax.numpy().astype("<f4").tobytes()
        else:
            assert st.absmax.dtype == torch.uint8 and st.absmax.numel() == nb
            assert torch.equal(st.state2.code, F.create_dynamic_map())
            b += st.absmax.numpy().tobytes()
            b += struct.pack("<f", float(st.offset))
            assert st.state2.absmax.numel() == (nb + 255) // 256
            b += st.state2.absmax.numpy().astype("<f4").tobytes()
        deq = F.dequantize_4bit(packed, st).numpy().reshape(-1)
        deq = deq[:1024]
        b += struct.pack("<q", deq.size) + deq.astype("<f4").tobytes()
    g = np.random.default_rng(12)
    means = [1101, 5003]
    b += struct.pack("<I", len(means))
    for nb in means:
        a = (np.abs(g.standard_normal(nb)) * 0.1 + 0.01).astype(np.float32)
        x = np.zeros(nb * 64, np.float32)
        x[::64] = a
        packed, st = F.quantize_4bit(torch.from_numpy(x), blocksize=64, quant_type="nf4", compress_statistics=True)
        b += struct.pack("<q", nb) + a.astype("<f4").tobytes() + struct.pack("<f", float(st.offset))
        b += st.absmax.numpy().tobytes() + st.state2.absmax.numpy().astype("<f4").tobytes()
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b)
    os.replace(tmp, out)
    print(f"wrote {out}: {len(cases)} cases, {len(b)} bytes (bitsandbytes {bitsandbytes.__version__})")


if __name__ == "__main__":
    main(out=sys.argv[1] if len(sys.argv) > 1 else None)
