# session 10, call D: GPU tests with evictions and new scorings inside the static step (eager), the
# per-step probe (new tree, then the tree before), then the 8B shape speed with answer_many of 8
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
rm -rf /root/old && mkdir -p /root/old && cp -r actqkv_llm /root/old/ && cp -r .gpu/old/* /root/old/actqkv_llm/
mkdir -p /root/out/d
timeout 150 python -m pytest -o addopts="" -q -p no:cacheprovider tests/test_gpu.py tests/test_tile_stats.py tests/test_static_decode.py -m "not slow" 2>&1 | tail -15 | tee $OUT/gpu-tests.txt
echo "== new" | tee $OUT/probe12.txt
timeout 100 python .gpu/probe12.py 2>&1 | grep -v Warn | tee -a $OUT/probe12.txt
timeout 300 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --many 8 --out /root/out/d/speed 2>&1 | grep -v Warn | tail -40 | tee $OUT/speed.log
tar czf $OUT/d.tgz -C /root/out d
