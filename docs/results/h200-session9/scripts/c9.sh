# session 9, call C: Qwen needle in prose at 64K/128K (2x/4x the window) with the default of 2026-12-03,
# 16 samples each (the same samples, seed 0, as session 8's HF + YaRN x4 run); the two lengths side by side
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress --no-meter --max-new-tokens 24 --variants actqkv --samples 16"
mkdir -p /root/out/c
for L in 64K 128K; do
(timeout 225 python -m actqkv_llm bench recall $M --lengths $L --out /root/out/c/$L > /root/out/c/$L.log 2>&1) &
done
wait
for L in 64K 128K; do grep -v -e Warn -e Converting /root/out/c/$L.log | tail -4; done | tee $OUT/c.txt
tar czf $OUT/c.tgz -C /root/out c
