# session 26, call B: answer_many (8 questions, 32K) on this tree; a profiled 128K prefill and the live set at the peak of answering at 128K with offload=true (pf26.py = the twenty-fifth session's pf25.py); decode at 32K, the twenty-fourth session's main (8479d5a, .gpu/old26) and this tree back to back on one machine
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE)"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 150 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-baseline --no-reload --many 8 --out $OUT/speed-many 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/speed-many.log
SHORT=1 PARTS=1,2 PROFILE=131072 PYTHONPATH=$PWD timeout 200 python .gpu/pf26.py 2>&1 | grep -v "Warn\|warn" | tee $OUT/pf26.txt
for t in old new; do
  P=$PWD; [ $t = old ] && P=$PWD/.gpu/old26
  (cd $P && PYTHONPATH=$P timeout 100 python -c "import actqkv_llm, sys; print(actqkv_llm.__file__)" && PYTHONPATH=$P timeout 100 python -m actqkv_llm bench speed --random-arch llama-3.1-8b --no-progress --lengths 32K --no-baseline --no-reload --decode-tokens 128 --out $OUT/decode-$t 2>&1 | grep -v "^  warn\|_warn_once" | tee $OUT/decode-$t.log)
done
