# session 23, call D (from session 21 d21.sh): Qwen2.5-Coder-0.5B needle in prose past the window with main's preset, 16 samples each at 64K and 128K
# (seed 0: the samples of the ninth session's run and of HF + YaRN x4); the GPU tests beside it (quality only, times not clean)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache; T0=$SECONDS
left() { echo $(( 575 - (SECONDS - T0) )); }
{ bash .gpu/setup.sh; git log --oneline 2>/dev/null | head -1; mkdir -p /root/m /root/s /root/out
  cat /root/parts/q.* > /root/all.bin; ls -l /root/all.bin
  head -c 491400064 /root/all.bin > /root/m/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
  tail -c +491400065 /root/all.bin > /root/s/SmolLM2-135M-Instruct.Q4_1.gguf; rm /root/all.bin
  sha256sum /root/m/*.gguf /root/s/*.gguf; } 2>&1 | tee $OUT/d.log
(PYTHONPATH=$PWD timeout 500 python -m pytest -o addopts="" -q -p no:cacheprovider --tb=short -rf --durations=8 tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py tests/test_bound_mass.py -m "not slow" 2>&1 | grep -v Warn | tail -45 > $OUT/gpu-tests.txt) &
M="--model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --device cuda --dtype bf16 --no-progress --no-meter --max-new-tokens 24 --variants actqkv --samples 16"
for LT in 64K:230 128K:330; do L=${LT%:*}; T=${LT#*:}; [ $T -gt $(left) ] && T=$(left)
  PYTHONPATH=$PWD timeout $T python -m actqkv_llm bench recall $M --lengths $L --out /root/out/$L > /root/out-$L.log 2>&1
  echo "$L rc=$? at $((SECONDS-T0)) s" | tee -a $OUT/d.log; grep -v -e Warn -e Converting /root/out-$L.log | tail -6 | tee -a $OUT/d.log
  cp /root/out-$L.log $OUT/$L.log; cp /root/out/$L/recall.md $OUT/$L-recall.md; cp /root/out/$L/recall.jsonl $OUT/$L-recall.jsonl
done
wait; echo "done at $((SECONDS-T0)) s" | tee -a $OUT/d.log
