# Twentieth session, 2-core CPU, alone: Qwen needle in prose at 64K (2x the window) with main's preset, samples from 0
# until the session's deadline (killed by timeout; recall.jsonl holds the finished samples)
set -x
date
cd /work/main
git log -1 --format=%h
OMP_NUM_THREADS=2 timeout 3840 actqkv bench recall --model qwen2.5-coder-0.5b --device cpu --dtype fp32 --no-progress --no-meter \
  --max-new-tokens 24 --variants actqkv --lengths 64K --samples 16 --out /work/s20/q64
echo rc=$?
date
