# session 21, call E: the real small models' speed on the GPU beside HF SDPA (bf16): Qwen2.5-Coder-0.5B 32K/128K, SmolLM2-135M 8K/32K
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 170 python -m actqkv_llm bench speed --model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress --lengths 32K,128K --no-reload --out $OUT/qwen 2>&1 | grep -v -e Warn -e Converting | tee $OUT/qwen.log
PYTHONPATH=$PWD timeout 110 python -m actqkv_llm bench speed --model /root/s --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --device cuda --dtype bf16 --no-progress --lengths 8K,32K --no-reload --out $OUT/smol 2>&1 | grep -v -e Warn -e Converting | tee $OUT/smol.log
rm -f $OUT/*/speed.png
