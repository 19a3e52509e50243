# session 11, call B: kernels of the static step with and without decode_compile; SmolLM2 passkey
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
timeout 200 python .gpu/probe13b.py 2>&1 | grep -v Warn | tee $OUT/probe13b.txt
bash .gpu/f10.sh
