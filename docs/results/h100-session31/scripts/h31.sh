# session 31, call H: bench speed twice more on the final tree (static scoring on; no HF)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
for i in 3 4; do
PYTHONPATH=$PWD timeout 150 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K,128K --no-reload --no-baseline --out $OUT/speed-on$i 2>&1 | grep -v "^  warn\|_warn_once" > $OUT/speed-on$i.log
grep "^| 32K | actqkv | [0-9.]* | [0-9,]* |\|^| 128K | actqkv | [0-9.]* | [0-9,]* |\|scored" $OUT/speed-on$i.log
rm -f $OUT/speed-on$i/speed.png
done
