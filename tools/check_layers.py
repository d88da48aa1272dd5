#!/usr/bin/env python3
"""Fails when a file includes a header of a layer above its own (docs/ARCHITECTURE.md, the table).

Each layer is a folder src/<layer>/ with its public header include/lorafit/<layer>.h
(include/lorafit/quant.h belongs to tensor). A file may include its own layer's headers and the
public headers of the layers its layer may use; another layer's internal headers (src/<other>/*.h)
never. examples/ may include only public headers.

  tools/check_layers.py [REPO_ROOT]      exit 1 and one line per violation
  tools/check_layers.py --self-test      proves that a violation is caught
"""
import os
import re
import sys
import tempfile

# layer -> the layers it may use (directly). Keep in step with docs/ARCHITECTURE.md.
MAY_USE = {
    "tensor": set(),
    "kernels": {"tensor"},
    "nn": {"kernels", "tensor"},
    "io": {"tensor"},
    "text": {"io", "tensor"},
    "models": {"nn", "io", "text", "kernels", "tensor"},
    "peft": {"models", "nn", "io", "kernels", "tensor"},
    "train": {"peft", "models", "nn", "io", "text", "kernels", "tensor"},
    "cli": {"train", "peft", "models", "nn", "io", "text", "kernels", "tensor"},
}
PUBLIC_ALIAS = {"quant": "tensor", "blas_restart": "kernels"}  # second public headers of tensor, kernels
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def header_layer(inc):
    """(layer, public?) of an include path as written, or None when it is not ours."""
    parts = inc.split("/")
    if len(parts) == 2 and parts[0] == "lorafit":
        name = parts[1].rsplit(".", 1)[0]
        name = PUBLIC_ALIAS.get(name, name)
        return (name, True) if name in MAY_USE else None
    if len(parts) >= 2 and parts[0] in MAY_USE:
        return parts[0], False
    return None


def file_layer(rel):
    parts = rel.split(os.sep)
    if parts[0] == "src" and len(parts) > 2 and parts[1] in MAY_USE:
        return parts[1]
    if parts[0] == "include" and len(parts) == 3 and parts[1] == "lorafit":
        name = PUBLIC_ALIAS.get(parts[2].rsplit(".", 1)[0], parts[2].rsplit(".", 1)[0])
        return name if name in MAY_USE else None
    if parts[0] == "examples":
        return "example"
    return None


def check(root):
    problems = []
    for top in ("src", "include", "examples"):
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for f in sorted(files):
                if not f.endswith((".cpp", ".h", ".hpp", ".inc")):
                    continue
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, root)
                layer = file_layer(rel)
                if layer is None:
                    continue
                with open(path, encoding="utf-8", errors="replace") as fh:
                    for n, line in enumerate(fh, start=1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        hl = header_layer(m.group(1))
                        if hl is None:
                            continue
                        target, public = hl
                        if layer == "example":
                            if not public:
                                problems.append(f"{rel}:{n}: an example includes the internal header "
                                                f'"{m.group(1)}"; examples use only include/lorafit/*.h')
                            continue
                        if target == layer:
                            continue
                        if not public:
                            problems.append(f'{rel}:{n}: layer {layer} includes "{m.group(1)}", an '
                                            f"internal header of layer {target}")
                        elif target not in MAY_USE[layer]:
                            allowed = ", ".join(sorted(MAY_USE[layer])) or "nothing"
                            problems.append(f'{rel}:{n}: layer {layer} includes "{m.group(1)}" of layer '
                                            f"{target}, which is not below it (it may use: {allowed})")
    return problems


def self_test():
    with tempfile.TemporaryDirectory() as t:
        def write(rel, text):
            p = os.path.join(t, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w") as f:
                f.write(text)
        write("src/nn/linear.cpp", '#include "lorafit/nn.h"\n#include "lorafit/kernels.h"\n')
        write("include/lorafit/nn.h", '#include "lorafit/kernels.h"\n')
        ok = check(t)
        write("src/kernels/bad.cpp", '#include "lorafit/tensor.h"\n#include "lorafit/peft.h"\n')
        write("src/peft/bad.cpp", '#include "nn/nn_internal.h"\n')
        write("include/lorafit/io.h", '#include "lorafit/quant.h"\n#include "lorafit/models.h"\n')
        write("examples/x.cpp", '#include "lorafit/train.h"\n#include "peft/peft_internal.h"\n')
        bad = check(t)
    expect = ["src/kernels/bad.cpp:2", "src/peft/bad.cpp:1", "include/lorafit/io.h:2", "examples/x.cpp:2"]
    good = not ok and len(bad) == len(expect) and all(any(b.startswith(e) for b in bad) for e in expect)
    print("\n".join(bad))
    print("self-test " + ("passed" if good else f"FAILED: clean tree gave {ok}"))
    return 0 if good else 1


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--self-test":
        return self_test()
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    problems = check(root)
    for p in problems:
        print(p)
    print(f"layer check: {len(problems)} violation(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
