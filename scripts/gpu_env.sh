# Sourced: `source scripts/gpu_env.sh BUNDLE_DIR` sets up a shell to run the bundle of
# scripts/gpu_bundle.sh (on the GPU machine, or here with --check): PATH (lora-run, the tests,
# mpirun), LD_LIBRARY_PATH (the bundle's libraries, then CUDA's: the toolkit's lib64 and the
# nvidia-* Python wheels next to PyTorch, where cuBLASLt and NCCL live on the device), OPAL_PREFIX
# (the relocated Open MPI) and PARALLORA_CUDA_BACKEND (the module lora-run loads).
PARALLORA_BUNDLE="$(cd "${1:?usage: source scripts/gpu_env.sh BUNDLE_DIR}" && pwd)"
export PARALLORA_BUNDLE
export PATH="$PARALLORA_BUNDLE/ompi/bin:$PARALLORA_BUNDLE/bin:$PATH"
_cuda_dirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib; do
  [ -d "$d" ] && _cuda_dirs="$_cuda_dirs:$d"
done
# Wheels: site-packages/nvidia/<pkg>/lib (cu12 layout) or nvidia/cu13/lib (cu13 layout).
_site="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)"
if [ -n "$_site" ] && [ -d "$_site/nvidia" ]; then
  while IFS= read -r d; do _cuda_dirs="$_cuda_dirs:$d"; done < <(
    find "$_site/nvidia" -maxdepth 3 -type f \( -name 'libcublasLt.so*' -o -name 'libnccl.so*' -o -name 'libcudart.so*' \) \
      -printf '%h\n' 2>/dev/null | sort -u)
fi
export LD_LIBRARY_PATH="$PARALLORA_BUNDLE/lib${_cuda_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export OPAL_PREFIX="$PARALLORA_BUNDLE/ompi"
export PARALLORA_CUDA_BACKEND="$PARALLORA_BUNDLE/lib/libparallora_cuda_backend.so"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
# No InfiniBand / shared-memory CMA surprises in a container: TCP + shared memory between local ranks.
export OMPI_MCA_btl=self,vader,tcp OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_pml=ob1
unset _cuda_dirs _site
