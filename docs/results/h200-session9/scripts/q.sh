# session 9, call Q: the default of 2026-12-03 (rerank 16, the question reranks the best 8x):
# Qwen needle in prose 16K/30K, 16 samples per cell, ask and completion, per-layer recall (meter);
# Gemma 3 270M passkey 64K/128K fp32; all side by side on one GPU (times not clean).
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh 2>&1 | tee $OUT/env.txt
R=/root/out/q; mkdir -p $R
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress"
for L in 16K 30K; do
(timeout 545 python -m actqkv_llm bench recall $M --variants actqkv --lengths $L --samples 16 --layout ask --max-new-tokens 40 --out $R/ask-$L > $R/ask-$L.log 2>&1) &
(timeout 545 python -m actqkv_llm bench recall $M --variants actqkv --lengths $L --samples 16 --layout completion --max-new-tokens 24 --out $R/comp-$L > $R/comp-$L.log 2>&1) &
done
(timeout 545 python -m actqkv_llm bench quality --model /root/gem --gguf-file gemma-3-270m-q4_k_m.gguf --device cuda --dtype fp32 --no-progress --tasks passkey --lengths 64K,128K --samples 1 --methods actqkv --out $R/gemma > $R/gemma.log 2>&1) &
wait
for f in $R/*.log; do echo "== $f"; grep -v -e Warn -e Converting $f | tail -n 14; done | tee $OUT/summary.txt
tar czf $OUT/q.tgz -C /root/out q
