# session 10, call C: per-step decode times by path, new tree then the tree before (PYTHONPATH copy)
export PYTHONUNBUFFERED=1 ACTQKV_CACHE_DIR=/root/cache
bash .gpu/setup.sh > $OUT/env.txt 2>&1
rm -rf /root/old && mkdir -p /root/old && cp -r actqkv_llm /root/old/ && cp -r .gpu/old/* /root/old/actqkv_llm/
echo "== new" | tee $OUT/probe12.txt
timeout 200 python .gpu/probe12.py 2>&1 | grep -v Warn | tee -a $OUT/probe12.txt
echo "== before (HEAD's static_decode/methods/budget)" | tee -a $OUT/probe12.txt
PYTHONPATH=/root/old timeout 200 python .gpu/probe12.py 2>&1 | grep -v Warn | tee -a $OUT/probe12.txt
