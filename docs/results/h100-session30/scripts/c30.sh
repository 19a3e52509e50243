# session 30, call C: bisect the fp32 rows-together Triton failure
export PYTHONUNBUFFERED=1
T=$PWD/tests
run() { tag=$1; dir=$2; shift 2; (cd $dir && env TAG=$tag TESTS=$T PYTHONPATH=$dir "$@" timeout 60 python $T/../.gpu/rows30.py 2>&1 | grep -v "warn" | tee $OUT/$tag.txt | grep "###"); }
run head $PWD
run head-eager $PWD EAGER=1
run head-nocompile $PWD COMPILE=0
run t2e24 $PWD/.gpu/t2e24
run t3eaa $PWD/.gpu/t3eaa
run head-pad1 $PWD PAD=1
run old05e2 $PWD/.gpu/old29
