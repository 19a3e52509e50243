# session 8, call B: Qwen2.5-Coder-0.5B needle in prose, 16 samples per cell, 16K + 30K, the new default
# (rerank 16) beside rerank 8 through ask (one prefill shared), and completion; per-layer recall (meter).
# The two runs side by side on one GPU: times not clean.
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh 2>&1 | tee $OUT/env.txt
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress"
mkdir -p $OUT/b
(timeout 530 python -m actqkv_llm bench recall $M --variants actqkv,actqkv+rerank=8 --lengths 16K,30K --samples 16 --layout ask --max-new-tokens 40 --out $OUT/b/ask > $OUT/b/ask.log 2>&1) &
(timeout 530 python -m actqkv_llm bench recall $M --variants actqkv --lengths 16K,30K --samples 16 --layout completion --max-new-tokens 24 --out $OUT/b/comp > $OUT/b/comp.log 2>&1) &
wait
for f in $OUT/b/*.log; do echo "== $f"; grep -v Warn $f | tail -n 14; done
