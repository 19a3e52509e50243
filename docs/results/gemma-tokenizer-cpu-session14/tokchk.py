import transformers, sys
from transformers import AutoTokenizer
out = []
for f, d in (("gemma-3-270m-q4_k_m.gguf", "/work/gem"),):
    t = AutoTokenizer.from_pretrained(d, gguf_file=f)
    ids = t("The pass key is 73360. Remember it.", add_special_tokens=False)["input_ids"]
    out.append(len(ids))
print(transformers.__version__, out)
