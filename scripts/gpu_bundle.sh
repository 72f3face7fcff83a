#!/usr/bin/env bash
# Packs what the GPU machine needs to run Parallora, built on this (Debian 12) machine.
#
#   scripts/gpu_bundle.sh [--build DIR] [--arch 90a] [--out .gpu]
#
# The lent GPU machine (device tool; see /work/.library/device/KINDS.md) has the CUDA toolkit,
# CMake, ninja and PyTorch + transformers + PEFT, but none of the Debian libraries we build
# against (MLIR, OpenBLAS, Open MPI, protobuf) and no network. So the CUDA build happens here
# (nvcc compiles without a GPU) and travels:
#
#   .gpu/bundle.tar.xz   bin/    lora-run, test_cuda_kernels, test_nccl_comm
#                        lib/    libparallora_cuda_backend.so and every shared library those need
#                                that is not glibc's or CUDA's own (OpenBLAS, Open MPI, protobuf,
#                                libstdc++, libgomp, ...); CUDA (cudart, cuBLASLt, NCCL) comes
#                                from the device's toolkit / PyTorch wheels (gpu_env.sh finds it)
#                        ompi/   a relocatable Open MPI 4.1 (mpirun, orted, MCA components, help
#                                files) for the multi-rank runs on one GPU: OPAL_PREFIX=ompi
#                        plans/  the plans gpu_check.sh runs, compiled here (lora-compile needs
#                                MLIR, which the device lacks)
#
# Then, in a device `run`: carry [".gpu/bundle.tar.xz"] (not .gpu: the unpacked copy would pass the
# 64 MiB carry limit), command `scripts/gpu_check.sh all` (it unpacks the
# bundle and uses it when .gpu/bundle.tar.xz exists). Size: about 19 MiB compressed (117 MiB unpacked; oneDNN adds
# 7 / 40 MiB) (the carry
# limit is 64 MiB with the repository). `--check` runs the bundled binaries here in a mount
# namespace where the Debian libraries they need are hidden, to prove the bundle is complete.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUILD="$ROOT/build-gpu"
ARCH=90a
DEST="$ROOT/.gpu"
CHECK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD="$(realpath -m "$2")"; shift 2 ;;
    --arch) ARCH="$2"; shift 2 ;;
    --out) DEST="$(realpath -m "$2")"; shift 2 ;;
    --check) CHECK=1; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "gpu_bundle: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

echo "gpu_bundle: building the CUDA targets in $BUILD (sm_$ARCH)"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMLIR_DIR=/usr/lib/llvm-16/lib/cmake/mlir \
        -DCMAKE_CUDA_ARCHITECTURES="$ARCH" > /dev/null
fi
cmake --build "$BUILD" --target lora-run lora-compile parallora_cuda_backend test_cuda_kernels test_nccl_comm
[ -f "$BUILD/runtime/cuda/libparallora_cuda_backend.so" ] || { echo "gpu_bundle: no CUDA backend built (is nvcc found?)" >&2; exit 1; }

STAGE="$DEST/bundle"
rm -rf "$STAGE"
mkdir -p "$STAGE/bin" "$STAGE/lib" "$STAGE/plans"
cp "$BUILD/tools/lora-run/lora-run" "$BUILD/tests/unit/test_cuda_kernels" "$BUILD/tests/unit/test_nccl_comm" "$STAGE/bin/"
cp "$BUILD/runtime/cuda/libparallora_cuda_backend.so" "$STAGE/lib/"

