# Gemma 3 270M passkey at 64K and 128K with the current default (fp32, as the earlier H100 table)
python -m pip install --no-deps -q .whl/*.whl 2>&1 | tail -1
python -m pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -1
mkdir -p /root/gem $OUT/gem
cat /root/parts/gem.part.* > /root/gem/gemma-3-270m-q4_k_m.gguf
(cd /root/gem && sha256sum gemma-3-270m-q4_k_m.gguf) | tee $OUT/gem/sha.txt
export ACTQKV_CACHE_DIR=/root/cache
timeout ${T:-280} python -m actqkv_llm bench quality --model /root/gem --gguf-file gemma-3-270m-q4_k_m.gguf --device cuda --dtype fp32 --tasks passkey --lengths 64K,128K --samples 1 --methods actqkv --no-progress --out $OUT/gem/q > $OUT/gem/run.log 2>&1
tail -20 $OUT/gem/run.log; cat $OUT/gem/q/results.md 2>/dev/null | head -20
