# session 27, call A: the new combine compiled (tile tests, the GPU decode tests); where a decode step's time goes (p27.py), this tree and the one before it (c1f4363, .gpu/old27) at 32K, this tree at 128K; bench speed 32K,128K (no HF, no reload) and 128K offload (the answering peak split)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_tile_stats.py tests/test_gpu.py -k "tile or compiled or decode_graph or rows or padded or quality" 2>&1 | tail -15 | tee $OUT/tests.txt
LENGTHS=32768,131072 PYTHONPATH=$PWD timeout 150 python .gpu/p27.py 2>&1 | grep -v "^  warn\|_warn_once\|USDT" | tee $OUT/p27-new.txt
P=$PWD/.gpu/old27; (cd $P && ONLY_GRAPH=1 LENGTHS=32768 PYTHONPATH=$P timeout 75 python $OLDPWD/.gpu/p27.py 2>&1 | grep -v "^  warn\|_warn_once\|USDT" | tee $OUT/p27-old.txt)
PYTHONPATH=$PWD timeout 120 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-baseline --no-reload --out $OUT/speed 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed.log
PYTHONPATH=$PWD timeout 80 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 128K --no-baseline --no-reload -o offload=true --out $OUT/speed-offload 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-offload.log
