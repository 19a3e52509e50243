#!/bin/bash
# The three samples (13-15) of the 128K Qwen cell the H200 run of the ninth session did not reach.
cd /work/main
export OMP_NUM_THREADS=2
date -u
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
sha256sum /root/qwen/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
/usr/bin/time -v python -m actqkv_llm bench recall --model /root/qwen --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
  --device cpu --dtype fp32 --no-progress --no-meter --max-new-tokens 24 --variants actqkv \
  --lengths 128K --first-sample 13 --samples 3 --out /work/scratch/q128/out
date -u
