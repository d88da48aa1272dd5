"""K-quant fixture: raw Q4_K / Q5_K / Q6_K blocks and gguf-py's dequantization of them.

  tools/make_reference.sh kquant      (or: python tools/ref_kquant.py [OUT.safetensors])

Needs only numpy, safetensors and the gguf package (gguf==0.19, as tools/pyenv.sh installs).
gguf-py dequantizes the K-quants but has no quantizer for them, so the blocks come from two
sources, for each of the three types:

  <type>.real    [3, 1536]  SmolLM2 blk.0.ffn_down.weight rows 0-2 (dequantized from the Q4_1 GGUF
                            of tools/fetch_models.sh), quantized here by a plain min/max quantizer
                            written from ggml's block layouts (the packing is checked: gguf-py's
                            dequantization of our bytes must be close to the weights).
  <type>.random  [5, 512]   uniformly random bytes everywhere, f16 d / dmin included (any finite
                            f16: negative, subnormal, zero), so every 6-bit scale/min pattern and
                            every quant value occurs.

Each tensor is stored twice: "<name>.raw" (U8 [rows, row bytes], the blocks as a GGUF holds them)
and "<name>.deq" (F32 [rows, cols], gguf.quants.dequantize of those bytes). Odd row counts on
purpose. tests/tensor/kquant_test.cpp compares lorafit's dequantization with .deq bit for bit.
"""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QK_K = 256


def f16_bytes(x):
    return np.asarray(x, np.float16).reshape(-1, 1).view(np.uint8)


def pack_scales(sc, m):
    """ggml's 12-byte packing of 8 six-bit (scale, min) pairs (inverse of get_scale_min_k4)."""
    nb = sc.shape[0]
    out = np.zeros((nb, 12), np.uint8)
    for j in range(4):
        out[:, j] = (sc[:, j] & 63) | ((sc[:, j + 4] >> 4) << 6)
        out[:, j + 4] = (m[:, j] & 63) | ((m[:, j + 4] >> 4) << 6)
        out[:, j + 8] = (sc[:, j + 4] & 15) | ((m[:, j + 4] & 15) << 4)
    return out


def quantize_qk(x, bits):
    """Q4_K (bits 4) / Q5_K (bits 5) blocks of x [nb, 256]: x ~ d*sc*q - dmin*m per 32."""
    nb = x.shape[0]
    qmax = (1 << bits) - 1
    sub = x.reshape(nb, 8, 32)
    lo = np.minimum(sub.min(-1), 0.0)
    scale = (sub.max(-1) - lo) / qmax
    mins = -lo
    d = (scale.max(-1) / 63).astype(np.float16).astype(np.float32)
    dmin = (mins.max(-1) / 63).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(scale / np.where(d > 0, d, 1)[:, None]), 0, 63).astype(np.uint8)
    m = np.clip(np.round(mins / np.where(dmin > 0, dmin, 1)[:, None]), 0, 63).astype(np.uint8)
    dl = (d[:, None] * sc)[:, :, None]
    ml = (dmin[:, None] * m)[:, :, None]
    q = np.clip(np.round((sub + ml) / np.where(dl > 0, dl, 1)), 0, qmax).astype(np.uint8)
    qs = np.zeros((nb, 128), np.uint8)
    for k in range(4):  # sub-block 2k in the low nibbles of qs[32k..], 2k+1 in the high ones
        qs[:, 32 * k : 32 * k + 32] = (q[:, 2 * k] & 15) | ((q[:, 2 * k + 1] & 15) << 4)
    parts = [f16_bytes(d), f16_bytes(dmin), pack_scales(sc, m)]
    if bits == 5:
        qh = np.zeros((nb, 32), np.uint8)
        for j in range(8):  # bit j of qh[l]: bit 4 of element l of sub-block j
            qh |= ((q[:, j] >> 4) & 1) << j
        parts.append(qh)
    parts.append(qs)
    return np.concatenate(parts, axis=1)