# Shared libraries: everything ldd resolves except glibc's own and CUDA's (the device has those).
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libcuda\.so|libcudart\.so|libcublas|libcublasLt|libnccl|libnvidia)'
copy_deps() {
  ldd "$1" | awk '/=> \//{print $1, $3}' | while read -r name path; do
    if [[ "$name" =~ $skip ]]; then continue; fi
    [ -e "$STAGE/lib/$name" ] || cp -L "$path" "$STAGE/lib/$name"
  done
}
for f in "$STAGE"/bin/* "$STAGE"/lib/libparallora_cuda_backend.so; do copy_deps "$f"; done

# Open MPI, relocated: OPAL_PREFIX=ompi finds bin/, the MCA components and the help files under it
# at Debian's relative paths (prefix /usr, libdir lib/x86_64-linux-gnu/openmpi/lib).
OMPI_LIBDIR=/usr/lib/x86_64-linux-gnu/openmpi/lib
O="$STAGE/ompi"
mkdir -p "$O/bin" "$O/lib/x86_64-linux-gnu/openmpi/lib" "$O/share"
cp -L /usr/bin/orterun "$O/bin/mpirun"
cp -L /usr/bin/orted "$O/bin/orted"
cp -rL "$OMPI_LIBDIR/openmpi3" "$O/lib/x86_64-linux-gnu/openmpi/lib/"
cp -rL /usr/share/openmpi "$O/share/"
# Components backed by hardware or services the device does not have (and their extra
# libraries) stay behind; what remains needs only the libraries copied below.
rm -f "$O"/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/mca_*{ucx,ofi,psm,verbs,openib,java,cuda,lustre,gpfs,ime,pvfs}*.so
for f in "$O/bin/mpirun" "$O/bin/orted" "$O"/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/*.so; do copy_deps "$f"; done
# libmca_common_*.so live next to libmpi in Debian's openmpi libdir.
for f in "$OMPI_LIBDIR"/libmca_common_*.so*; do
  n="$(basename "$f")"
  case "$n" in *ucx*|*ofi*|*verbs*) continue ;; esac
  [ -e "$STAGE/lib/$n" ] || cp -L "$f" "$STAGE/lib/$n"
done

# Plans (lora-compile runs here: it needs MLIR): gpu_check.sh's own `plans` stage, so the names
# and flags are defined once.
OUT="$DEST/plans-log" PARALLORA_NO_BUNDLE=1 PLANS_DIR="$STAGE/plans" COMPILE="$BUILD/tools/lora-compile/lora-compile" \
    scripts/gpu_check.sh plans > /dev/null

git rev-parse HEAD > "$STAGE/COMMIT" 2>/dev/null || true
rm -rf "$DEST/plans-log"
(cd "$DEST" && tar -cJf bundle.tar.xz bundle)
echo "gpu_bundle: $DEST/bundle.tar.xz ($(du -h "$DEST/bundle.tar.xz" | cut -f1); unpacked $(du -sh "$STAGE" | cut -f1))"

if [ "$CHECK" = 1 ]; then
  # The device lacks our Debian libraries: hide them and run the bundled binaries.
  echo "gpu_bundle: --check: running the bundle with the Debian libraries hidden"
  unshare -m --propagation private bash -c '
    set -e
    hide() { for f in "$@"; do [ -e "$f" ] && mount --bind /dev/null "$f"; done; }
    mkdir -p /tmp/gpu_bundle_empty
    for d in /usr/lib/x86_64-linux-gnu/openmpi /usr/share/openmpi; do mount --bind /tmp/gpu_bundle_empty "$d"; done
    hide /usr/lib/x86_64-linux-gnu/libopenblas*.so* /usr/lib/x86_64-linux-gnu/openblas-pthread/*.so* \
         /usr/lib/x86_64-linux-gnu/openblas-openmp/*.so* \
         /usr/lib/x86_64-linux-gnu/libprotobuf.so* /usr/lib/x86_64-linux-gnu/libmpi.so* \
         /usr/lib/x86_64-linux-gnu/libopen-rte.so* /usr/lib/x86_64-linux-gnu/libopen-pal.so* \
         /usr/lib/x86_64-linux-gnu/libhwloc.so* /usr/lib/x86_64-linux-gnu/libgfortran.so* \
         /usr/bin/orted /usr/bin/orterun
    source "'"$ROOT"'/scripts/gpu_env.sh" "'"$STAGE"'"
    lora-run --help > /dev/null
    lora-run --describe "$PARALLORA_BUNDLE/plans/single.lp" | head -2
    lora-run "$PARALLORA_BUNDLE/plans/single.lp" --data tests/fixtures/train/tiny/tokens.bin --steps 2 --out /tmp/gpu_bundle_run1 | tail -1
    mpirun -np 2 lora-run "$PARALLORA_BUNDLE/plans/tp2.lp" --data tests/fixtures/train/tiny/tokens.bin --steps 2 \
        --threads 1 --out /tmp/gpu_bundle_run2 | grep -E "done:|sent"
    test_cuda_kernels --gtest_brief=1 2>&1 | tail -2
    lora-run "$PARALLORA_BUNDLE/plans/single.lp" --data tests/fixtures/train/tiny/tokens.bin --steps 1 --backend cuda \
        --out /tmp/gpu_bundle_run3 2>&1 | tail -1 || true
  '
fi
