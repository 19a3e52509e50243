# The CPU reference path of two trees side by side, alone on the 2-core CPU: eight runs of bench speed
# (SmolLM2-135M fp32, 8K), alternating old/new in the order old new new old new old old new; the first
# four print which tree they imported. Usage: bash docs/results/side_by_side_cpu.sh OLD_TREE NEW_TREE OUT_DIR
old=$1; new=$2; out=$3
mkdir -p "$out"
i=0
for run in old-1 new-1 new-2 old-2 new-3 old-3 old-4 new-4; do
  T=$new; [ "${run%-*}" = old ] && T=$old
  i=$((i + 1))
  [ $i -le 4 ] && (cd "$T" && PYTHONPATH=$T python -c "import actqkv_llm; print('$run', actqkv_llm.__file__)")
  (cd "$T" && OMP_NUM_THREADS=2 PYTHONPATH=$T python -m actqkv_llm bench speed --model smollm2 --device cpu --dtype fp32 \
     --lengths 8K --no-baseline --no-reload --no-progress --out "$out/$run" > "$out/$run.log" 2>&1)
done
echo done
