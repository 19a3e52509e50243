# carry one part: bash .gpu/carry.sh PART  (parts accumulate in /root/parts while the machine is warm)
mkdir -p /root/parts && cp .gguf-parts/q50/qwen.part.$1 /root/parts/ && ls /root/parts | wc -l
