# session 9, call S: 8B shape speed at HEAD (default rerank 16, question 8) with answer_many (8 questions); Qwen speed
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
timeout 420 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --many 8 --out /root/out/s/speed8b 2>&1 | grep -v Warn | tail -20 | tee $OUT/speed8b.log
timeout 150 python -m actqkv_llm bench speed --model /root/m --gguf-file qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --no-progress --lengths 30K --many 8 --out /root/out/s/qwen 2>&1 | grep -v Warn | tail -12 | tee $OUT/qwen.log
tar czf $OUT/s.tgz -C /root/out s