def quantize_q6k(x):
    """Q6_K blocks of x [nb, 256]: x ~ d*sc*(q - 32) per 16, sc int8."""
    nb = x.shape[0]
    sub = x.reshape(nb, 16, 16)
    amax_i = np.abs(sub).argmax(-1)
    vmax = np.take_along_axis(sub, amax_i[..., None], -1)[..., 0]
    scale = -vmax / 32
    d = (np.abs(scale).max(-1) / 127).astype(np.float16).astype(np.float32)
    sc = np.clip(np.round(scale / np.where(d > 0, d, 1)[:, None]), -128, 127).astype(np.int8)
    dl = (d[:, None] * sc.astype(np.float32))[:, :, None]
    q = np.clip(np.round(sub / np.where(dl != 0, dl, 1)) + 32, 0, 63).astype(np.uint8).reshape(nb, 256)
    ql = np.zeros((nb, 128), np.uint8)
    qh = np.zeros((nb, 64), np.uint8)
    for h in range(2):
        v = q[:, 128 * h : 128 * h + 128]
        for l in range(32):
            ql[:, 64 * h + l] = (v[:, l] & 15) | ((v[:, l + 64] & 15) << 4)
            ql[:, 64 * h + l + 32] = (v[:, l + 32] & 15) | ((v[:, l + 96] & 15) << 4)
            qh[:, 32 * h + l] = (
                (v[:, l] >> 4) | ((v[:, l + 32] >> 4) << 2) | ((v[:, l + 64] >> 4) << 4) | ((v[:, l + 96] >> 4) << 6)
            )
    return np.concatenate([ql, qh, sc.view(np.uint8), f16_bytes(d)], axis=1)


def random_blocks(rng, qtype, nb):
    import gguf

    _, bsize = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(nb, bsize), dtype=np.uint8)
    # Any finite f16 for d (and dmin): redraw inf / NaN bit patterns.
    offs = [bsize - 2] if qtype == gguf.GGMLQuantizationType.Q6_K else [0, 2]
    for o in offs:
        while True:
            h = raw[:, o : o + 2].copy().view(np.float16)[:, 0]
            bad = ~np.isfinite(h)
            if not bad.any():
                break
            raw[bad, o : o + 2] = rng.integers(0, 256, size=(int(bad.sum()), 2), dtype=np.uint8)
    return raw


def main(fixtures=os.path.join(ROOT, "tests/fixtures"), models=os.path.join(ROOT, "models"), out=None):
    import gguf
    from gguf import GGMLQuantizationType as Q
    from safetensors.numpy import save_file

    out = out or os.path.join(fixtures, "kquant", "kquant.safetensors")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    r = gguf.GGUFReader(os.path.join(models, "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"))
    t = [t for t in r.tensors if t.name == "blk.0.ffn_down.weight"][0]
    w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
    real = np.ascontiguousarray(w[:3])  # [3, 1536]
    assert real.shape == (3, 1536), real.shape

    rng = np.random.default_rng(20261202)
    tensors = {}
    for qtype, name in ((Q.Q4_K, "q4_k"), (Q.Q5_K, "q5_k"), (Q.Q6_K, "q6_k")):
        _, bsize = gguf.GGML_QUANT_SIZES[qtype]
        x = real.reshape(-1, QK_K)
        if qtype == Q.Q6_K:
            blocks = quantize_q6k(x)
        else:
            blocks = quantize_qk(x, 4 if qtype == Q.Q4_K else 5)
        assert blocks.shape == (x.shape[0], bsize), blocks.shape
        deq = gguf.quants.dequantize(blocks, qtype).astype(np.float32).reshape(real.shape)
        err = float(np.abs(deq - real).max())
        step = float(np.abs(real).max()) / {Q.Q4_K: 7, Q.Q5_K: 15, Q.Q6_K: 31}[qtype]
        assert err < step, f"{name}: packing does not match gguf-py's layout (max err {err}, step {step})"
        print(f"  {name}.real: max |deq - w| = {err:.3g} (|w| max {float(np.abs(real).max()):.3g})")
        tensors[f"{name}.real.raw"] = blocks.reshape(real.shape[0], -1)
        tensors[f"{name}.real.deq"] = deq

        raw = random_blocks(rng, qtype, 10)
        deq = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(5, 512)
        assert np.isfinite(deq).all()
        tensors[f"{name}.random.raw"] = raw.reshape(5, -1)
        tensors[f"{name}.random.deq"] = deq
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, out,
              metadata={"gguf": gguf.__version__ if hasattr(gguf, "__version__") else "0.19"})
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")


if __name__ == "__main__":
    main(out=sys.argv[1] if len(sys.argv) > 1 else None)
