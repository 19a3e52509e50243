cd /tmp/cpu24
for r in 1 2; do
 for t in old new; do
  if [ $t = old ]; then D=/tmp/old-1a2; else D=/work/main; fi
  ( cd $D && PYTHONPATH=$D OMP_NUM_THREADS=2 python -m actqkv_llm bench speed --model smollm2 --device cpu --dtype fp32 --lengths 8K --no-baseline --no-reload --no-progress --out /tmp/cpu24/$t-$r > /tmp/cpu24/$t-$r.log 2>&1 )
  echo "$t $r done $(date +%T)"
 done
done
