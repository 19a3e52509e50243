# the CPU reference path: c1f4363 (this session's start, a worktree at /tmp/old27) and HEAD, alternating, alone on the 2-core CPU
for run in old-1 new-1 new-2 old-2; do
  T=/work/main; [ "${run%-*}" = old ] && T=/tmp/old27
  (cd $T && OMP_NUM_THREADS=2 PYTHONPATH=$T python -c "import actqkv_llm; print('$run', actqkv_llm.__file__)" && \
   OMP_NUM_THREADS=2 PYTHONPATH=$T python -m actqkv_llm bench speed --model smollm2 --device cpu --dtype fp32 \
     --lengths 8K --no-baseline --no-reload --no-progress --out /tmp/cpucmp27/$run > /tmp/cpucmp27/$run.log 2>&1)
done
echo done
for run in new-3 old-3 old-4 new-4; do
  T=/work/main; [ "${run%-*}" = old ] && T=/tmp/old27
  (cd $T && OMP_NUM_THREADS=2 PYTHONPATH=$T python -m actqkv_llm bench speed --model smollm2 --device cpu --dtype fp32 \
     --lengths 8K --no-baseline --no-reload --no-progress --out /tmp/cpucmp27/$run > /tmp/cpucmp27/$run.log 2>&1)
done
echo done
