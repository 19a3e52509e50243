# session 13, call F: this tree (segments for the steps that score again): bench speed on the 8B shape with HF SDPA beside it
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache PYTHONPATH=$PWD
bash .gpu/setup.sh > $OUT/env.txt 2>&1
git log --oneline | head -1 > $OUT/tree.txt; git status --short >> $OUT/tree.txt
mkdir -p /root/out/f
timeout 560 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --many 8 --out /root/out/f/speed 2>&1 | grep -v Warn | tail -40 | tee $OUT/speed.log
cp /root/out/f/speed/* $OUT/ 2>/dev/null; ls $OUT
