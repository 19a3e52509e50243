# lease 2: answer_many on the 8B shape at 32K; SmolLM2 GPU speed beside HF
python -m pip install --no-deps -q .whl/*.whl 2>&1 | tail -1
python -m pip install --no-deps --no-build-isolation -q -e . 2>&1 | tail -1
mkdir -p $OUT/f /root/smol
cat /root/parts/smol.part.* > /root/smol/SmolLM2-135M-Instruct.Q4_1.gguf
(cd /root/smol && sha256sum SmolLM2-135M-Instruct.Q4_1.gguf) | tee $OUT/f/smol-sha.txt
export ACTQKV_CACHE_DIR=/root/cache
timeout 260 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-baseline --no-reload --decode-tokens 32 --many 8 --out $OUT/f/many 2>&1 | tail -14 | tee $OUT/f/many.log
timeout 200 python -m actqkv_llm bench speed --model /root/smol --gguf-file SmolLM2-135M-Instruct.Q4_1.gguf --device cuda --dtype bf16 --no-progress --lengths 8K,32K --no-reload --many 8 --decode-tokens 32 --out $OUT/f/smol 2>&1 | tail -16 | tee $OUT/f/smol.log
cd $OUT && tar czf f.tgz f && rm -rf f
