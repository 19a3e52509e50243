# session 9, call G: Gemma 3 270M passkey 128K depth 0 (the GPU's miss), fast paths on and off, side by side
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
R=/root/out/g; mkdir -p $R
G="--model /root/gem --gguf-file gemma-3-270m-q4_k_m.gguf --device cuda --dtype fp32 --no-progress --tasks passkey --lengths 128K --depths 0 --samples 1 --methods actqkv"
run() { n=$1; shift; (timeout 200 python -m actqkv_llm bench quality $G "$@" --out $R/$n > $R/$n.log 2>&1) & }
run default
run nograph -o decode_graph=false
run noprefill -o batch_prefill=false
run neither -o decode_graph=false -o batch_prefill=false
run torchkernel -o decode_kernel=torch
wait
for n in default nograph noprefill neither torchkernel; do echo "== $n"; grep -h '"output"\|actqkv:' $R/$n.log | tail -2; python -c "
import json,sys
for l in open('$R/$n/results.jsonl'): d=json.loads(l); print(d['correct'], repr(d.get('output'))[:50])" 2>&1 | tail -1; done | tee $OUT/g.txt
