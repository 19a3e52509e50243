# carry one part of a model: bash .gpu/carry.sh FILE (parts accumulate in /root/parts while warm)
mkdir -p /root/parts && cp .gguf-parts/$1 /root/parts/ && ls /root/parts | wc -l
