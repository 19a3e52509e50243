# session 31, call F: tile_stats_kernel's tiles per program: the kernel alone, then the graph step (p31.py, ONLY_GRAPH) per setting
export PYTHONUNBUFFERED=1
{ bash .gpu/setup.sh; echo "tree $(cat .gpu/TREE) + tiles per program"; } > $OUT/env.txt 2>&1
PYTHONPATH=$PWD timeout 120 python .gpu/tpp.py 2>&1 | grep -v Warn | tee $OUT/tpp.txt
for T in 1 4 2 1 4; do
echo "== TILES_PER_PROGRAM=$T" | tee -a $OUT/steps.txt
ONLY_GRAPH=1 LENGTHS=32768 PYTHONPATH=$PWD timeout 100 python -c "
import actqkv_llm.attention.tile_stats as t; t.TILES_PER_PROGRAM=$T
import runpy; runpy.run_path('.gpu/p31.py', run_name='__main__')" 2>&1 | grep "###\|tile_stats_kernel\|kernel time" | tee -a $OUT/steps.txt
done
