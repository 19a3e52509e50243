# install the carried small wheels and this tree; assemble carried model parts (sha256 checked)
python -m pip install --no-deps -q .whl/*.whl 2>&1 | tail -1 || true
python -m pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -1 || true
if [ ! -f /root/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ] && ls /root/parts/qwen.part.* >/dev/null 2>&1; then
  mkdir -p /root/m && cat /root/parts/qwen.part.* > /root/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
fi
if [ ! -f /root/gem/gemma-3-270m-q4_k_m.gguf ] && ls /root/parts/gemma.part.* >/dev/null 2>&1; then
  mkdir -p /root/gem && cat /root/parts/gemma.part.* > /root/gem/gemma-3-270m-q4_k_m.gguf
fi
[ -f /root/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ] && (cd /root/m && echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" | sha256sum -c -)
[ -f /root/gem/gemma-3-270m-q4_k_m.gguf ] && (cd /root/gem && echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  gemma-3-270m-q4_k_m.gguf" | sha256sum -c -)
git log --oneline -1 2>/dev/null; git status --short 2>/dev/null | head -5
python -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__, torch.cuda.get_device_name())"
