set -x
date
cd /work/main
git log -1 --format=%h
OMP_NUM_THREADS=2 actqkv bench recall --model qwen2.5-coder-0.5b --device cpu --dtype fp32 --no-progress --variants actqkv \
  --lengths 30K --samples 5 --layout completion --max-new-tokens 24 --document-every 100000 --out /tmp/s19/comp30
echo rc=$?
date
