# session 26, call M's tail: decode at 32K again, this tree first and the twenty-fourth session's main (8479d5a) second (call B ran them the other way round): is the graph steps' 0.5 ms a difference or the order?
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
for t in new old; do
  P=$PWD; [ $t = old ] && P=$PWD/.gpu/old26
  (cd $P && PYTHONPATH=$P timeout 100 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-baseline --no-reload --decode-tokens 128 --out $OUT/decode2-$t 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/decode2-$t.log)
done
