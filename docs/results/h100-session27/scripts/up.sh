# carry one part of the Qwen+SmolLM2 stream: bash .gpu/up.sh p.XX (parts accumulate in /root/parts while warm)
mkdir -p /root/parts && cp .gguf-parts/$1 /root/parts/ && ls /root/parts | tr '\n' ' '; du -sh /root/parts
