#!/usr/bin/env python3
"""Fails when a source file includes a module its layer may not use (docs/architecture.md "Layers").

The project's layers, bottom to top (an arrow reads "may include"):

    tools/  ->  passes/  ->  ir/ frontend/ models/  ->  runtime/plan/ -> runtime/base/
    tools/  ->  runtime/{core,cpu,cuda,comm,io,train}/  ->  runtime/plan/ -> runtime/base/

The executing runtime knows nothing of the compiler (ir, frontend, models, passes, MLIR/LLVM);
the compiler knows nothing of the executing runtime; nothing below tools/ includes tools/.
Usage: check_layers.py [repo_root] (exit 1 with one line per forbidden include);
       check_layers.py --self-test (the check flags a tree of known-bad includes).
"""
import os
import re
import sys

# Module of a path: the first matching prefix.
MODULES = [
    ("runtime/base/", "base"),
    ("runtime/plan/", "plan"),
    ("runtime/", "runtime"),
    ("frontend/", "frontend"),
    ("models/", "models"),
    ("ir/", "ir"),
    ("passes/", "passes"),
    ("tools/", "tools"),
    ("mlir/", "mlir"),
    ("llvm/", "mlir"),
]

# What each module may include (its own module is always allowed).
ALLOWED = {
    "base": set(),
    "plan": {"base"},
    "runtime": {"plan", "base"},
    "ir": {"mlir", "plan", "base"},
    "frontend": {"ir", "mlir", "plan", "base"},
    "models": {"ir", "frontend", "mlir", "plan", "base"},
    "passes": {"ir", "frontend", "models", "mlir", "plan", "base"},
    "tools": {"runtime", "passes", "ir", "frontend", "models", "mlir", "plan", "base"},
}

SOURCE_DIRS = ["runtime", "frontend", "models", "ir", "passes", "tools"]
EXTENSIONS = (".h", ".hpp", ".cpp", ".cc", ".cu", ".cuh", ".td", ".inc")
INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"')


def module_of(path):
    for prefix, name in MODULES:
        if path.startswith(prefix):
            return name
    return None


def check(root):
    problems = []
    for top in SOURCE_DIRS:
        for dirpath, _, files in os.walk(os.path.join(root, top)):
            for f in files:
                if not f.endswith(EXTENSIONS):
                    continue
                full = os.path.join(dirpath, f)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                src = module_of(rel)
                with open(full, encoding="utf-8", errors="replace") as fh:
                    for lineno, line in enumerate(fh, 1):
                        m = INCLUDE.match(line)
                        if not m:
                            continue
                        dst = module_of(m.group(1))
                        if dst is None or dst == src:
                            continue  # a relative or generated include, or the same module
                        if dst not in ALLOWED[src]:
                            problems.append(f"{rel}:{lineno}: {src} may not include {m.group(1)} ({dst}); "
                                            f"allowed: {', '.join(sorted(ALLOWED[src])) or 'nothing of the project'}")
    return problems


def self_test():
    """The check must be able to fail: a tree with one forbidden include per rule kind."""
    import tempfile
    bad = {
        "runtime/core/a.cpp": '#include "models/llama_builder.h"',  # runtime -> compiler
        "runtime/plan/b.h": '#include "runtime/core/executor.h"',   # plan -> runtime
        "passes/lower/c.cpp": '#include "runtime/comm/comm.h"',     # compiler -> runtime
        "frontend/d.cpp": '#include "passes/train/Passes.h"',       # frontend -> passes (up)
        "runtime/io/e.cpp": '#include "mlir/IR/Builders.h"',        # runtime -> MLIR
    }
    good = {"runtime/core/f.cpp": '#include "runtime/plan/plan.h"', "passes/lower/g.cpp": '#include "runtime/plan/schedule.h"'}
    with tempfile.TemporaryDirectory() as root:
        for rel, text in {**bad, **good}.items():
            os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
            with open(os.path.join(root, rel), "w") as fh:
                fh.write(text + "\n")
        found = {p.split(":")[0] for p in check(root)}
    if found != set(bad):
        print(f"check_layers self-test FAILED: flagged {sorted(found)}, expected {sorted(bad)}")
        return 1
    print(f"check_layers self-test: all {len(bad)} forbidden includes flagged, no allowed one")
    return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    root = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")
    problems = check(root)
    for p in problems:
        print(p)
    if problems:
        print(f"check_layers: {len(problems)} forbidden include(s); see docs/architecture.md \"Layers\"")
        return 1
    print("check_layers: every include points down the layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
