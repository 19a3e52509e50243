# session 8, call C: the 8B shape at 32K with the old default's rerank 8 (beside call A's new default);
# Qwen2.5-Coder-0.5B needle in prose at 64K and 128K, 16 samples: the default (memory at the fixed
# angle past the window) and HF SDPA with YaRN x4, side by side on one GPU (times not clean)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh 2>&1 | tee $OUT/env.txt
mkdir -p $OUT/c
timeout 100 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-baseline --no-reload -o rerank=8 --out $OUT/c/r8 2>&1 | grep -v Warn | tail -8 | tee $OUT/c/r8.log
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress --no-meter --max-new-tokens 24"
(timeout 420 python -m actqkv_llm bench recall $M --variants actqkv --lengths 64K,128K --samples 16 --out $OUT/c/fixed > $OUT/c/fixed.log 2>&1) &
(timeout 420 python -m actqkv_llm bench recall $M --yarn 4 --variants hf --lengths 64K,128K --samples 16 --out $OUT/c/yarn > $OUT/c/yarn.log 2>&1) &
wait
for f in $OUT/c/fixed.log $OUT/c/yarn.log; do echo "== $f"; grep -v -e Warn -e Converting $f | tail -n 8; done
