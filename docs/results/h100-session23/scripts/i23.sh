# session 23, call I: Qwen2.5-Coder-0.5B (its 13 parts carried with up.sh) on the GPU beside HF SDPA (bf16), 32K/128K, at the tree's default: the real small model's prefill and decode after this session's changes (before: docs/results/h100-session21/e/qwen)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; mkdir -p /root/m; cat /root/parts/q.a? | head -c 491400064 > /root/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf; sha256sum /root/m/*.gguf; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 175 python -m actqkv_llm bench speed --model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress --lengths 32K,128K --no-reload --out $OUT/qwen 2>&1 | grep -v -e Warn -e Converting | tee $OUT/qwen.log
rm -f $OUT/*/speed.png
