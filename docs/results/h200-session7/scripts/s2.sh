# session 7, call C2: speed of the real small models (Qwen2.5-Coder-0.5B, SmolLM2-135M) beside HF SDPA, and
# answer_many on the 8B shape with 128-token answers; one process at a time
bash .gpu/setup3.sh > $OUT/env.txt 2>&1
export ACTQKV_CACHE_DIR=/root/cache
mkdir -p $OUT/r
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress"
S="--model /root/smol --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --device cuda --dtype bf16 --no-progress"
timeout 130 python -m actqkv_llm bench speed $M --lengths 8K,32K --no-reload --out $OUT/r/qwen 2>&1 | tail -10 | tee $OUT/r/qwen.log
timeout 130 python -m actqkv_llm bench speed $S --lengths 8K,32K --no-reload --out $OUT/r/smol 2>&1 | tail -10 | tee $OUT/r/smol.log
timeout 250 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-baseline --no-reload --decode-tokens 128 --many 8 --out $OUT/r/many128 2>&1 | tail -8 | tee $OUT/r/many128.log
