# carry one part of any model: bash .gpu/carry2.sh DIR/FILE (parts accumulate in /root/parts while warm)
mkdir -p /root/parts && cp .gguf-parts/$1 /root/parts/ && ls /root/parts | wc -l
