# session 6, call 4b: graph step Triton vs torch (probe), 128K TTFT from disk with format 4 + batched reads
bash .gpu/setup2.sh > $OUT/env.txt 2>&1
mkdir -p $OUT/s; export ACTQKV_CACHE_DIR=/root/cache
timeout 130 python .gpu/probe8.py 32768 2>&1 | grep -v Warn | tee $OUT/s/probe.txt | grep -E "^(auto|torch|same)"
timeout 190 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 128K --no-baseline --repeats 1 --out $OUT/s/r128 2>&1 | tail -12 | tee $OUT/s/r128.log
