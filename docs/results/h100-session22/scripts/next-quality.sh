# NOT RUN (written in session 22 for the next lease): Qwen2.5-Coder-0.5B past the window with the default of
# 8270598 on a GPU, whose prefill now scores with the Triton passes (prefill_kernel="auto"). Same samples
# (seed 0) as docs/results/h100-session21/d/ (PyTorch scoring: 64K 16/16, 128K 16/16); compare the
# answers sample by sample with d/64K-recall.jsonl and d/128K-recall.jsonl.
# Before it: carry the 13 parts of .gguf-parts/ with docs/results/h100-session21/scripts/up.sh, one call each,
# back to back while the machine is warm; copy this script and setup.sh to .gpu/ and carry .whl and .gpu.
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache; T0=$SECONDS
left() { echo $(( 575 - (SECONDS - T0) )); }
{ bash .gpu/setup.sh; git log --oneline 2>/dev/null | head -1; mkdir -p /root/m /root/s /root/out
  cat /root/parts/p.* > /root/all.bin; ls -l /root/all.bin
  head -c 491400064 /root/all.bin > /root/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
  tail -c +491400065 /root/all.bin > /root/s/SmolLM2-135M-Instruct.Q4_1.gguf; rm /root/all.bin
  sha256sum /root/m/*.gguf /root/s/*.gguf; } 2>&1 | tee $OUT/q.log
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress --no-meter --max-new-tokens 24 --variants actqkv --samples 16"
for LT in 64K:230 128K:330; do L=${LT%:*}; T=${LT#*:}; [ $T -gt $(left) ] && T=$(left)
  PYTHONPATH=$PWD timeout $T python -m actqkv_llm bench recall $M --lengths $L --out /root/out/$L > /root/out-$L.log 2>&1
  echo "$L rc=$? at $((SECONDS-T0)) s" | tee -a $OUT/q.log; grep -v -e Warn -e Converting /root/out-$L.log | tail -6 | tee -a $OUT/q.log
  cp /root/out/$L/recall.md $OUT/$L-recall.md; cp /root/out/$L/recall.jsonl $OUT/$L-recall.jsonl
done
echo "done at $((SECONDS-T0)) s" | tee -a $OUT/q.log
