# NOT RUN in the twentieth session (no device time left); the plan for the next lease
# session 20, call D: Qwen2.5-Coder-0.5B needle in prose past the window with main's preset (question_rerank=16),
# 16 samples each at 64K and 128K (the same samples, seed 0, as the eighth session's HF + YaRN x4 run), one at a time
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; mkdir -p /root/m; cat /root/parts/qwen.part.* > /root/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf; cd /root/m && sha256sum qwen2.5-coder-0.5b-instruct-q4_k_m.gguf; cd - >/dev/null; git log --oneline 2>/dev/null | head -1; } 2>&1 | tee $OUT/d.log
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress --no-meter --max-new-tokens 24 --variants actqkv --samples 16"
for LT in 64K:200 128K:320; do L=${LT%:*}; T=${LT#*:}
  PYTHONPATH=$PWD timeout ${T:-250} python -m actqkv_llm bench recall $M --lengths $L --out /root/out/$L > /root/out-$L.log 2>&1
  echo "$L rc=$?" | tee -a $OUT/d.log; grep -v -e Warn -e Converting /root/out-$L.log | tail -4 | tee -a $OUT/d.log
  cp /root/out/$L/recall.md $OUT/$L-recall.md; cp /root/out/$L/recall.jsonl $OUT/$L-recall.jsonl
done
