set -x
while pgrep -f "ask16.sh" >/dev/null; do sleep 10; done
cd /work/main
date
git log -1 --format=%h
M="--model qwen2.5-coder-0.5b --device cpu --dtype fp32 --no-progress --variants actqkv"
OMP_NUM_THREADS=2 actqkv bench recall $M --lengths 16K --samples 16 --layout completion --max-new-tokens 24 --out /tmp/s19/comp16
echo rc=$?
date
OMP_NUM_THREADS=2 actqkv bench recall $M --lengths 30K --first-sample 0 --samples 9 --layout ask --max-new-tokens 40 --document-every 100000 --out /tmp/s19/ask30a
echo rc=$?
date
OMP_NUM_THREADS=2 actqkv bench recall $M --lengths 30K --first-sample 15 --samples 1 --layout ask --max-new-tokens 40 --document-every 100000 --out /tmp/s19/ask30b
echo rc=$?
date
