# session 8, call D: Qwen2.5-Coder-0.5B needle in prose past what YaRN x4 covers (256K, 512K; 3 samples each):
# the default (fixed angle) and HF SDPA with YaRN x4, side by side on one GPU (times not clean)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
mkdir -p $OUT/d
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress --no-meter --max-new-tokens 24"
(timeout 330 python -m actqkv_llm bench recall $M --variants actqkv --lengths 256K,512K --samples 3 --out $OUT/d/fixed > $OUT/d/fixed.log 2>&1) &
(timeout 330 python -m actqkv_llm bench recall $M --yarn 4 --variants hf --lengths 256K,512K --samples 3 --out $OUT/d/yarn > $OUT/d/yarn.log 2>&1) &
wait
for f in $OUT/d/fixed.log $OUT/d/yarn.log; do echo "== $f"; grep -v -e Warn -e Converting $f | tail -n 8; done
rm -f $OUT/d/*/recall.png $OUT/d/*/recall.json
