set -x
date
cd /work/main
git log -1 --format=%h
python -c "import torch, transformers; print(torch.__version__, transformers.__version__)"
OMP_NUM_THREADS=2 actqkv bench recall --model qwen2.5-coder-0.5b --device cpu --dtype fp32 --no-progress \
  --variants actqkv --lengths 16K --first-sample 6 --samples 10 --layout ask --max-new-tokens 40 --out /tmp/s19/ask16
echo rc=$?
date
