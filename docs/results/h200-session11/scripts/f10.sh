# session 10, call F: SmolLM2-135M passkey at 32K and 64K with the default of 2026-12-03 (issue 11's
# must-show: at least the 18/20 of the H100 run of 2026-11-23), fp32, the same samples (seed 0)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
mkdir -p /root/out/f
timeout 300 python -m actqkv_llm bench quality --model /root/smol --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --device cuda --dtype fp32 --no-progress --tasks passkey --lengths 32K,64K --samples 2 --methods actqkv --out /root/out/f/passkey 2>&1 | grep -v -e Warn -e Converting | tail -30 | tee $OUT/passkey.log
tar czf $OUT/f.tgz -C /root/out f
