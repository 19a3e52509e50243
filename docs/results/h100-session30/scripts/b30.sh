# session 30, call B: joined projections A/B at 32K; p28 at 32K (this tree); graph steps of 05e2557 (.gpu/old29)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
python -m pip install -q --no-deps .whl/*.whl 2>&1 | tail -2
PYTHONPATH=$PWD timeout 90 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-reload --no-baseline -o decode_joined_projections=true --out $OUT/speed-joined 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-joined.log | grep "^|"
LENGTHS=32768 PYTHONPATH=$PWD timeout 90 python .gpu/p28.py 2>&1 | grep -v "^  warn\|_warn_once\|USDT" > $OUT/p28-new.txt; grep "###" $OUT/p28-new.txt
P=$PWD/.gpu/old29; (cd $P && ONLY_GRAPH=1 LENGTHS=32768 PYTHONPATH=$P timeout 70 python $OLDPWD/.gpu/p28.py 2>&1 | grep -v "^  warn\|_warn_once\|USDT" > $OUT/p28-old.txt); grep "###" $OUT/p28-old.txt
